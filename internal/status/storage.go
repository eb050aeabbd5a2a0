package status

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// storageRead is what stowline's streams and buckets hold in JetStream, and
// the account's storage, against their limits: what fills before
// JetStream refuses writes.
type storageRead struct {
	// Streams holds each stream stowline creates that exists, a bucket
	// as its stream (KV_<bucket>), sorted by name.
	Streams []streamStorage
	// Account is the account's usage and limits (-1: unlimited).
	Account jetstream.Tier
	// StreamsErr says which streams could not be read (left out of
	// Streams), nil when every one was.
	StreamsErr error
}

// streamStorage is one stream's usage and size limit.
type streamStorage struct {
	Stream          string
	Bytes, Messages uint64
	// MaxBytes is the stream's size limit, 0 or -1 when it has none.
	MaxBytes int64
}

// readStorage asks JetStream for the account's usage and for each of
// stowline's streams (ownStream). A stream that does not answer in time
// is left out and named in StreamsErr; the account not answering fails
// it. Bound ctx.
func readStorage(ctx context.Context, js jetstream.JetStream) (storageRead, error) {
	var st storageRead
	acct, err := js.AccountInfo(ctx)
	if err != nil {
		return st, fmt.Errorf("account info: %w", err)
	}
	st.Account = acct.Tier
	var names []string
	lister := js.StreamNames(ctx)
	for name := range lister.Name() {
		if ownStream(name) {
			names = append(names, name)
		}
	}
	if err := lister.Err(); err != nil {
		return st, fmt.Errorf("stream names: %w", err)
	}
	slices.Sort(names)
	// Each by itself and all at once: one whose leader does not answer
	// (a cluster electing) must not take the scrape's time from the rest.
	streams := make([]*streamStorage, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			s, err := js.Stream(ctx, name)
			if err != nil {
				errs[i] = fmt.Errorf("stream %s: %w", name, err)
				return
			}
			info := s.CachedInfo()
			streams[i] = &streamStorage{Stream: name, Bytes: info.State.Bytes, Messages: info.State.Msgs, MaxBytes: info.Config.MaxBytes}
		})
	}
	wg.Wait()
	for _, s := range streams {
		if s != nil {
			st.Streams = append(st.Streams, *s)
		}
	}
	st.StreamsErr = errors.Join(errs...)
	return st, nil
}

// ownStream reports whether name is a stream stowline creates (natsjs'
// topology): the label set of the storage metrics stays bounded by
// the destinations, whatever else the account holds.
func ownStream(name string) bool {
	switch name {
	case natsjs.EventStream, natsjs.DeadLetterStream:
		return true
	}
	bucket, ok := strings.CutPrefix(name, "KV_")
	if !ok {
		return false
	}
	switch bucket {
	case natsjs.FailureBucket, natsjs.ReconcileBucket, natsjs.StatusBucket:
		return true
	}
	_, ok = natsjs.DestinationOfLedgerBucket(bucket)
	return ok
}
