package evi

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzNewBackend feeds socket strings to the parsers. None may panic, and a
// string that is accepted must redact to a string that hides its password
// and is itself accepted, unchanged by a second redaction: redacted strings
// are what logs, metrics and `sipside check` show.
func FuzzNewBackend(f *testing.F) {
	for _, s := range []string{
		"udp:127.0.0.1:9000", "unix:/run/sipside/ev.sock", "stdout:", "tcp:127.0.0.1:9101/m?reliable",
		"flatstore:/tmp/events.log", "xmlrpc:127.0.0.1:9301/RPC2:my_handler",
		"http://alice:s3cret@127.0.0.1:8080/events", "https://hooks.example.com/x?token=1",
		"rabbitmq:guest:guest@127.0.0.1:5672/sip?registrations",
		"rabbitmq:u:p%40ss@mq:5671/exchange=ev;tls_domain=d;persistent;heartbeat=3?ul.contact",
		"rabbitmq:127.0.0.1/key",
		"virtual:FAILOVER rabbitmq:a:b@h/k udp:127.0.0.1:1 flatstore:/tmp/x.log",
		"virtual:ROUND-ROBIN http://u:pw@h/ tcp:h:1", "virtual:PARALLEL", "bogus:x", "",
		// Redaction bugs the fuzzer found: the second member's password,
		// an '@' in the routing key, an empty userinfo, a path with '@'.
		"virtual:FAILOVER rabbitmq:a:pass1@h/k rabbitmq:c:pass2@h/k",
		"rabbitmq:u:secret@h:5672/k@x", "virtual:ROUND-ROBIN http://@0", "flatstore:/var/log/a:b@c.log",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := NewBackend(s, Deps{})
		if err != nil {
			return
		}
		b.Close()
		red := Redact(s)
		for _, pw := range socketPasswords(s) {
			// Only a password that is unmistakably the password: one
			// occurrence, and not a piece of the mask itself.
			if len(pw) < 2 || strings.Count(s, pw) != 1 || strings.Contains("xxxxx", pw) {
				continue
			}
			if strings.Contains(red, pw) {
				t.Fatalf("Redact(%q) = %q shows the password %q", s, red, pw)
			}
		}
		b2, err := NewBackend(red, Deps{})
		if err != nil {
			t.Fatalf("NewBackend(%q) accepted, its redaction %q refused: %v", s, red, err)
		}
		b2.Close()
		if again := Redact(red); again != red {
			t.Fatalf("Redact is not stable: %q -> %q -> %q", s, red, again)
		}
	})
}

// socketPasswords returns the passwords in s as written (escaped), for every
// scheme that has one, virtual members included.
func socketPasswords(s string) []string {
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, "virtual:"); ok {
		var pws []string
		for _, m := range strings.Fields(rest) {
			pws = append(pws, socketPasswords(m)...)
		}
		return pws
	}
	switch scheme, rest := schemeOf(s); scheme {
	case "rabbitmq":
		authority, _, _ := strings.Cut(rest, "/")
		userinfo, _, ok := strings.Cut(authority, "@")
		if !ok {
			return nil
		}
		if _, pw, ok := strings.Cut(userinfo, ":"); ok {
			return []string{pw}
		}
	case "http", "https":
		if u, err := url.Parse(s); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok {
				return []string{pw}
			}
		}
	}
	return nil
}
