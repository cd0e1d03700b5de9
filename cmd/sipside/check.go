package main

import (
	"context"
	"fmt"
	"io"
)

const checkHelp = `Usage: sipside check [-c FILE | FILE]

Validates a config file without starting anything: TOML syntax, unknown
keys, values and every socket string. Prints what is wrong with the key and
line, and exits 0 when the file is good, 1 when it is not. Without a FILE it
checks the embedded default, as 'sipside run' without one runs it.

Flags:
`

func cmdCheck(_ context.Context, e *env, args []string) int {
	fs := newFlagSet("check")
	path := fs.String("c", "", "config `FILE` (default: the embedded default)")
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
