package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// ShareInterval is how often a forwarder writes its snapshot to
// natsjs.StatusBucket; entries live for natsjs.Topology.StatusTTL (six
// intervals), so a forwarder that died drops off within it.
const ShareInterval = 5 * time.Second

// Share writes the tracker's snapshot to kv every interval until ctx ends,
// then removes it. Write failures are logged and retried at the next tick
// (LastPutError): the forwarder goes on, but while the bucket lacks its
// snapshot its de-identifying destinations pull nothing (the key guard).
func (t *Tracker) Share(ctx context.Context, kv jetstream.KeyValue, interval time.Duration, log *slog.Logger) error {
	if interval <= 0 {
		interval = ShareInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	failing := false
	for {
		wctx, cancel := context.WithTimeout(ctx, interval)
		err := t.put(wctx, kv)
		cancel()
		if ctx.Err() == nil {
			t.mu.Lock()
			t.putErr = err
			t.mu.Unlock()
		}
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			msg := "status: cannot share this forwarder's state (status page)"
			if t.deidentifies() {
				msg += ", and de-identifying destinations pull nothing until it is shared: the forwarders serving one compare their keys through it; if it lasts, see that the NATS user may publish to $KV." + natsjs.StatusBucket + ".> (docs/nats-permissions.md)"
			}
			log.Warn(msg, "bucket", natsjs.StatusBucket, "err", err)
			failing = true
		case err == nil && failing:
			log.Info("status: sharing this forwarder's state again", "bucket", natsjs.StatusBucket)
			failing = false
		}
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if err := kv.Delete(dctx, t.id); err != nil {
				log.Debug("status: remove this forwarder's state", "err", err)
			}
			return nil
		case <-tick.C:
		}
	}
}

func (t *Tracker) put(ctx context.Context, kv jetstream.KeyValue) error {
	data, err := json.Marshal(t.Snapshot())
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	if _, err := kv.Put(ctx, t.id, data); err != nil {
		return fmt.Errorf("put %s: %w", t.id, err)
	}
	return nil
}

// ReadShared returns the snapshots of the live forwarder processes,
// sorted by host; none if no forwarder created the bucket yet.
func ReadShared(ctx context.Context, js jetstream.JetStream) ([]Snapshot, error) {
	kv, err := natsjs.OpenKV(ctx, js, natsjs.StatusBucket)
	if errors.Is(err, natsjs.ErrNotProvisioned) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read key-value bucket %s: %w", natsjs.StatusBucket, err)
	}
	defer func() { _ = w.Stop() }()
	var out []Snapshot
	for {
		select {
		case e, open := <-w.Updates():
			if !open {
				// The watch ended before its initial values were all
				// read: nats.go closes the channel when ctx ends, which
				// may be picked here before ctx.Done, or when the
				// connection closes. What was read is not every live
				// forwarder, and the replicas count each other from it.
				if err := ctx.Err(); err != nil {
					return nil, fmt.Errorf("read key-value bucket %s: %w", natsjs.StatusBucket, err)
				}
				return nil, fmt.Errorf("read key-value bucket %s: the watch ended after %d entries, before the last", natsjs.StatusBucket, len(out))
			}
			if e == nil { // the initial values are all read
				slices.SortFunc(out, func(a, b Snapshot) int {
					return strings.Compare(a.Host+a.ID, b.Host+b.ID)
				})
				return out, nil
			}
			var s Snapshot
			if err := json.Unmarshal(e.Value(), &s); err != nil {
				continue // written by another version; skip it
			}
			// No age filter of ours: the writer's clock may be behind
			// this one, and a live replica left out would let the others
			// take its share of the caps. The bucket's TTL removes a dead
			// replica's snapshot.
			out = append(out, s)
		case <-ctx.Done():
			return nil, fmt.Errorf("read key-value bucket %s: %w", natsjs.StatusBucket, ctx.Err())
		}
	}
}
