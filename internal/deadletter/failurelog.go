package deadletter

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
)

// FailureLog records one destination's failure times per event (by
// stream sequence: each destination's consumer delivers the same events),
// and the instances attempts got stored, per study.
type FailureLog struct {
	kv          jetstream.KeyValue
	destination string
	// maxSent bounds a study's record, in entries (maxSentBytes/8;
	// smaller in tests).
	maxSent int

	// written holds the records of stored instances this process wrote
	// last, with their revisions: an attempt adds to its study's record
	// as each request is answered, and the next write then skips reading
	// the record back (a JetStream round trip). An entry another writer
	// made stale only fails the compare-and-set, and the record is read.
	mu           sync.Mutex
	written      map[string]sentRecord
	writtenBytes int // of the records in written
}

// sentRecord is a record of stored instances as written, at revision rev.
type sentRecord struct {
	data []byte
	rev  uint64
}

// maxWritten and maxWrittenBytes bound FailureLog.written: the studies
// being forwarded at once, in records of 8 MiB together, so that a few
// studies of 100,000 instances are not read back before each write
// either (a 20,000-instance study's record is 160 KB, re-read 200 times).
const (
	maxWritten      = 64
	maxWrittenBytes = 8 << 20
)

// NewFailureLog returns the destination's log kept in kv
// (natsjs.Topology.EnsureFailureLog).
func NewFailureLog(kv jetstream.KeyValue, destination string) *FailureLog {
	return &FailureLog{kv: kv, destination: destination, maxSent: maxSentBytes / 8, written: map[string]sentRecord{}}
}

func (l *FailureLog) key(seq uint64) string {
	return l.destination + ".seq" + strconv.FormatUint(seq, 10)
}

// Record notes a failure of the event at seq at time now and returns the
// times so far.
func (l *FailureLog) Record(ctx context.Context, seq uint64, now time.Time) (forward.FailureTimes, error) {
	t := forward.FailureTimes{First: now, Last: now}
	if e, err := l.kv.Get(ctx, l.key(seq)); err == nil {
		var prev forward.FailureTimes
		if json.Unmarshal(e.Value(), &prev) == nil && !prev.First.IsZero() {
			t.First = prev.First
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return t, fmt.Errorf("read failure times of event %d: %w", seq, err)
	}
	data, _ := json.Marshal(t)
	if _, err := l.kv.Put(ctx, l.key(seq), data); err != nil {
		return t, fmt.Errorf("record failure of event %d: %w", seq, natsjs.StorageFull(err))
	}
	return t, nil
}

// Forget drops the record of the event at seq (forwarded or dead-lettered).
func (l *FailureLog) Forget(ctx context.Context, seq uint64) error {
	if err := l.kv.Purge(ctx, l.key(seq)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("forget failures of event %d: %w", seq, natsjs.StorageFull(err))
	}
	return nil
}

// sentKey is the key of a study's stored instances: a hash, as a UID may
// not fit a key's characters and length. One key for all the study's
// versions: what names an instance (forward's sentID) tells which
// version's file it was.
func (l *FailureLog) sentKey(ev *events.StudyStable) string {
	h := fnv.New64a()
	for _, s := range []string{ev.Source, ev.StudyInstanceUID} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%s.sent%016x", l.destination, h.Sum64())
}

// uidHash is how an entry of the record is kept: 8 bytes, so a study of
// 120,000 instances fits a JetStream message, 60,000 in buffer mode
// (forward writes each instance's UID alone too), fewer when instances
// are marked perhaps stored (an entry more each).
func uidHash(uid string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(uid))
	return h.Sum64()
}

// maxSentBytes bounds a study's record (960 KB, within JetStream's 1 MB
// message), however many entries an instance writes to it (in buffer
// mode forward writes its UID alone next to its sentID, and a mark of one
// kept; in either mode, 8 bytes more for one marked perhaps stored, sent
// in a request whose answer was not read or before the break of a broken
// body): past it, the entries recorded longest ago are dropped for what
// this write adds (those instances then answer as conflicts). The record
// keeps its entries in the order they were last written, so that those
// of earlier versions and attempts go first, not those this attempt wrote
// in its earlier requests.
const maxSentBytes = 960_000

// rememberAttempts bounds the compare-and-set rounds of RememberSent
// when attempts of the same study version write at once.
const rememberAttempts = 10

