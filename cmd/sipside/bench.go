package main

import "context"

func cmdBench(_ context.Context, e *env, args []string) int {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		e.stderr.Write([]byte("Usage: sipside bench\n\nMeasures sipside's hot paths on this machine. Not built yet: run 'make bench'\n(go test -bench) for the same figures.\n\nExample:\n  make bench\n"))
		return exitOK
	}
	return notBuilt(e, "bench", "the in-binary benchmark (use 'make bench')")
}
