package evi

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHTTPSocket(t *testing.T) {
	for _, tc := range []struct{ socket, err string }{
		{"http://127.0.0.1:8080/events", ""},
		{"https://hooks.example.com/sip?token=x", ""},
		{"http://user:secret@127.0.0.1/", ""},
		{"http:///path", "no host"},
		{"http://127.0.0.1:0/", "port"},
		{"http://127.0.0.1/#frag", "fragment"},
		{"http://[::1/", "http"},
	} {
		_, err := NewBackend(tc.socket, Deps{})
		if tc.err == "" && err != nil {
			t.Errorf("NewBackend(%q): %v", tc.socket, err)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("NewBackend(%q) = %v, want an error saying %q", tc.socket, err, tc.err)
		}
	}
}

func TestHTTPPostsTheNotification(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	remotes := map[string]bool{}
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s with Content-Type %q, want a POST of application/json", r.Method, r.Header.Get("Content-Type"))
		}
		if u, p, _ := r.BasicAuth(); u != "alice" || p != "s3cret" {
			t.Errorf("basic auth %q %q, want the URL's", u, p)
		}
		bodies = append(bodies, string(body))
		remotes[r.RemoteAddr] = true
		w.WriteHeader(status)
		io.WriteString(w, "  refused by policy\n")
	}))
	defer srv.Close()
	socket := strings.Replace(srv.URL, "http://", "http://alice:s3cret@", 1) + "/events"
	b, err := NewBackend(socket, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 3 {
		if err := b.Deliver(ctx, tickEvent); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	want := `{"jsonrpc":"2.0","method":"E_LAB_TICK","params":{"note":"tick","seq":37}}`
	for _, got := range bodies {
		if got != want {
			t.Errorf("body %s, want %s", got, want)
		}
	}
	if len(remotes) != 1 {
		t.Errorf("%d connections for 3 events, want 1 kept alive", len(remotes))
	}
	status = http.StatusForbidden
	mu.Unlock()
	err = b.Deliver(ctx, tickEvent)
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "refused by policy") {
		t.Fatalf("Deliver = %v, want the 403 and the server's words", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error leaks the password: %v", err)
	}
}

// Redirects are answers, not instructions to follow.
func TestHTTPRedirectFails(t *testing.T) {
	srv := httptest.NewServer(http.RedirectHandler("/elsewhere", http.StatusTemporaryRedirect))
	defer srv.Close()
	b, err := NewBackend(srv.URL, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Deliver(context.Background(), tickEvent); err == nil || !strings.Contains(err.Error(), "307") {
		t.Fatalf("Deliver = %v, want the 307 as a failure", err)
	}
}

func TestHTTPDownAndSlow(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	b, err := NewBackend("http://user:pw@"+addr+"/", Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := b.Deliver(ctx, tickEvent); err == nil || strings.Contains(err.Error(), ":pw@") {
		t.Fatalf("Deliver to nothing = %v, want a failure without the password", err)
	}

	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)
	b2, err := NewBackend(srv.URL, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	start := time.Now()
	if err := b2.Deliver(ctx2, tickEvent); err == nil {
		t.Fatal("Deliver to a server that never answers succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Deliver took %v with a 200ms deadline", d)
	}
}
