package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/rabbit"
	"github.com/sipside/sipside/kazoo"
)

const amqpUsage = `Usage: sipside amqp publish|query|consume [FLAGS]

One-shot AMQP tools on the code of the kazoo bridge:
  publish   publish --payload and wait for the broker's confirm
  query     publish --payload with a correlation id and print the reply
            (RabbitMQ direct reply-to; with --kazoo, Kazoo's Msg-ID/Server-ID and
            the targeted exchange)
  consume   bind a temporary queue to --exchange with --routing-key and print one
            JSON line per message: {"exchange","routing_key","content_type",
            "correlation_id","reply_to","body"} (body as JSON when it is JSON)

Broker (first found): --broker, $SIPSIDE_AMQP, amqp://guest:guest@127.0.0.1:5672/.

Exit status: 0 success, 1 the operation failed (unroutable, nacked, no reply in
time, the exchange does not exist, fewer than --count messages), 2 bad usage or
the broker could not be reached (reported as soon as it refuses).

Flags:
`

const amqpExample = `
Examples:
  sipside amqp publish --exchange callmgr --routing-key route.req.x --payload '{"user":"alice"}'
  sipside amqp query --exchange callmgr --routing-key route.req.lookup --payload '{"user":"alice"}' --timeout 2s
  sipside amqp consume --exchange callmgr --routing-key 'route.#' --count 10
  echo '{"Event-Category":"sipcmd"}' | sipside amqp query --kazoo --exchange kamailio --routing-key q --payload -
`

const defaultBroker = "amqp://guest:guest@127.0.0.1:5672/"

type amqpFlags struct {
	broker, exchange, key, payload, contentType string
	timeout                                     time.Duration
	kazoo, persistent                           bool
	count                                       int
}

func cmdAMQP(ctx context.Context, e *env, args []string) int {
	fs, f := amqpFlagSet()
	help := func(w io.Writer) {
		fmt.Fprint(w, amqpUsage)
		printFlags(w, fs)
		fmt.Fprint(w, amqpExample)
	}
	pos, code, ok := parseArgs(e, fs, help, args, 0, 1)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return usageError(e, fs.Name(), help, "no action given: want publish, query or consume")
	}
	verb := pos[0]
	switch verb {
	case "publish", "query", "consume":
	default:
		return usageError(e, fs.Name(), help, "unknown action %q: want publish, query or consume", verb)
	}
	if f.broker == "" {
		f.broker = e.getenv("SIPSIDE_AMQP")
	}
	if f.broker == "" {
		f.broker = defaultBroker
	}
	if f.key == "" && verb != "consume" {
		return usageError(e, fs.Name(), help, "%s: --routing-key is required", verb)
	}
	if verb == "consume" {
		if f.exchange == "" {
			return usageError(e, fs.Name(), help, "consume: --exchange is required (the exchange to bind a temporary queue to)")
		}
		return amqpConsume(ctx, e, f)
	}
	body, err := amqpPayload(e, f.payload)
	if err != nil {
		return usageError(e, fs.Name(), help, "%s: %v", verb, err)
	}
	return amqpSend(ctx, e, verb, f, body)
}

func amqpFlagSet() (*flag.FlagSet, *amqpFlags) {
	f := &amqpFlags{}
	fs := newFlagSet("amqp")
	fs.StringVar(&f.broker, "broker", "", "broker `URL`, amqp://user:pw@host:port/vhost or amqps://… (default $SIPSIDE_AMQP or "+defaultBroker+")")
	fs.StringVar(&f.exchange, "exchange", "", "`EXCHANGE` to publish to or bind to (\"\" is the default exchange)")
	fs.StringVar(&f.key, "routing-key", "", "routing `KEY` (consume: binding pattern, default #)")
	fs.StringVar(&f.payload, "payload", "", "message body: `JSON` or any text; - reads stdin")
	fs.StringVar(&f.contentType, "content-type", "application/json", "content `TYPE` of the message")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "publish/query: give up after `DURATION`; consume: stop after it (0 = until interrupted)")
	fs.BoolVar(&f.kazoo, "kazoo", false, "add Kazoo's Msg-ID, Server-ID, Node, App-Name, App-Version; query replies come on the targeted exchange")
	fs.BoolVar(&f.persistent, "persistent", false, "publish with delivery_mode 2 (survives a broker restart in a durable queue)")
	fs.IntVar(&f.count, "count", 0, "consume: stop after `N` messages (0 = no limit)")
	return fs, f
}

func amqpPayload(e *env, p string) ([]byte, error) {
	if p == "-" {
		b, err := io.ReadAll(e.stdin)
		if err != nil {
			return nil, fmt.Errorf("read payload from stdin: %w", err)
		}
		return bytes.TrimRight(b, "\r\n"), nil
	}
	if p == "" {
		return nil, errors.New("--payload is required (JSON text, or - to read stdin)")
	}
	return []byte(p), nil
}

