package evi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

func init() {
	backendSchemes["http"] = newHTTPBackend
	backendSchemes["https"] = newHTTPBackend
}

// httpBackend POSTs each event to a URL. The body is the JSON-RPC
// notification OpenSIPS's event_datagram and event_stream send
// (see eventNotification), so that one parser serves every JSON backend:
//
//	{"jsonrpc":"2.0","method":"E_UL_AOR_INSERT","params":{"domain":"location","aor":"alice"}}
//
// A delivery succeeds on a 2xx answer. Redirects are not followed (a POST
// that moved is a configuration error to fix, not to guess around), and no
// proxy from the environment is used: events go where the socket says.
// Connections are kept alive between events; ctx bounds each request.
type httpBackend struct {
	url    string // as given, with any password
	shown  string // redacted, for errors
	client *http.Client
}

func newHTTPBackend(rest string, _ Deps) (Backend, error) {
	// rest is the whole URL: schemeOf keeps http(s) in it.
	u, err := url.Parse(rest)
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("http: scheme %q: want http:// or https://", u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, errors.New("http: no host: write http://HOST[:PORT]/PATH")
	}
	if p := u.Port(); p != "" {
		if err := checkHostPort(net.JoinHostPort(u.Hostname(), p)); err != nil {
			return nil, fmt.Errorf("http: %w", err)
		}
	}
	if u.Fragment != "" {
		return nil, errors.New("http: a #fragment means nothing to a server: remove it")
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          16,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &httpBackend{
		url:   rest,
		shown: u.Redacted(),
		client: &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

func (b *httpBackend) String() string { return b.shown }

func (b *httpBackend) Deliver(ctx context.Context, ev *Event) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.url, bytes.NewReader(eventNotification(ev)))
	if err != nil {
		return fmt.Errorf("%s: %w", b.shown, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "sipside")
	resp, err := b.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text repeats the URL, password and all
		}
		return fmt.Errorf("POST %s: %w", b.shown, err)
	}
	// Read a little of the answer: enough to say why it failed, and to let
	// the connection be reused for the next event when the answer is small.
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("POST %s: server answered %s: %q", b.shown, resp.Status, bytes.TrimSpace(snippet))
	}
	return nil
}

func (b *httpBackend) Close() error {
	b.client.CloseIdleConnections()
	return nil
}
