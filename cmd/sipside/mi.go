package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/sipside/sipside/mi"
)

const miUsage = `Usage: sipside mi [-t TARGET] [-c FILE] [--timeout DURATION] [--params JSON] METHOD [ARG...]

Calls one management command of OpenSIPS (MI) or Kamailio (jsonrpcs) and prints the
result as indented JSON, like 'opensips-cli -x mi METHOD ...' or 'kamcmd METHOD ...'.
Flags may come after METHOD too; after '--' everything is an ARG.

Arguments:
  VALUE          a positional parameter
  NAME=VALUE     a named parameter (do not mix with positional ones)
  NAME:=JSON     a named parameter given as raw JSON, e.g. params:='["a","b"]'
  :=JSON         a positional parameter given as raw JSON
  A VALUE that is a whole number is sent as a JSON number; quote it to send a
  string: expire=120 sends 120, expire='"120"' sends "120". Kamailio ignores
  parameter names and takes the values in the order given.
  OpenSIPS commands whose parameter is an array (get_statistics, list_statistics,
  reset_statistics, fs_subscribe, fs_unsubscribe, b2b_trigger_scenario,
  dlg_push_var, cluster_broadcast_mi, cluster_send_mi) get the ARGs from that
  parameter's position on as one array, as opensips-cli does: 'get_statistics
  core: shmem:' sends [["core:","shmem:"]]; NAME='A B' splits at spaces.

Target (first found): -t, $SIPSIDE_MI, [mi] target of the -c config file,
opensips:udp:127.0.0.1:8080. Forms:
  opensips:udp:HOST:PORT   opensips:unix:/PATH   opensips:http://HOST:PORT/mi
  opensips:fifo:/PATH      kamailio:udp:HOST:PORT   kamailio:unix:/PATH
  kamailio:http://HOST:PORT/RPC   kamailio:fifo:/PATH

Exit status: 0 success, 1 the proxy answered with an error (its code and message
are printed) or the -c config is invalid, 2 bad usage or no answer (the message
says what to check).

Flags:
`

const miExample = `
Examples:
  sipside mi ps
  sipside mi get_statistics core: shmem:
  sipside mi event_subscribe event=E_PIKE_BLOCKED socket=udp:127.0.0.1:8090 expire=120
  sipside mi -t kamailio:http://127.0.0.1:5071/RPC core.version
  sipside mi htable.sets t key value -t kamailio:udp:127.0.0.1:8090
  sipside mi log_level -1
`

func cmdMI(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet("mi")
	target := fs.String("t", "", "MI `TARGET`, e.g. kamailio:http://127.0.0.1:5071/RPC")
	config := fs.String("c", "", "config `FILE` whose [mi] target is the default")
	timeout := fs.Duration("timeout", mi.DefaultTimeout, "give up waiting for the reply after `DURATION`")
	rawParams := fs.String("params", "", "all parameters as one `JSON` array or object (no ARGs then)")
	replyDir := fs.String("reply-dir", "", "FIFO: the proxy's reply `DIR` (default: watch the FIFO's directory and /tmp)")
	help := func(w io.Writer) {
		fmt.Fprint(w, miUsage)
		printFlags(w, fs)
		fmt.Fprint(w, miExample)
	}
	pos, code, ok := parseArgs(e, fs, help, args, 0, anyArgs)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return usageError(e, fs.Name(), help, "no METHOD given")
	}
	method, rest := pos[0], pos[1:]
	var params any
	if *rawParams != "" {
		if len(rest) > 0 {
			fmt.Fprintln(e.stderr, "sipside mi: give parameters either with --params or as arguments, not both")
			return exitUsage
		}
		params = json.RawMessage(*rawParams)
	} else {
		p, err := miParams(rest)
		if err != nil {
			fmt.Fprintf(e.stderr, "sipside mi: %v\n", err)
			return exitUsage
		}
		params = p
	}
	t, err := miTarget(*target, *config, e)
	if err != nil {
		// Only reading the -c file fails here: an invalid config, as for check.
		fmt.Fprintf(e.stderr, "sipside mi: %v\n", err)
		return exitFailure
	}
	if tgt, err := mi.ParseTarget(t); err == nil && tgt.Dialect == mi.OpenSIPS && *rawParams == "" {
		params = opensipsArrays(method, params)
	}
	c, err := mi.New(t, mi.Options{Timeout: *timeout, ReplyDir: *replyDir})
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside mi: %v\n", err)
		return exitUsage
	}
	defer c.Close()
	res, err := c.Call(ctx, method, params)
	var me *mi.Error
	switch {
	case errors.As(err, &me):
		fmt.Fprintf(e.stderr, "sipside mi: %v\n", err)
		return exitFailure
	case err != nil:
		fmt.Fprintf(e.stderr, "sipside mi: %v\n", err)
		return exitUsage
	}
	fmt.Fprintf(e.stdout, "%s\n", res.Indent())
	return exitOK
}

// miTarget picks the target: flag, environment, config file, built-in default.
func miTarget(flagTarget, configPath string, e *env) (string, error) {
	if flagTarget != "" {
		return flagTarget, nil
	}
	if s := e.getenv("SIPSIDE_MI"); s != "" {
		return s, nil
	}
	if configPath != "" {
		cfg, err := loadConfigFile(configPath)
		if err != nil {
			return "", err
		}
		if cfg.MI.Target != "" {
			return cfg.MI.Target, nil
		}
	}
	return "opensips:udp:127.0.0.1:8080", nil
}

var paramName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// miParams turns command-line arguments into a list or mi.Named.
func miParams(args []string) (any, error) {
	if len(args) == 0 {
		return nil, nil
	}
	var (
		named      mi.Named
		positional []any
	)
	for _, a := range args {
		name, value, isNamed := splitNamed(a)
		v, err := miValue(value)
		if err != nil {
			return nil, fmt.Errorf("argument %q: %w", a, err)
		}
		if isNamed {
			named = append(named, mi.Param{Name: name, Value: v})
		} else {
			positional = append(positional, v)
		}
	}
	if named != nil && positional != nil {
		return nil, fmt.Errorf("mix of named (NAME=VALUE) and positional arguments: the proxies take one or the other")
	}
	if named != nil {
		return named, nil
	}
	return positional, nil
}

// splitNamed splits NAME=VALUE and NAME:=JSON; anything else is positional. The
// ":=" stays on the value so that miValue knows it is raw JSON.
func splitNamed(a string) (name, value string, ok bool) {
	i := strings.IndexByte(a, '=')
	if i <= 0 {
		return "", a, false
	}
	name, value = a[:i], a[i+1:]
	if strings.HasSuffix(name, ":") {
		name, value = name[:len(name)-1], ":="+value
	}
	if !paramName.MatchString(name) {
		return "", a, false
	}
	return name, value, true
}

func miValue(s string) (any, error) {
	if raw, ok := strings.CutPrefix(s, ":="); ok {
		if !json.Valid([]byte(raw)) {
			return nil, fmt.Errorf("not valid JSON after :=")
		}
		return json.RawMessage(raw), nil
	}
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1], nil
	}
	if isInteger(s) {
		return json.Number(s), nil
	}
	return s, nil
}

func isInteger(s string) bool {
	digits := strings.TrimPrefix(s, "-")
	if digits == "" || len(digits) > 10 || (len(digits) > 1 && digits[0] == '0') {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
