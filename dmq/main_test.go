package dmq

import (
	"fmt"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// checkFor polls f until it returns nil or timeout passes; the last error
// fails the test.
func checkFor(t testing.TB, timeout, interval time.Duration, f func() error) {
	t.Helper()
	if err := testenv.Poll(timeout, interval, f); err != nil {
		t.Fatalf("after %s: %v", timeout, err)
	}
}

// errorf is fmt.Errorf for checkFor callbacks, named for readability.
var errorf = fmt.Errorf
