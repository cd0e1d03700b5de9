package testenv_test

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/sipside/sipside/testenv"
)

// recordTB records what Missing decides instead of stopping the test.
type recordTB struct {
	testing.TB
	fatal, skip string
}

func (r *recordTB) Helper()                           {}
func (r *recordTB) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }
func (r *recordTB) Skip(args ...any)                  { r.skip = fmt.Sprint(args...) }

func TestMissing(t *testing.T) {
	for _, ci := range []string{"true", "", "false"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv("CI", ci)
			rec := &recordTB{TB: t}
			testenv.Missing(rec, "frobd", "apt-get install -y frobd")
			got := rec.skip
			if ci == "true" {
				got = rec.fatal
				if rec.skip != "" {
					t.Errorf("CI=true skipped: %s", rec.skip)
				}
			} else if rec.fatal != "" {
				t.Errorf("CI=%q failed: %s", ci, rec.fatal)
			}
			if !strings.Contains(got, "frobd") || !strings.Contains(got, "apt-get install -y frobd") {
				t.Errorf("message %q lacks the part or the install command", got)
			}
		})
	}
}

func TestFreePort(t *testing.T) {
	for _, network := range []string{"tcp", "udp"} {
		for _, host := range []string{"127.0.0.1", "127.0.0.2"} {
			p := testenv.FreePort(t, network, host)
			addr := net.JoinHostPort(host, strconv.Itoa(p))
			var err error
			if network == "tcp" {
				var l net.Listener
				if l, err = net.Listen(network, addr); err == nil {
					l.Close()
				}
			} else {
				var c net.PacketConn
				if c, err = net.ListenPacket(network, addr); err == nil {
					c.Close()
				}
			}
			if err != nil {
				t.Errorf("FreePort(%s, %s) = %d, but binding it fails: %v", network, host, p, err)
			}
		}
	}
}
