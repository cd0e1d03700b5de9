package main

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestLabScenario is `go run ./testenv/lab run`: the lab on loopback and its
// scenario, every flow counted.
func TestLabScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("starts RabbitMQ and two Kamailio nodes")
	}
	testenv.NeedKamailio(t)
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		testenv.Missing(t, "rabbitmq-server", "apt-get install rabbitmq-server")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{Events: []string{"E_SIPSIDE_LAB", "E_AMQP_ROUTE_REQ"}, StreamReliable: true})
	raiseOpenSIPS = o.Raise
	st, sipside, err := start(ctx, t.TempDir(), o.Target("udp"))
	if sipside != nil {
		defer func() {
			sipside.Process.Signal(syscall.SIGTERM) // our child, by pid
			sipside.Wait()
		}()
	}
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	err = scenario(ctx, st, &out)
	t.Logf("\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
}
