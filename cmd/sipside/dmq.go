package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/internal/config"
)

const dmqUsage = `Usage: sipside dmq COMMAND --listen sip:IP:PORT --seed sip:IP:PORT [FLAGS] [ARGS]

Joins a Kamailio DMQ bus as a node of its own. Every command is one-shot: it
joins, waits until the nodes it learned have answered and their sync answers
have arrived, acts, announces itself disabled and leaves. (The Kamailio nodes
keep the departed node as "disabled" until two pings go unanswered.)

Commands:
  watch                         print every DMQ message and change as one JSON
                                line until Ctrl-C, then leave
  nodes                         print the node list, one JSON line per node
  htable dump [TABLE]           print the mirrored cells, one JSON line each
  htable get TABLE NAME         print one cell; exit 1 when it does not exist
  htable set TABLE NAME VALUE   set a string (--int: an integer) on every node
  htable delete TABLE NAME      delete a cell on every node
  usrloc dump                   print the contacts, one JSON line each
  dialog dump                   print the dialogs, one JSON line each

--listen is this node's identity and UDP socket: an IP address the Kamailio
nodes can reach, with an explicit port, e.g. sip:127.0.0.1:5090 (add
;transport=tcp to be a TCP node). --seed is a Kamailio node's server_address,
written exactly as in its config (repeat it for several). $SIPSIDE_DMQ_LISTEN and
$SIPSIDE_DMQ_SEEDS (comma-separated) are the defaults.

Exit status: 0 success, 1 the operation failed (a node refused it, a cell does
not exist), 2 bad usage or no node answered the join.

Flags:
`

const dmqExample = `
Examples:
  sipside dmq watch --listen sip:127.0.0.1:5090 --seed sip:127.0.0.2:5060
  sipside dmq htable set repl k1 "hello" --listen sip:127.0.0.1:5090 --seed sip:127.0.0.2:5060
  sipside dmq htable get --listen sip:127.0.0.1:5090 --seed sip:127.0.0.2:5060 repl k1
`

type dmqFlags struct {
	listen  string
	seeds   []string
	ping    time.Duration
	wait    time.Duration
	isInt   bool
	expire  time.Duration
	verbose bool
}

func cmdDMQ(ctx context.Context, e *env, args []string) int {
	var f dmqFlags
	fs := dmqFlagSet(&f)
	help := func(w io.Writer) {
		fmt.Fprint(w, dmqUsage)
		printFlags(w, fs)
		fmt.Fprint(w, dmqExample)
	}
	pos, code, ok := parseArgs(e, fs, help, args, 0, anyArgs)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return usageError(e, fs.Name(), help, "no COMMAND given")
	}
	cmd, pos := pos[0], pos[1:]
	if (cmd == "htable" || cmd == "usrloc" || cmd == "dialog") && len(pos) > 0 {
		cmd, pos = cmd+" "+pos[0], pos[1:]
	}
	wantArgs := map[string][2]int{ // min, max positional arguments
		"watch": {0, 0}, "nodes": {0, 0}, "htable dump": {0, 1}, "htable get": {2, 2},
		"htable set": {3, 3}, "htable delete": {2, 2}, "usrloc dump": {0, 0}, "dialog dump": {0, 0},
	}
	n, ok := wantArgs[cmd]
	if !ok {
		return usageError(e, fs.Name(), help, "unknown command %q", cmd)
	}
	if len(pos) < n[0] || len(pos) > n[1] {
		return usageError(e, fs.Name(), help, "%s: want %s, got %d", cmd, argCount(n[0], n[1]), len(pos))
	}
	if f.listen == "" {
		f.listen = e.getenv("SIPSIDE_DMQ_LISTEN")
	}
	if len(f.seeds) == 0 && e.getenv("SIPSIDE_DMQ_SEEDS") != "" {
		f.seeds = strings.Split(e.getenv("SIPSIDE_DMQ_SEEDS"), ",")
	}
	if f.listen == "" {
		return usageError(e, fs.Name(), help, "give --listen sip:IP:PORT, the address the Kamailio nodes reach this node at")
	}
	cfg := dmq.Config{Listen: f.listen, Seeds: f.seeds, PingInterval: config.Duration(f.ping)}
	if cmd == "htable set" || cmd == "htable delete" || cmd == "htable get" || cmd == "htable dump" {
		cfg.Peers = []string{dmq.ChannelHTable}
	}
	if err := cfg.Validate(); err != nil {
		return usageError(e, fs.Name(), help, "%v", err)
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(e.stderr, "sipside dmq: warning: %s\n", w)
	}
	if cmd == "watch" {
		return dmqWatch(ctx, e, cfg, f.verbose)
	}
	return dmqOneShot(ctx, e, cfg, f, cmd, pos)
}

// argCount says how many arguments a command wants, for usage errors.
func argCount(min, max int) string {
	switch {
	case min == max && min == 0:
		return "no arguments"
	case min == max && min == 1:
		return "1 argument"
	case min == max:
		return fmt.Sprintf("%d arguments", min)
	}
	return fmt.Sprintf("%d to %d arguments", min, max)
}