// RememberSent adds entries (sentIDs, and whatever else forward names
// an instance by) to those attempts stored of the study (kept with the
// events' retention). It adds to the record by
// compare-and-set: attempts that end at the same moment (two deliveries
// of the study at once) each keep what they stored.
func (l *FailureLog) RememberSent(ctx context.Context, ev *events.StudyStable, sentIDs []string) error {
	key := l.sentKey(ev)
	hashes := make([]uint64, len(sentIDs))
	for i, id := range sentIDs {
		hashes[i] = uidHash(id)
	}
	last, known := l.lastWritten(key)
	for range rememberAttempts {
		var order []uint64
		var rev uint64
		if known {
			order, rev = decodeSent(last.data), last.rev
			known = false // a failed compare-and-set reads the record
		} else {
			var err error
			if order, rev, err = l.sentList(ctx, key); err != nil {
				return err
			}
		}
		data := appendSent(order, hashes, l.maxSent)
		var err error
		if rev == 0 {
			rev, err = l.kv.Create(ctx, key, data)
		} else {
			rev, err = l.kv.Update(ctx, key, data, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue // another attempt wrote it since: add to what it wrote
		}
		if err != nil {
			l.forgetWritten(key)
			return fmt.Errorf("remember %d stored instances of study %s: %w", len(data)/8, ev.StudyInstanceUID, natsjs.StorageFull(err))
		}
		l.keepWritten(key, sentRecord{data: data, rev: rev})
		return nil
	}
	l.forgetWritten(key)
	return fmt.Errorf("remember stored instances of study %s: still conflicting after %d attempts", ev.StudyInstanceUID, rememberAttempts)
}

func (l *FailureLog) lastWritten(key string) (sentRecord, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.written[key]
	return r, ok
}

func (l *FailureLog) keepWritten(key string, r sentRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropWritten(key)
	if len(r.data) > maxWrittenBytes {
		return
	}
	for k := range l.written { // any ones: most belong to finished attempts
		if len(l.written) < maxWritten && l.writtenBytes+len(r.data) <= maxWrittenBytes {
			break
		}
		l.dropWritten(k)
	}
	l.written[key] = r
	l.writtenBytes += len(r.data)
}

func (l *FailureLog) forgetWritten(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropWritten(key)
}

// dropWritten removes key's record from written; l.mu is held.
func (l *FailureLog) dropWritten(key string) {
	l.writtenBytes -= len(l.written[key].data)
	delete(l.written, key)
}

// appendSent returns the record of order (instances, oldest first) with
// hashes written last: one already recorded moves to the end, and past
// most the oldest are dropped.
func appendSent(order, hashes []uint64, most int) []byte {
	fresh := make(map[uint64]bool, len(hashes))
	for _, h := range hashes {
		fresh[h] = true
	}
	kept := make([]uint64, 0, len(order)+len(fresh))
	for _, h := range order {
		if !fresh[h] {
			kept = append(kept, h)
		}
	}
	for _, h := range hashes {
		if fresh[h] {
			kept = append(kept, h)
			delete(fresh, h) // once, if hashes repeats it
		}
	}
	if len(kept) > most {
		kept = kept[len(kept)-most:]
	}
	data := make([]byte, 0, 8*len(kept))
	for _, h := range kept {
		data = binary.BigEndian.AppendUint64(data, h)
	}
	return data
}

// Sent reports the instances attempts stored of the study.
func (l *FailureLog) Sent(ctx context.Context, ev *events.StudyStable) (func(string) bool, error) {
	order, _, err := l.sentList(ctx, l.sentKey(ev))
	if err != nil {
		return nil, err
	}
	set := make(map[uint64]bool, len(order))
	for _, h := range order {
		set[h] = true
	}
	return func(uid string) bool { return set[uidHash(uid)] }, nil
}

// sentList reads a study's stored instances, oldest first, and the
// record's revision (0: none yet).
func (l *FailureLog) sentList(ctx context.Context, key string) ([]uint64, uint64, error) {
	e, err := l.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, 0, nil
	case err != nil:
		return nil, 0, fmt.Errorf("read stored instances: %w", err)
	}
	return decodeSent(e.Value()), e.Revision(), nil
}

// decodeSent reads a record of stored instances: 8 bytes an entry, in
// the order they were written (records written before that order was
// kept are sorted: their instances all count as equally old).
func decodeSent(v []byte) []uint64 {
	order := make([]uint64, 0, len(v)/8)
	for i := 0; i+8 <= len(v); i += 8 {
		order = append(order, binary.BigEndian.Uint64(v[i:]))
	}
	return order
}
