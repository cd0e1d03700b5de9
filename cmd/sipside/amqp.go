package main

import "context"

func cmdAMQP(ctx context.Context, e *env, args []string) int {
	return notBuilt(e, "amqp", "the AMQP bridge")
}