func dmqFlagSet(f *dmqFlags) *flag.FlagSet {
	fs := newFlagSet("dmq")
	fs.StringVar(&f.listen, "listen", "", "this node's `URI`, sip:IP:PORT")
	fs.Func("seed", "a Kamailio node's server_address `URI` (repeatable)", func(s string) error {
		f.seeds = append(f.seeds, s)
		return nil
	})
	fs.DurationVar(&f.ping, "ping", 10*time.Second, "`DURATION` between pings")
	fs.DurationVar(&f.wait, "wait", 5*time.Second, "one-shot: wait up to `DURATION` for the join and the sync answers")
	fs.BoolVar(&f.isInt, "int", false, "htable set: the value is an integer")
	fs.DurationVar(&f.expire, "expire", 0, "htable set: let the cell expire after `DURATION` (whole seconds)")
	fs.BoolVar(&f.verbose, "v", false, "log the node's own messages to stderr")
	return fs
}

// jsonLines writes one JSON object per line, safe for concurrent use.
type jsonLines struct {
	mu sync.Mutex
	w  io.Writer
}

func (j *jsonLines) write(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	_, _ = j.w.Write(append(b, '\n'))
}

// messageLine is how watch prints one KDMQ message.
type messageLine struct {
	Time    string          `json:"time"`
	Type    string          `json:"type"` // "message"
	Dir     string          `json:"dir"`  // "in" or "out"
	Peer    string          `json:"peer"` // the other side's IP:port
	Method  string          `json:"method,omitempty"`
	Channel string          `json:"channel,omitempty"`
	Status  int             `json:"status,omitempty"`
	Reason  string          `json:"reason,omitempty"`
	CallID  string          `json:"call_id"`
	Body    json.RawMessage `json:"body,omitempty"` // JSON bodies as they are
	Text    string          `json:"text,omitempty"` // other bodies (node lists) as text
}

type eventLine struct {
	Time   string          `json:"time"`
	Type   string          `json:"type"` // "event"
	Event  string          `json:"event"`
	Params json.RawMessage `json:"params"`
}

func nowString() string { return time.Now().UTC().Format(time.RFC3339Nano) }

func messageOf(in bool, peer netip.AddrPort, m *dmq.Message) messageLine {
	l := messageLine{Time: nowString(), Type: "message", Dir: "out", Peer: peer.String(), CallID: m.CallID()}
	if in {
		l.Dir = "in"
	}
	if m.IsRequest() {
		l.Method = m.Method
		if u, err := dmq.ParseURI(m.RequestURI); err == nil {
			l.Channel = u.User
		}
	} else {
		l.Status, l.Reason = m.StatusCode, m.Reason
		if to, ok := m.Get("To"); ok {
			if i, j := strings.Index(to, "sip:"), strings.Index(to, "@"); i >= 0 && j > i {
				l.Channel = to[i+4 : j]
			}
		}
	}
	if len(m.Body) > 0 {
		if json.Valid(m.Body) {
			l.Body = json.RawMessage(m.Body)
		} else {
			l.Text = string(m.Body)
		}
	}
	return l
}

func dmqLogger(e *env, verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
}

func dmqWatch(ctx context.Context, e *env, cfg dmq.Config, verbose bool) int {
	out := &jsonLines{w: e.stdout}
	node, err := dmq.New(cfg, dmq.Options{
		Logger: dmqLogger(e, verbose),
		OnChange: func(name string, params []byte) {
			out.write(eventLine{Time: nowString(), Type: "event", Event: name, Params: json.RawMessage(params)})
		},
		Trace: func(in bool, peer netip.AddrPort, m *dmq.Message) { out.write(messageOf(in, peer, m)) },
	})
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside dmq watch: %v\n", err)
		return exitUsage
	}
	if err := node.Run(ctx); err != nil {
		fmt.Fprintf(e.stderr, "sipside dmq watch: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func dmqOneShot(ctx context.Context, e *env, cfg dmq.Config, f dmqFlags, cmd string, pos []string) int {
	var lastMsg atomic.Int64
	lastMsg.Store(time.Now().UnixNano())
	node, err := dmq.New(cfg, dmq.Options{
		Logger: dmqLogger(e, f.verbose),
		Trace: func(in bool, _ netip.AddrPort, _ *dmq.Message) {
			if in {
				lastMsg.Store(time.Now().UnixNano())
			}
		},
	})
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside dmq %s: %v\n", cmd, err)
		return exitUsage
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- node.Run(runCtx) }()
	finish := func(code int) int {
		stop()
		if err := <-done; err != nil {
			fmt.Fprintf(e.stderr, "sipside dmq %s: %v\n", cmd, err)
			if code == exitOK {
				code = exitFailure
			}
		}
		return code
	}

	deadline := time.NewTimer(f.wait)
	defer deadline.Stop()
	select {
	case <-node.Joined():
	case err := <-done:
		fmt.Fprintf(e.stderr, "sipside dmq %s: %v\n", cmd, err)
		return exitFailure
	case <-deadline.C:
		// Nobody reached: a peer that could not be reached, as for mi and amqp.
		fmt.Fprintf(e.stderr, "sipside dmq %s: no node answered within %s; check --seed %v and that this node's --listen %s is reachable from it\n",
			cmd, f.wait, cfg.Seeds, cfg.Listen)
		return finish(exitUsage)
	case <-ctx.Done():
		return finish(exitFailure)
	}
	// Settled: every known node active, and the bus quiet for a moment (the
	// sync answers have arrived). Bounded by --wait.
	settle := time.NewTicker(50 * time.Millisecond)
	defer settle.Stop()
wait:
	for {
		select {
		case <-deadline.C:
			break wait
		case <-ctx.Done():
			return finish(exitFailure)
		case <-settle.C:
			quiet := time.Since(time.Unix(0, lastMsg.Load())) > 300*time.Millisecond
			allActive := true
			for _, i := range node.Nodes() {
				if !i.Local && i.Status != dmq.StatusActive {
					allActive = false
				}
			}
			if quiet && allActive {
				break wait
			}
		}
	}
	return finish(dmqAct(ctx, e, node, f, cmd, pos))
}

