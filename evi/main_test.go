package evi

import (
	"testing"

	"github.com/sipside/sipside/testenv"
)

// TestMain stops the real parts (RabbitMQ, Kamailio) the tests started.
func TestMain(m *testing.M) { testenv.Main(m) }
