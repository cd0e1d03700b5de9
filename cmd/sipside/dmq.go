package main

import "context"

func cmdDMQ(ctx context.Context, e *env, args []string) int {
	return notBuilt(e, "dmq", "the DMQ node")
}
