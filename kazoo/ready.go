package kazoo

import "context"

// FirstReady waits for the bridge's first round over the broker list and
// returns nil when a connection came up, or an error saying why none did
// (the brokers' last error). Unlike Ready it does not wait through backoff
// for a broker that is down, so a one-shot tool learns of a refused
// connection at once.
func (b *Bridge) FirstReady(ctx context.Context) error {
	_, err := b.mgr.FirstSession(ctx)
	return err
}
