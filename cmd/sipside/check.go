package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
)

const checkHelp = `Usage: sipside check [-c FILE]

Validates a config file without starting anything: TOML syntax, unknown
keys, values and every socket string. Prints what is wrong with the key and
line, and exits 0 when the file is good, 1 when it is not.

Flags:
`

func cmdCheck(_ context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	path := fs.String("c", "", "config `FILE` (default: the embedded default)")
	fs.Usage = func() {
		fmt.Fprint(e.stderr, checkHelp)
		fs.PrintDefaults()
		fmt.Fprint(e.stderr, "\nExample:\n  sipside check -c /etc/sipside/sipside.toml\n")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 1 && *path == "" {
		*path = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "sipside check: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	cfg, err := loadConfigFile(*path)
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside check: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(e.stdout, "%s: ok (%d inputs, %d routes)\n", cfg.source, len(cfg.Input), len(cfg.Route))
	return exitOK
}
