package testnats

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// CutWatch returns kv with watches that end after their first `after`
// entries: the updates channel closes, as nats.go closes it when the
// read's context ends (it unsubscribes) or the connection closes. A
// reader must not take what it read by then for the whole bucket.
func CutWatch(kv jetstream.KeyValue, after int) jetstream.KeyValue {
	return cutKV{KeyValue: kv, after: after}
}

type cutKV struct {
	jetstream.KeyValue
	after int
}

func (c cutKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	w, err := c.KeyValue.WatchAll(ctx, opts...)
	if err != nil {
		return nil, err
	}
	out := make(chan jetstream.KeyValueEntry)
	go func() {
		defer close(out)
		for range c.after {
			e := <-w.Updates()
			if e == nil {
				return
			}
			out <- e
		}
	}()
	return cutWatcher{KeyWatcher: w, updates: out}, nil
}

type cutWatcher struct {
	jetstream.KeyWatcher
	updates chan jetstream.KeyValueEntry
}

func (c cutWatcher) Updates() <-chan jetstream.KeyValueEntry { return c.updates }
