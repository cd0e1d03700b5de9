package testenv

import (
	"fmt"
	"strconv"
	"strings"
)

// PyBytes decodes a Python bytes repr such as b'{"a":"\\n"}\n', the form in
// which the recordings of a real OpenSIPS and Kamailio keep exact wire bytes.
func PyBytes(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) < 3 || (!strings.HasPrefix(s, "b'") && !strings.HasPrefix(s, `b"`)) {
		return nil, fmt.Errorf("not a Python bytes repr: %.40q", s)
	}
	s = s[2 : len(s)-1]
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b = append(b, s[i])
			continue
		}
		i++
		if i == len(s) {
			return nil, fmt.Errorf("bytes repr ends in a backslash: %.40q", s)
		}
		switch s[i] {
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'x':
			if i+3 > len(s) {
				return nil, fmt.Errorf("short \\x escape in %.40q", s)
			}
			n, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				return nil, fmt.Errorf("bad \\x escape in %.40q", s)
			}
			b = append(b, byte(n))
			i += 2
		default:
			b = append(b, s[i])
		}
	}
	return b, nil
}
