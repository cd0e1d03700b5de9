package dmq

import (
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

// dmq_usrloc's contact update as Kamailio 5.6.3 sends it (testdata/wire/dmq02-0006.sip)
// and as 5.8 and 6.0 send it: the same members plus "xavps", the contact's attributes
// (an empty object when it has none; recorded from 6.0.7). Both give the same contact,
// and the event's "body" carries the message as it came.
func TestUsrlocBodyAcrossReleases(t *testing.T) {
	const v56 = `{"action":1,"aor":"alice","ruid":"uloc-6b04ff6b-1d5f-1","c":"sip:alice@127.0.0.1:5091","received":"","path":"","callid":"reg-0273d523@127.0.0.1","user_agent":"research-reg/1","instance":"","expires":4102444800,"cseq":1,"flags":0,"cflags":0,"q":-1,"last_modified":1795489714,"methods":4294967295,"reg_id":0,"server_id":0}`
	for _, tc := range []struct{ name, body string }{
		{"5.6 and 5.7", v56},
		{"5.8 and 6.0, no attributes", strings.TrimSuffix(v56, "}") + `,"xavps":{}}`},
		{"5.8 and 6.0, attributes", strings.TrimSuffix(v56, "}") + `,"xavps":{"ulattrs":{"tenant":"a","n":1}}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var events []string
			n, err := New(Config{Listen: "sip:127.0.1.1:5090", Seeds: []string{"sip:127.0.0.2:5060"}, Peers: []string{ChannelUsrloc}},
				Options{Metrics: metrics.New(), OnChange: func(name string, params []byte) { events = append(events, name+" "+string(params)) }})
			if err != nil {
				t.Fatal(err)
			}
			from, _ := ParseNodeAddr("sip:127.0.0.2:5060")
			if code := n.Usrloc().Handle(&Request{Channel: ChannelUsrloc, From: from, Known: true, Body: []byte(tc.body)}); code != 200 {
				t.Fatalf("Handle = %d, want 200", code)
			}
			cs := n.Usrloc().Lookup("alice")
			want := Contact{AoR: "alice", RUID: "uloc-6b04ff6b-1d5f-1", Contact: "sip:alice@127.0.0.1:5091", CallID: "reg-0273d523@127.0.0.1",
				UserAgent: "research-reg/1", Expires: time.Unix(4102444800, 0), CSeq: 1, Q: -1, LastModified: time.Unix(1795489714, 0), Methods: 4294967295}
			if len(cs) != 1 || cs[0] != want {
				t.Fatalf("contacts %+v, want %+v", cs, want)
			}
			if len(events) != 1 || !strings.Contains(events[0], `"body":`+tc.body) {
				t.Errorf("events %q, want one E_DMQ_USRLOC carrying the body as sent", events)
			}
		})
	}
}
