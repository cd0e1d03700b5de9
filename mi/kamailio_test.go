package mi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

var shared struct {
	once sync.Once
	k    *testenv.Kamailio
	err  error
}

// sharedKamailio starts one real Kamailio for all tests of the package; testenv.Main
// stops it when they end.
func sharedKamailio(t testing.TB) *testenv.Kamailio {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shared.k, shared.err = testenv.StartKamailio(ctx, testenv.KamailioConfig{Name: "mi"})
	})
	if errors.Is(shared.err, testenv.ErrNotInstalled) {
		testenv.Missing(t, "kamailio ("+shared.err.Error()+")", "apt-get install -y kamailio kamailio-json-modules")
	}
	if shared.err != nil {
		t.Fatalf("testenv: %v", shared.err)
	}
	return shared.k
}

// kamailioVersion is core.version as testenv's own client gets it from k: what sipside must
// return whatever Kamailio release runs (KAMAILIO_BIN).
func kamailioVersion(t *testing.T, k *testenv.Kamailio) string {
	t.Helper()
	v, err := k.Version(context.Background())
	if err != nil {
		t.Fatalf("testenv core.version: %v", err)
	}
	if !strings.HasPrefix(v, `"kamailio `) {
		t.Fatalf("testenv core.version = %s, want a string \"kamailio …\"", v)
	}
	return v
}

func kamailioTargets(k *testenv.Kamailio) map[string]string {
	return map[string]string{"udp": k.MITargetUDP(), "http": k.MITargetHTTP(), "fifo": k.MITargetFIFO()}
}

func TestKamailio(t *testing.T) {
	k := sharedKamailio(t)
	version := kamailioVersion(t, k)
	for _, tr := range []string{"udp", "http", "fifo"} {
		t.Run(tr, func(t *testing.T) {
			c := newClient(t, kamailioTargets(k)[tr], Options{})
			key := "k-" + tr
			for _, tc := range []miCase{
				{name: "no params", method: "core.version", want: version},
				{name: "positional", method: "core.echo", params: []any{"a b", 7}, want: `["a b","7"]`},
				{name: "set", method: "htable.sets", params: []string{"t", key, "v, w: x"}, want: `"Ok. Key set to new value."`},
				{name: "named, values taken in order", method: "htable.get", params: Named{{"htable", "t"}, {"key", key}}, want: `{"item":{"name":"` + key + `","value":"v, w: x","flags":2,"expire":"NEVER"}}`},
				{name: "one-key map", method: "htable.dump", params: map[string]string{"htable": "t"}, want: `[...`},
				{name: "unknown method", method: "no.such_method", errCode: 500, errText: "no.such_method: 500 Method Not Found"},
				{name: "wrong params", method: "htable.sets", params: []string{"t"}, errCode: 500, errText: "Not enough parameters (htable name, key name and value)"},
				{name: "command error", method: "htable.get", params: []string{"t", "nosuchkey"}, errCode: 500, errText: "Key name doesn't exist in htable."},
			} {
				checkCall(t, c, tc)
			}
		})
	}
}

// TestKamailioBigReply fills the htable until htable.dump is over 64 KB: jsonrpcs
// cannot send that in one UDP datagram and sends nothing, so the UDP call ends in a
// timeout that says why; HTTP and FIFO carry it whole.
func TestKamailioBigReply(t *testing.T) {
	k := sharedKamailio(t)
	ctx := context.Background()
	c := newClient(t, k.MITargetHTTP(), Options{})
	value := strings.Repeat("v", 200)
	const n = 400
	for i := range n {
		if _, err := c.Call(ctx, "htable.sets", []string{"t", fmt.Sprintf("big-%04d", i), value}); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for i := range n {
			_, _ = c.Call(ctx, "htable.delete", []string{"t", fmt.Sprintf("big-%04d", i)})
		}
	}()
	for _, tr := range []string{"http", "fifo"} {
		cc := newClient(t, kamailioTargets(k)[tr], Options{})
		r, err := cc.Call(ctx, "htable.dump", []string{"t"})
		if err != nil {
			t.Fatalf("%s: %v", tr, err)
		}
		if len(r.Raw()) < 65507 || !strings.Contains(r.String(), `"big-0399"`) {
			t.Fatalf("%s: dump of %d bytes, want all of it (over 65507)", tr, len(r.Raw()))
		}
	}
	udp := newClient(t, k.MITargetUDP(), Options{Timeout: time.Second})
	_, err := udp.Call(ctx, "htable.dump", []string{"t"})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "nor replies over 65507 bytes") {
		t.Fatalf("udp: %v", err)
	}
	// the socket is still good
	if _, err := udp.Call(ctx, "core.version", nil); err != nil {
		t.Fatalf("udp after the lost reply: %v", err)
	}
}

