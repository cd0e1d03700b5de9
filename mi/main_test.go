package mi

import (
	"testing"

	"github.com/sipside/sipside/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
