package deadletter

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
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

	// written holds the records of stored instances this process wrote
	// last, with their revisions: an attempt adds to its study's record
	// as each request is answered, and the next write then skips reading
	// the record back (a JetStream round trip). An entry another writer
	// made stale only fails the compare-and-set, and the record is read.
	mu      sync.Mutex
	written map[string]sentRecord

	maxSent int // instances a part of a record holds: maxSent
}

// sentRecord is a record of stored instances as written, at revision rev.
type sentRecord struct {
	data []byte
	rev  uint64
}

// maxWritten and maxWrittenBytes bound FailureLog.written: the studies
// being forwarded at once, each up to 8,192 instances (larger records
// are read back).
const (
	maxWritten      = 64
	maxWrittenBytes = 64 << 10
)

// NewFailureLog returns the destination's log kept in kv
// (natsjs.Topology.EnsureFailureLog).
func NewFailureLog(kv jetstream.KeyValue, destination string) *FailureLog {
	return &FailureLog{kv: kv, destination: destination, written: map[string]sentRecord{}, maxSent: maxSent}
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

// uidHash is how an instance's ID is kept: 8 bytes, so a study of
// 100,000 instances fits a JetStream message.
func uidHash(uid string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(uid))
	return h.Sum64()
}

// maxSent bounds a part of a study's record (960 KB, within JetStream's
// 1 MB message); a record past it goes on in the next part (key.2,
// key.3...), up to maxSentParts. It once started again from nothing
// instead, mid-attempt too: an attempt that crossed it (a study of more
// than 120,000 instances, or one whose earlier versions filled the
// record) lost what its own earlier requests had stored, and a later
// delivery took those copies for conflicts.
const (
	maxSent      = 120_000
	maxSentParts = 16
)

// rememberAttempts bounds the compare-and-set rounds of RememberSent
// when attempts of the same study version write at once.
const rememberAttempts = 10

// sentPart is the study's record as read: all its parts' instances, and
// the part written to next (last, its instances and revision; rev 0: not
// written yet).
type sentPart struct {
	all  map[uint64]bool
	last int
	part map[uint64]bool
	rev  uint64
}

func sentPartKey(key string, i int) string {
	if i == 0 {
		return key
	}
	return key + "." + strconv.Itoa(i+1)
}

// RememberSent adds instances to those attempts stored of the study
// (kept with the events' retention). It adds to the record by
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
		var r sentPart
		if known {
			// Kept only for a record of one part with room left.
			r = sentPart{all: decodeSent(last.data), part: decodeSent(last.data), rev: last.rev}
			known = false // a failed compare-and-set reads the record
		} else {
			var err error
			if r, err = l.readSent(ctx, key); err != nil {
				return err
			}
		}
		// Instances already in the record (the study sent again) take no
		// more room.
		var fresh []uint64
		for _, h := range hashes {
			if !r.all[h] {
				r.all[h] = true
				fresh = append(fresh, h)
			}
		}
		i, part, rev := r.last, r.part, r.rev
		var data []byte
		conflict := false
		// The last part is written even with nothing to add: the write
		// keeps the record from expiring while the study is sent again.
		for first := true; first || len(fresh) > 0; first = false {
			if len(fresh) == 0 && (i >= maxSentParts || (i > 0 && rev == 0)) {
				break // the last part is full: no new one for nothing
			}
			if i >= maxSentParts {
				l.forgetWritten(key)
				return fmt.Errorf("remember stored instances of study %s: its record is full (%d instances), %d not kept: a later delivery takes those for conflicts", ev.StudyInstanceUID, maxSentParts*l.maxSent, len(fresh))
			}
			n := min(max(l.maxSent-len(part), 0), len(fresh))
			for _, h := range fresh[:n] {
				part[h] = true
			}
			fresh = fresh[n:]
			data = make([]byte, 0, 8*len(part))
			for _, h := range slices.Sorted(maps.Keys(part)) {
				data = binary.BigEndian.AppendUint64(data, h)
			}
			var err error
			if rev == 0 {
				rev, err = l.kv.Create(ctx, sentPartKey(key, i), data)
			} else {
				rev, err = l.kv.Update(ctx, sentPartKey(key, i), data, rev)
			}
			if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				conflict = true // another attempt wrote it since: add to what it wrote
				break
			}
			if err != nil {
				l.forgetWritten(key)
				return fmt.Errorf("remember %d stored instances of study %s: %w", len(r.all), ev.StudyInstanceUID, natsjs.StorageFull(err))
			}
			if len(fresh) > 0 {
				i, part, rev = i+1, map[uint64]bool{}, 0
			}
		}
		if conflict {
			continue
		}
		if data != nil {
			if i == 0 && len(part) < l.maxSent {
				l.keepWritten(key, sentRecord{data: data, rev: rev})
			} else {
				l.forgetWritten(key)
			}
		}
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
	if len(r.data) > maxWrittenBytes {
		delete(l.written, key)
		return
	}
	if _, ok := l.written[key]; !ok && len(l.written) >= maxWritten {
		for k := range l.written { // any one: most belong to finished attempts
			delete(l.written, k)
			break
		}
	}
	l.written[key] = r
}

func (l *FailureLog) forgetWritten(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.written, key)
}

// Sent reports the instances attempts stored of the study.
func (l *FailureLog) Sent(ctx context.Context, ev *events.StudyStable) (func(string) bool, error) {
	r, err := l.readSent(ctx, l.sentKey(ev))
	if err != nil {
		return nil, err
	}
	return func(uid string) bool { return r.all[uidHash(uid)] }, nil
}

// readSent reads a study's record, part after full part. A part that
// expired before the next (each is kept from its last write) hides the
// next until it is written again.
func (l *FailureLog) readSent(ctx context.Context, key string) (sentPart, error) {
	r := sentPart{all: map[uint64]bool{}}
	for i := range maxSentParts {
		e, err := l.kv.Get(ctx, sentPartKey(key, i))
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			r.last, r.part = i, map[uint64]bool{}
			return r, nil
		case err != nil:
			return sentPart{}, fmt.Errorf("read stored instances: %w", err)
		}
		part := decodeSent(e.Value())
		maps.Copy(r.all, part)
		if len(part) < l.maxSent {
			r.last, r.part, r.rev = i, part, e.Revision()
			return r, nil
		}
	}
	r.last = maxSentParts // full
	return r, nil
}

// decodeSent reads a record of stored instances: 8 bytes an instance.
func decodeSent(v []byte) map[uint64]bool {
	set := make(map[uint64]bool, len(v)/8)
	for i := 0; i+8 <= len(v); i += 8 {
		set[binary.BigEndian.Uint64(v[i:])] = true
	}
	return set
}
