package main

import (
	"context"
	"fmt"
	"io"
)

const checkHelp = `Usage: sipside check [--file-only] [-c FILE | FILE]

Validates a config file without starting anything: TOML syntax, unknown
keys, values, every socket string, and what run would refuse on this
machine (an address no interface has, a unix socket or spool directory that
cannot be made; an address in use is fine; --file-only leaves that out, for
a config meant for another host). Prints every problem at once, each with
its line and key, and exits 0 when the file is good, 1 when not. Without a FILE it
checks the embedded default, as 'sipside run' without one runs it.

Flags:
`

func cmdCheck(_ context.Context, e *env, args []string) int {
	fs := newFlagSet("check")
	path := fs.String("c", "", "config `FILE` (default: the embedded default)")
	fileOnly := fs.Bool("file-only", false, "check the file alone, not what this machine would refuse (for a config meant for another host or a container)")
	help := func(w io.Writer) {
		fmt.Fprint(w, checkHelp)
		printFlags(w, fs)
		fmt.Fprint(w, "\nExample:\n  sipside check /etc/sipside/sipside.toml\n  sipside check -c /etc/sipside/sipside.toml\n")
	}
	pos, code, ok := parseArgs(e, fs, help, args, 0, 1)
	if !ok {
		return code
	}
	file, err := configArg(*path, pos)
	if err != nil {
		return usageError(e, fs.Name(), help, "%v", err)
	}
	cfg, err := loadConfigFile(file)
	if err == nil && !*fileOnly {
		// What run would refuse on this machine, short of addresses in use.
		err = cfg.checkHost()
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside check: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(e.stdout, "%s: ok (%d inputs, %d routes)\n", cfg.source, len(cfg.Input), len(cfg.Route))
	return exitOK
}

// configArg is the config file of run and check, which take it as -c FILE or
// as their one argument, alike.
func configArg(flagPath string, pos []string) (string, error) {
	if len(pos) == 0 {
		return flagPath, nil
	}
	if flagPath != "" {
		return "", fmt.Errorf("the config file given twice (-c %s and %s): give one", flagPath, pos[0])
	}
	return pos[0], nil
}