type cellLine struct {
	Table  string  `json:"htname"`
	Name   string  `json:"cname"`
	Type   int     `json:"type"`
	Int    *int64  `json:"intval,omitempty"`
	Str    *string `json:"strval,omitempty"`
	Expire int64   `json:"expire"`
}

func cellOf(c dmq.Cell) cellLine {
	l := cellLine{Table: c.Table, Name: c.Name, Type: c.Type}
	if c.Type == dmq.TypeStr {
		l.Str = &c.Str
	} else {
		l.Int = &c.Int
	}
	if !c.Expire.IsZero() {
		l.Expire = c.Expire.Unix()
	}
	return l
}

func dmqAct(ctx context.Context, e *env, node *dmq.Node, f dmqFlags, cmd string, pos []string) int {
	out := &jsonLines{w: e.stdout}
	switch cmd {
	case "nodes":
		for _, i := range node.Nodes() {
			out.write(struct {
				Node   string `json:"node"`
				Status string `json:"status"`
				Local  bool   `json:"local"`
				Seed   bool   `json:"seed"`
			}{i.Addr.String(), i.Status.String(), i.Local, i.Seed})
		}
	case "htable dump":
		table := ""
		if len(pos) == 1 {
			table = pos[0]
		}
		for _, c := range node.HTable().Dump(table) {
			out.write(cellOf(c))
		}
	case "htable get":
		c, ok := node.HTable().Get(pos[0], pos[1])
		if !ok {
			fmt.Fprintf(e.stderr, "sipside dmq htable get: %s=>%s does not exist on the bus\n", pos[0], pos[1])
			return exitFailure
		}
		out.write(cellOf(c))
	case "htable set":
		opCtx, cancel := context.WithTimeout(ctx, 40*time.Second)
		defer cancel()
		var err error
		if f.isInt {
			n, perr := strconv.ParseInt(pos[2], 10, 64)
			if perr != nil {
				fmt.Fprintf(e.stderr, "sipside dmq htable set: --int given but %q is not an integer\n", pos[2])
				return exitUsage
			}
			err = node.HTable().SetInt(opCtx, pos[0], pos[1], n, f.expire)
		} else {
			err = node.HTable().Set(opCtx, pos[0], pos[1], pos[2], f.expire)
		}
		if err != nil {
			fmt.Fprintf(e.stderr, "sipside dmq htable set: %v\n", err)
			return exitFailure
		}
	case "htable delete":
		opCtx, cancel := context.WithTimeout(ctx, 40*time.Second)
		defer cancel()
		if err := node.HTable().Delete(opCtx, pos[0], pos[1]); err != nil {
			fmt.Fprintf(e.stderr, "sipside dmq htable delete: %v\n", err)
			return exitFailure
		}
	case "usrloc dump":
		for _, c := range node.Usrloc().Dump() {
			var exp int64
			if !c.Expires.IsZero() {
				exp = c.Expires.Unix()
			}
			out.write(map[string]any{"aor": c.AoR, "ruid": c.RUID, "contact": c.Contact, "expires": exp,
				"callid": c.CallID, "user_agent": c.UserAgent, "q": c.Q, "received": c.Received, "path": c.Path})
		}
	case "dialog dump":
		for _, d := range node.Dialogs().Dump() {
			out.write(map[string]any{"h_entry": d.HEntry, "h_id": d.HID, "callid": d.CallID, "from_uri": d.FromURI,
				"to_uri": d.ToURI, "state": d.State, "tag1": d.Tag1, "tag2": d.Tag2})
		}
	}
	return exitOK
}
