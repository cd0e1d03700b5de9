package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// lockedBuffer collects a subcommand's stdout and stderr together.
type lockedBuffer = testenv.Buffer

func testEnv() (*env, *lockedBuffer) {
	out := &lockedBuffer{}
	return &env{stdin: strings.NewReader(""), stdout: out, stderr: out, getenv: func(string) string { return "" }}, out
}

func TestMain(m *testing.M) { testenv.Main(m) }

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// sipsideBinary builds the command once per test binary, for tests that
// run it as a process the way an operator does.
func sipsideBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sipside-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "sipside")
		out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// sendSIPMessageTo sends one SIP MESSAGE over UDP and waits for a 2xx.
func sendSIPMessageTo(t *testing.T, to, from, body string) {
	t.Helper()
	c, err := net.Dial("udp", to)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := time.Now().UnixNano()
	msg := fmt.Sprintf("MESSAGE sip:sipside@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%d\r\nMax-Forwards: 70\r\nFrom: <sip:%s@127.0.0.1>;tag=%d\r\nTo: <sip:sipside@%s>\r\nCall-ID: %d@127.0.0.1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
		to, c.LocalAddr(), n, from, n, to, n, len(body), body)
	c.Write([]byte(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	k, err := c.Read(buf)
	if err != nil || !strings.Contains(string(buf[:k]), "SIP/2.0 2") {
		t.Fatalf("MESSAGE reply: %q %v", buf[:k], err)
	}
}

// kamailioDMQNode starts a real Kamailio DMQ node from dmq's test template
// (htable with dmqreplicate, dmq_usrloc, dialog; short timers), alone on its
// bus; it is stopped when the test ends.
func kamailioDMQNode(t *testing.T, name, addr string) *testenv.Kamailio {
	t.Helper()
	tmpl, err := os.ReadFile("../../dmq/testdata/kamailio-dmq.cfg.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	return testenv.NewKamailio(t, testenv.KamailioConfig{Name: name, Addr: addr, Template: string(tmpl),
		Vars: map[string]any{"Notify": "", "Ping": 5, "FrTimer": 4000, "UAS": "", "Transport": ""}})
}
