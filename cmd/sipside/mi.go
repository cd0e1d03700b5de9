package main

import "context"

func cmdMI(ctx context.Context, e *env, args []string) int {
	return notBuilt(e, "mi", "the MI client")
}
