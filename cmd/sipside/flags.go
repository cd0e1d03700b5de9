package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Every subcommand parses its arguments with parseArgs, so that they all
// behave the same way:
//
//   - flags are accepted anywhere before "--" (GNU style): `sipside mi ps -t X`
//     is `sipside mi -t X ps`, not a call of ps with the parameters "-t" "X";
//   - "--" ends the flags: what follows is positional even if it starts with "-";
//   - "-" alone and negative numbers ("-1") are positional, so that
//     `sipside mi log_level -1` works without "--";
//   - positional arguments beyond what the command takes are a usage error;
//   - --help (-h) prints the help on stdout and exits 0; a usage error prints
//     the error and the Usage line on stderr and exits 2.

// newFlagSet returns an empty flag set for "sipside NAME". It prints nothing
// itself: parseArgs decides where help and errors go.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("sipside "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// anyArgs is parseArgs' max for commands that take any number of arguments.
const anyArgs = -1

// parseArgs parses args against fs and returns the positional arguments. help
// writes the command's full help, starting with its "Usage:" line. When ok is
// false the command must return code at once: help was asked for (0), or the
// arguments were wrong (2, after the error went to stderr).
func parseArgs(e *env, fs *flag.FlagSet, help func(io.Writer), args []string, minArgs, maxArgs int) (pos []string, code int, ok bool) {
	flags, pos := splitArgs(fs, args)
	if err := fs.Parse(flags); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			help(e.stdout)
			return nil, exitOK, false
		}
		return nil, usageError(e, fs.Name(), help, "%v", err), false
	}
	switch {
	case maxArgs != anyArgs && len(pos) > maxArgs:
		return nil, usageError(e, fs.Name(), help, "unexpected argument %q", pos[maxArgs]), false
	case len(pos) < minArgs:
		return nil, usageError(e, fs.Name(), help, "want at least %d arguments, got %d", minArgs, len(pos)), false
	}
	return pos, exitOK, true
}

// usageError reports a usage error of command name (e.g. "sipside mi") on
// stderr: the message, the command's Usage line and where to read more. It
// returns exitUsage.
func usageError(e *env, name string, help func(io.Writer), format string, a ...any) int {
	fmt.Fprintf(e.stderr, "%s: %s\n", name, fmt.Sprintf(format, a...))
	if help != nil {
		var b bytes.Buffer
		help(&b)
		if line, _, _ := strings.Cut(b.String(), "\n"); strings.HasPrefix(line, "Usage:") {
			fmt.Fprintln(e.stderr, line)
		}
	}
	fmt.Fprintf(e.stderr, "Run '%s --help' for the flags and examples.\n", name)
	return exitUsage
}

// splitArgs separates flags (with their values) from positional arguments, in
// order, up to "--". Whether a flag takes the next argument as its value comes
// from fs, so a bool flag never swallows a positional argument. An unknown
// flag stays with the flags, where fs.Parse reports it.
func splitArgs(fs *flag.FlagSet, args []string) (flags, pos []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, append(pos, args[i+1:]...)
		}
		if !isFlagArg(a) {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if hasValue {
			continue
		}
		if f := fs.Lookup(name); f != nil && !isBoolFlag(f) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, pos
}

// isFlagArg says whether a looks like a flag. "-" (stdin) and "-5" (a
// negative number; no flag has a name starting with a digit) are values.
func isFlagArg(a string) bool {
	return len(a) > 1 && a[0] == '-' && !(a[1] >= '0' && a[1] <= '9')
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// printFlags lists fs's flags as the help and the examples write them: "-t"
// for one-letter names, "--timeout" for the others, with an upper-case
// placeholder for the value and the default when it is not the zero value.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		placeholder, usage := flag.UnquoteUsage(f)
		line := "  " + dash + f.Name
		if placeholder != "" {
			line += " " + strings.ToUpper(placeholder)
		}
		fmt.Fprintf(w, "%s\n        %s", line, strings.ReplaceAll(usage, "\n", "\n        "))
		switch f.DefValue {
		case "", "0", "0s", "false":
		default:
			if g, ok := f.Value.(flag.Getter); ok && isString(g.Get()) {
				fmt.Fprintf(w, " (default %q)", f.DefValue)
			} else {
				fmt.Fprintf(w, " (default %s)", f.DefValue)
			}
		}
		fmt.Fprintln(w)
	})
}

func isString(v any) bool { _, ok := v.(string); return ok }
