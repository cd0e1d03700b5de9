package dmq

import (
	"context"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/config"
)

// Two sipside nodes form a bus of their own: no Kamailio needed, so the node
// logic is covered wherever the tests run.
func TestTwoNodes(t *testing.T) {
	c1 := testConfig(t)
	c2 := testConfig(t, c1.Listen)
	c1.Seeds = []string{c2.Listen}
	c2.Timeout = config.Duration(500 * time.Millisecond)
	n1 := startNode(t, c1)
	n2 := startNode(t, c2)

	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if s := n1.status(c2.Listen); s != "active" {
			return errorf("n1 sees n2 %s", s)
		}
		if s := n2.status(c1.Listen); s != "active" {
			return errorf("n2 sees n1 %s", s)
		}
		return nil
	})
	select {
	case <-n1.Joined():
	default:
		t.Fatal("n1 active with n2 but Joined not closed")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n1.HTable().Set(ctx, "t", "k", "v", 0); err != nil {
		t.Fatal(err)
	}
	if c, ok := n2.HTable().Get("t", "k"); !ok || c.Str != "v" {
		t.Fatalf("n2 has %+v, %v after n1's Set returned", c, ok)
	}
	if err := n1.HTable().Delete(ctx, "t", "k"); err != nil {
		t.Fatal(err)
	}
	if _, ok := n2.HTable().Get("t", "k"); ok {
		t.Fatal("n2 still has k after n1's Delete returned")
	}

	// n1 leaves: n2 takes the disabled line at once, then, n1 being its seed,
	// keeps it as pending once its pings go unanswered.
	n1.stop(t)
	if !n2.events.find("E_DMQ_NODE", c1.Listen, `"status":"disabled"`) {
		t.Errorf("n2 did not see n1 leave; node events %v", n2.events.all("E_DMQ_NODE"))
	}
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if s := n2.status(c1.Listen); s != "pending" {
			return errorf("n2 sees n1 %s, want pending (a seed is never removed)", s)
		}
		return nil
	})
}

// A node whose seed never answers stays unjoined and keeps the seed pending.
func TestJoinUnanswered(t *testing.T) {
	c := testConfig(t, "sip:127.0.0.1:9") // discard port: nothing answers
	c.Timeout = config.Duration(300 * time.Millisecond)
	n := startNode(t, c)
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n.metrics.timeouts.With(ChannelNotification).Value() == 0 {
			return errorf("no notification timeout counted yet")
		}
		return nil
	})
	select {
	case <-n.Joined():
		t.Fatal("joined without any answer")
	default:
	}
	if s := n.status("sip:127.0.0.1:9"); s != "pending" {
		t.Fatalf("seed is %s, want pending", s)
	}
}

// The same over TCP: framing by Content-Length, no retransmissions.
func TestTwoNodesTCP(t *testing.T) {
	c1 := testConfig(t)
	c1.Listen += ";transport=tcp"
	c2 := testConfig(t, c1.Listen)
	c2.Listen += ";transport=tcp"
	c1.Seeds = []string{c2.Listen}
	n1 := startNode(t, c1)
	n2 := startNode(t, c2)
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if s := n1.status(c2.Listen); s != "active" {
			return errorf("n1 sees n2 %s", s)
		}
		if s := n2.status(c1.Listen); s != "active" {
			return errorf("n2 sees n1 %s", s)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n2.HTable().SetInt(ctx, "t", "k", 5, 0); err != nil {
		t.Fatal(err)
	}
	if c, ok := n1.HTable().Get("t", "k"); !ok || c.Int != 5 {
		t.Fatalf("n1 has %+v, %v", c, ok)
	}
	if got := n1.metrics.retransmissions.With(ChannelNotification).Value(); got != 0 {
		t.Errorf("%d retransmissions over TCP", got)
	}
}
