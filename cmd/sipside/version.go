package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/sipside/sipside/internal/metrics"
)

// buildVersion is set with -ldflags "-X main.buildVersion=v1.2.3".
var buildVersion = ""

func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
	}
	return "dev"
}

// commit is the VCS revision the binary was built from, "unknown" when the
// build had no VCS information (go build -buildvcs=false, a source tarball),
// with "-dirty" when the tree had uncommitted changes.
func commit() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "unknown"
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// registerBuildInfo adds sipside_build_info, the usual constant 1 whose labels
// say what is running, so that a dashboard can show versions and an alert can
// find a fleet running mixed builds.
func registerBuildInfo(reg *metrics.Registry) {
	reg.Gauge("sipside_build_info", "A constant 1 labelled with the version, commit and Go version sipside was built with.",
		"version", "commit", "goversion").With(version(), commit(), runtime.Version()).Set(1)
}

func cmdVersion(_ context.Context, e *env, args []string) int {
	fs := newFlagSet("version")
	help := func(w io.Writer) {
		fmt.Fprint(w, "Usage: sipside version\n\nPrints sipside's version and the Go runtime it was built with.\n\nExample:\n  sipside version\n")
	}
	if _, code, ok := parseArgs(e, fs, help, args, 0, 0); !ok {
		return code
	}
	fmt.Fprintf(e.stdout, "sipside %s (%s %s/%s)\n", version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return exitOK
}