// cliLogger keeps the bridge's retry chatter off the terminal; failures are reported
// once, with the broker's last error, when the command gives up.
func cliLogger(e *env) *slog.Logger {
	if e.getenv("SIPSIDE_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func unreachable(broker string, d time.Duration, last error) string {
	const check = "is RabbitMQ running there, and are the credentials and vhost right?"
	if last != nil {
		return fmt.Sprintf("cannot reach %v: %s", last, check) // last names the broker
	}
	return fmt.Sprintf("no answer from %s within %v: %s", rabbit.Redact(broker), d, check)
}

func amqpSend(ctx context.Context, e *env, verb string, f *amqpFlags, body []byte) int {
	cfg := kazoo.Config{}
	cfg.AMQP.Brokers = []string{f.broker}
	cfg.AMQP.Kazoo = f.kazoo
	cfg.AMQP.PublishTimeout = config.Duration(f.timeout)
	cfg.AMQP.QueryTimeout = config.Duration(f.timeout)
	b, err := kazoo.New(cfg, kazoo.Options{Logger: cliLogger(e), Version: version()})
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside amqp %s: %v\n", verb, err)
		return exitUsage
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() { cancel(); <-done }()

	deadline, dcancel := context.WithTimeout(ctx, f.timeout)
	defer dcancel()
	// The first round over the broker list, not the first connection: a
	// refused connection is reported at once instead of after --timeout.
	if err := b.FirstReady(deadline); err != nil {
		fmt.Fprintf(e.stderr, "sipside amqp %s: %s\n", verb, unreachable(f.broker, f.timeout, b.LastError()))
		return exitUsage
	}
	req := kazoo.PublishRequest{Exchange: f.exchange, RoutingKey: f.key, Body: body, ContentType: f.contentType, Persistent: f.persistent}
	if verb == "publish" {
		id, err := b.Publish(ctx, req)
		if err != nil {
			fmt.Fprintf(e.stderr, "sipside amqp publish: %v\n", err)
			return exitFailure
		}
		if id != "" {
			fmt.Fprintf(e.stdout, "confirmed, Msg-ID %s\n", id)
		} else {
			fmt.Fprintln(e.stdout, "confirmed")
		}
		return exitOK
	}
	reply, err := b.Query(ctx, kazoo.QueryRequest{PublishRequest: req, Timeout: f.timeout})
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside amqp query: %v\n", err)
		return exitFailure
	}
	e.stdout.Write(append(reply, '\n'))
	return exitOK
}

func amqpConsume(ctx context.Context, e *env, f *amqpFlags) int {
	if f.key == "" {
		f.key = "#"
	}
	m, err := rabbit.New(rabbit.Config{URLs: []string{f.broker}, Name: "sipside amqp consume", Logger: cliLogger(e)})
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside amqp consume: %v\n", err)
		return exitUsage
	}
	if f.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs := make(chan rabbit.TapMessage, 64)
	setupErr := make(chan error, 1)
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// A broker that refuses is reported at once, not after --timeout.
	if _, err := m.FirstSession(ctx); err != nil {
		fmt.Fprintf(e.stderr, "sipside amqp consume: %s\n", unreachable(f.broker, f.timeout, m.LastError()))
		return exitUsage
	}
	// A refusal ends the command instead of being retried.
	m.Tap(ctx, f.exchange, strings.Split(f.key, ","), msgs, func(up bool, err error) {
		if err != nil {
			select {
			case setupErr <- err:
			default:
			}
			cancel()
		}
	})
	n := 0
	for {
		select {
		case d := <-msgs:
			line, _ := json.Marshal(struct {
				Exchange      string          `json:"exchange"`
				RoutingKey    string          `json:"routing_key"`
				ContentType   string          `json:"content_type,omitempty"`
				CorrelationID string          `json:"correlation_id,omitempty"`
				ReplyTo       string          `json:"reply_to,omitempty"`
				Body          json.RawMessage `json:"body"`
			}{d.Exchange, d.RoutingKey, d.ContentType, d.CorrelationID, d.ReplyTo, bodyJSON(d.Body)})
			e.stdout.Write(append(line, '\n'))
			n++
			if f.count > 0 && n >= f.count {
				return exitOK
			}
		case err := <-setupErr:
			fmt.Fprintf(e.stderr, "sipside amqp consume: %v\n", err)
			return exitFailure
		case <-ctx.Done():
			select {
			case err := <-setupErr:
				fmt.Fprintf(e.stderr, "sipside amqp consume: %v\n", err)
				return exitFailure
			default:
			}
			if m.Current() == nil && n == 0 {
				fmt.Fprintf(e.stderr, "sipside amqp consume: %s\n", unreachable(f.broker, f.timeout, m.LastError()))
				return exitUsage
			}
			if f.count > 0 && n < f.count {
				fmt.Fprintf(e.stderr, "sipside amqp consume: stopped after %d of %d messages\n", n, f.count)
				return exitFailure
			}
			return exitOK
		}
	}
}

// bodyJSON is the body itself when it is JSON, else the body as a JSON string.
func bodyJSON(b []byte) json.RawMessage {
	if json.Valid(b) {
		var buf bytes.Buffer
		if json.Compact(&buf, b) == nil {
			return buf.Bytes()
		}
	}
	s, _ := json.Marshal(string(b))
	return s
}