// TestKamailioFIFOLongRequest pins maxFIFOLineKamailio to the real jsonrpcs:
// a raw request line of exactly that many bytes, after the newline of an
// earlier one, is answered (one byte more was not, and garbled the FIFO for
// the requests after it, so that is not tried on the shared node); the client
// refuses a longer one at once, and the FIFO keeps working.
func TestKamailioFIFOLongRequest(t *testing.T) {
	k := sharedKamailio(t)
	c := newClient(t, k.MITargetFIFO(), Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, "core.version", nil); err != nil {
		t.Fatal(err)
	}

	reply := filepath.Join(k.Dir, "sipside_limit_probe")
	if err := syscall.Mkfifo(reply, 0o666); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(reply)
	rf, err := os.OpenFile(reply, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	pre, post := `{"jsonrpc":"2.0","method":"core.echo","params":["`, `"],"id":1,"reply_name":"sipside_limit_probe"}`+"\n"
	line := pre + strings.Repeat("x", maxFIFOLineKamailio-len(pre)-len(post)) + post
	w, err := os.OpenFile(k.FIFO, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.WriteString(line)
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	_ = rf.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := rf.Read(make([]byte, 16384)); err != nil || n == 0 {
		t.Fatalf("a %d-byte request line got no reply: %v", len(line), err)
	}

	start := time.Now()
	_, err = c.Call(ctx, "core.echo", []string{strings.Repeat("x", maxFIFOLineKamailio)})
	if err == nil || !strings.Contains(err.Error(), "Kamailio jsonrpcs FIFO request takes") || time.Since(start) > time.Second {
		t.Fatalf("a request over the limit: %v after %v", err, time.Since(start))
	}
	if _, err := c.Call(ctx, "core.version", nil); err != nil {
		t.Fatalf("after the refused request: %v", err)
	}
}

// TestKamailioConcurrentDatagrams has 64 callers share one UDP socket.
func TestKamailioConcurrentDatagrams(t *testing.T) {
	k := sharedKamailio(t)
	c := newClient(t, k.MITargetUDP(), Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				want := fmt.Sprintf(`["g%d-%d"]`, g, i)
				r, err := c.Call(context.Background(), "core.echo", []string{fmt.Sprintf("g%d-%d", g, i)})
				if err != nil {
					errs <- err
					return
				}
				if r.String() != want {
					errs <- fmt.Errorf("got %s, want %s", r, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestKamailioUnixDatagram: jsonrpcs on a unix datagram socket answers to the path
// the client bound.
func TestKamailioUnixDatagram(t *testing.T) {
	const udp = `"dgram_socket", "udp:{{.Addr}}:{{.RPCUDPPort}}"`
	if !strings.Contains(testenv.DefaultKamailioTemplate, udp) {
		t.Fatalf("testenv's template no longer has %s", udp)
	}
	tmpl := strings.Replace(testenv.DefaultKamailioTemplate, udp, `"dgram_socket", "{{.Dir}}/jsonrpc.sock"`, 1)
	k := testenv.NewKamailio(t, testenv.KamailioConfig{Name: "miunix", Template: tmpl})
	c := newClient(t, "kamailio:unix:"+k.Dir+"/jsonrpc.sock", Options{SocketDir: t.TempDir()})
	version := kamailioVersion(t, k)
	for _, tc := range []miCase{
		{name: "no params", method: "core.version", want: version},
		{name: "positional", method: "core.echo", params: []string{"x"}, want: `["x"]`},
		{name: "command error", method: "htable.get", params: []string{"t", "nosuchkey"}, errCode: 500, errText: "Key name doesn't exist in htable."},
	} {
		checkCall(t, c, tc)
	}
}
