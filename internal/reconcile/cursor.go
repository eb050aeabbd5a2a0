package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/orthancapi"
)

// The reconciler's bucket (natsjs.ReconcileBucket) holds
// "cursor.<source>" and "lease.<source>".
func cursorKey(source string) string { return "cursor." + source }
func leaseKey(source string) string  { return "lease." + source }

// errCursorConflict: another replica wrote the cursor (mostly one that
// held the lease before, writing late); this one stops polling, takes the
// lease again and reloads the cursor.
var errCursorConflict = errors.New("reconcile: the cursor was written by another replica")

// cursor is how far the reconciler got in a source's change log.
type cursor struct {
	// Seq is the last change handled: every StableStudy change up to it
	// was published.
	Seq int64 `json:"seq"`
	// Change identifies the change at Seq, so a recreated Orthanc database
	// (whose sequence numbers start again at 1) is noticed even once it has
	// more changes than Seq.
	Change *changeMark `json:"change,omitempty"`
	// Pending holds studies that received instances (Orthanc study ID ->
	// seq of the change) and were not published since: Orthanc forgets
	// unstable studies when it restarts and then never logs StableStudy
	// for them, so the reconciler publishes them once Orthanc says they are
	// stable.
	Pending map[string]int64 `json:"pending,omitempty"`
	// SkipBefore, set while a reset change log is rescanned, is the Date
	// of the last change handled before the reset: a change dated before
	// it was handled then (the log of a database restored from a backup)
	// or is the history of another database, which a first start does
	// not publish either. Published again, each study older than the
	// dedupe window would be forwarded again: the whole archive.
	SkipBefore string `json:"skipBefore,omitempty"`
	// GoneChecked is the position whose change was found gone from the
	// log and looked into (cursorChangeGone): told once, not again
	// after a restart.
	GoneChecked int64 `json:"goneChecked,omitempty"`
	// Configured: written by a source whose name is configured, which a
	// source following Orthanc's Name never takes over (adoptRenamed):
	// another deployment on the same NATS may own it. Set by save.
	Configured bool      `json:"configured,omitempty"`
	UpdatedAt  time.Time `json:"updatedAt"`
}

type changeMark struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Date string `json:"date"`
}

func markOf(c orthancapi.Change) *changeMark {
	return &changeMark{Type: c.ChangeType, ID: c.ID, Date: c.Date}
}

// matches reports whether c is the change the mark was taken from. A
// missing mark (the cursor started at a purged change) matches anything.
func (m *changeMark) matches(c orthancapi.Change) bool {
	return m == nil || (m.Type == c.ChangeType && m.ID == c.ID && m.Date == c.Date)
}

// cursorStore reads and writes one source's cursor with compare-and-set.
type cursorStore struct {
	kv  jetstream.KeyValue
	key string
	// configured marks the cursors it saves (cursor.Configured).
	configured bool
	rev        uint64 // revision last read or written; 0 when the key is absent
	// unconfirmed is the last write whose answer was an error: JetStream
	// may have stored it all the same (an answer lost in a leader
	// election), and the next save must not take it for another
	// replica's.
	unconfirmed []byte
}

// load returns the stored cursor; found is false when there is none.
func (s *cursorStore) load(ctx context.Context) (c cursor, found bool, err error) {
	s.unconfirmed = nil
	entry, err := s.kv.Get(ctx, s.key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		s.rev = 0
		return cursor{}, false, nil
	}
	if err != nil {
		return cursor{}, false, fmt.Errorf("read cursor %s: %w", s.key, err)
	}
	if err := json.Unmarshal(entry.Value(), &c); err != nil {
		return cursor{}, false, fmt.Errorf("decode cursor %s: %w", s.key, err)
	}
	s.rev = entry.Revision()
	return c, true, nil
}

// save writes c if nobody else wrote the cursor since it was last read
// or written here; errCursorConflict otherwise.
func (s *cursorStore) save(ctx context.Context, c cursor) error {
	c.Configured = s.configured
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode cursor: %w", err)
	}
	rev, err := s.write(ctx, b)
	if errors.Is(err, errCursorConflict) && s.unconfirmed != nil {
		// Written by this replica, if the key holds its unconfirmed
		// write: go on from there.
		entry, gerr := s.kv.Get(ctx, s.key)
		if gerr == nil && bytes.Equal(entry.Value(), s.unconfirmed) {
			s.rev = entry.Revision()
			rev, err = s.write(ctx, b)
		}
	}
	switch {
	case errors.Is(err, errCursorConflict):
		s.unconfirmed = nil
		return err
	case err != nil:
		s.unconfirmed = b
		return fmt.Errorf("write cursor %s: %w", s.key, natsjs.StorageFull(err))
	}
	s.rev, s.unconfirmed = rev, nil
	return nil
}

// write creates or updates the key from revision s.rev; errCursorConflict
// when it moved.
func (s *cursorStore) write(ctx context.Context, b []byte) (uint64, error) {
	if s.rev == 0 {
		rev, err := s.kv.Create(ctx, s.key, b)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, errCursorConflict
		}
		return rev, err
	}
	rev, err := s.kv.Update(ctx, s.key, b, s.rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, errCursorConflict
	}
	return rev, err
}
