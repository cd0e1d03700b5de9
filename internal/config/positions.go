package config

import (
	"strconv"
	"strings"
)

// Positions maps every key written in a TOML file to its line, by the key
// paths Problems use: "shutdown_timeout", "log.level", "route[0]" (the
// [[route]] header), "route[0].window", "amqp.consume[1].ack". It is a line
// scanner, not a TOML parser: it runs after the decoder accepted the file and
// only needs headers, "key =" lines, and to step over the inside of
// multi-line strings and arrays.
func Positions(src string) map[string]int {
	pos := map[string]int{}
	count := map[string]int{} // array table name → elements seen
	table := ""               // the current table as a key path prefix
	depth := 0                // open brackets of a multi-line value
	inString := ""            // the delimiter of an open multi-line string
	for n, line := range strings.Split(src, "\n") {
		ln := n + 1
		if inString != "" {
			if strings.Contains(line, inString) {
				inString = ""
			}
			continue
		}
		if depth > 0 {
			depth += brackets(line)
			continue
		}
		t := strings.TrimSpace(line)
		switch {
		case t == "" || t[0] == '#':
			continue
		case strings.HasPrefix(t, "[["):
			name := headerName(t[2:], "]]")
			table = name + "[" + strconv.Itoa(count[name]) + "]"
			count[name]++
			pos[table] = ln
			continue
		case t[0] == '[':
			table = headerName(t[1:], "]")
			pos[table] = ln
			continue
		}
		key, rest, ok := strings.Cut(t, "=")
		if !ok {
			continue
		}
		path := join(table, dottedKey(key))
		if _, seen := pos[path]; !seen {
			pos[path] = ln
		}
		rest = strings.TrimSpace(rest)
		for _, delim := range []string{`"""`, `'''`} {
			if strings.HasPrefix(rest, delim) && !strings.Contains(rest[3:], delim) {
				inString = delim
			}
		}
		if inString == "" {
			depth = brackets(rest)
		}
	}
	return pos
}

// Line finds the line of key in pos, or of the nearest written key above it
// (route[0].window not written: the [[route]] header), 0 if none.
func Line(pos map[string]int, key string) int {
	for key != "" {
		if l, ok := pos[key]; ok {
			return l
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			return 0
		}
		key = key[:i]
	}
	return 0
}

func headerName(s, end string) string {
	if i := strings.Index(s, end); i >= 0 {
		s = s[:i]
	}
	return dottedKey(s)
}

// dottedKey normalises `a . "b"` to a.b.
func dottedKey(k string) string {
	parts := strings.Split(strings.TrimSpace(k), ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}

// brackets is the balance of [ and { over ] and } outside strings and comments.
func brackets(s string) int {
	n := 0
	quote := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			return n
		case c == '[' || c == '{':
			n++
		case c == ']' || c == '}':
			n--
		}
	}
	return n
}
