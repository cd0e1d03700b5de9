package evi

import (
	"errors"
	"fmt"
)

// ParseDatagram parses one event_datagram payload: exactly one JSON-RPC
// notification, optionally followed by whitespace.
func ParseDatagram(b []byte) (Notification, error) {
	i := skipWS(b, 0)
	if i == len(b) {
		return Notification{}, errors.New("empty datagram")
	}
	if b[i] != '{' {
		return Notification{}, fmt.Errorf("not JSON-RPC: datagram starts with %q, want '{'", b[i])
	}
	n, end, err := ParseNotification(b)
	if errors.Is(err, ErrIncomplete) {
		return n, fmt.Errorf("truncated JSON: the datagram ends inside the object after %d bytes", len(b))
	}
	if err != nil {
		return n, err
	}
	if rest := skipWS(b, end); rest != len(b) {
		return n, fmt.Errorf("%d bytes of trailing data after the notification", len(b)-rest)
	}
	return n, nil
}
