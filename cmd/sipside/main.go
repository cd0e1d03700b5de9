// Command sipside runs beside an OpenSIPS or Kamailio proxy: the daemon
// (`sipside run`) and one-shot tools over the same packages.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// env is what a subcommand may touch of the outside world, so that tests can
// run subcommands in-process with their own streams.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

// command is one entry of the subcommand table.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) int
}

// commands is the registration table; each subcommand lives in its own file.
func commands() []command {
	return []command{
		{"run", "run the daemon (embedded default config without -c)", cmdRun},
		{"check", "validate a config file without starting", cmdCheck},
		{"mi", "call a management-interface command of OpenSIPS or Kamailio", cmdMI},
		{"events", "receive events and re-dispatch them from flags", cmdEvents},
		{"dmq", "join a Kamailio DMQ bus: watch, nodes, htable, usrloc", cmdDMQ},
		{"amqp", "publish, query and consume on RabbitMQ", cmdAMQP},
		{"bench", "measure sipside's hot paths on this machine", cmdBench},
		{"version", "print the version", cmdVersion},
	}
}

// Exit codes shared by every subcommand.
const (
	exitOK      = 0
	exitFailure = 1 // the operation failed: an error answer, an invalid config, a nacked or unroutable message
	exitUsage   = 2 // bad usage, or the peer (proxy, broker, DMQ node, daemon) could not be reached
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	os.Exit(dispatch(ctx, e, os.Args[1:]))
}

func dispatch(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		return usageError(e, "sipside", usage, "no command given")
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(e.stdout)
		return exitOK
	case "help":
		// `sipside help mi` is `sipside mi --help`.
		if len(args) == 1 {
			usage(e.stdout)
			return exitOK
		}
		args = []string{args[1], "--help"}
	case "-version", "--version":
		return cmdVersion(ctx, e, nil)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	return usageError(e, "sipside", usage, "unknown command %q", args[0])
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: sipside COMMAND [FLAGS] [ARGS]

sipside lives beside an OpenSIPS or Kamailio proxy: reliable event delivery,
a seat on Kamailio's DMQ bus, and an AMQP bridge for routing scripts.

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Flags may come before or after the arguments; '--' ends them. Exit status:
0 success, 1 the operation failed (an error answer, an invalid config, a
message nacked or unroutable), 2 bad usage or the peer could not be reached.

Run 'sipside COMMAND --help' (or 'sipside help COMMAND') for a command's flags
and an example.
`)
}
