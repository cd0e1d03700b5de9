package jsonstr

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzAppend(f *testing.F) {
	for _, s := range []string{"", "plain", "quote\" back\\slash", "\n\r\t\x00\x1f", "é ünïcode 😀", "\xff\xfe bad", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Append(nil, s)
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("Append(%q) = %s: not JSON: %v", s, out, err)
		}
		want := s
		if !utf8.ValidString(s) {
			want = strings.ToValidUTF8(s, "\uFFFD")
			// Each invalid byte becomes one U+FFFD; ToValidUTF8 merges runs.
			if utf8.RuneCountInString(back) < utf8.RuneCountInString(want) {
				t.Fatalf("Append(%q) round-trips to %q", s, back)
			}
			return
		}
		if back != want {
			t.Fatalf("Append(%q) round-trips to %q", s, back)
		}
	})
}
