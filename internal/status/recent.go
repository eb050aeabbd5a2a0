package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
)

// maxScan bounds the messages read backwards to find the n most recent
// entries of a stream with gaps (deleted or overwritten messages).
func maxScan(n int) int { return 20*n + 100 }

// ErrNoLedger is returned by ReadLedgers when no forwarder records
// completed forwards in a ledger (no ledger bucket).
var ErrNoLedger = errors.New("status: no ledger of completed forwards")

// DestinationLedger is what one destination's ledger says of its recent
// forwards.
type DestinationLedger struct {
	Destination string
	// Recent holds its newest records, newest first; a record of a study
	// the destination's rules selected nothing of has the result
	// forward.ResultNotSelected.
	Recent []Forward
	// LastForwarded is when the newest record that sent something (not
	// "not selected") was written; zero if none was within reach.
	LastForwarded time.Time
	// Read counts the records read, and OlderUnread says the read
	// stopped at its bound (maxScan) with older records left: a zero
	// LastForwarded then means only that the newest Read records are all
	// "not selected", not that the ledger has no forward.
	Read        int
	OlderUnread bool
}

// ReadLedgers returns the n newest records of each destination's ledger
// bucket (natsjs.LedgerBucketOf: every forwarder replica, across
// restarts), sorted by destination. It reads each bucket's stream
// backwards from its last message, so its cost does not grow with the
// ledger. A bucket that cannot be read is left out and named in the
// error, with the others returned.
func ReadLedgers(ctx context.Context, js jetstream.JetStream, n int) ([]DestinationLedger, error) {
	var buckets []string
	names := js.KeyValueStoreNames(ctx)
	for name := range names.Name() {
		if _, ok := natsjs.DestinationOfLedgerBucket(name); ok {
			buckets = append(buckets, name)
		}
	}
	if err := names.Error(); err != nil {
		return nil, fmt.Errorf("list key-value buckets: %w", err)
	}
	if len(buckets) == 0 {
		return nil, ErrNoLedger
	}
	var out []DestinationLedger
	var errs []error
	for _, bucket := range buckets {
		l, err := readLedger(ctx, js, bucket, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b DestinationLedger) int { return strings.Compare(a.Destination, b.Destination) })
	return out, errors.Join(errs...)
}

// readLedger reads one bucket's n newest records; when they are all "not
// selected", it reads on (within maxScan) for LastForwarded.
func readLedger(ctx context.Context, js jetstream.JetStream, bucket string, n int) (DestinationLedger, error) {
	dest, _ := natsjs.DestinationOfLedgerBucket(bucket)
	l := DestinationLedger{Destination: dest}
	stream, err := js.Stream(ctx, "KV_"+bucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return l, nil // deleted since it was listed
	}
	if err != nil {
		return l, fmt.Errorf("ledger bucket %s: %w", bucket, err)
	}
	state := stream.CachedInfo().State
	prefix := "$KV." + bucket + "."
	seq, tries := state.LastSeq, 0
	for ; seq >= state.FirstSeq && seq > 0 && (len(l.Recent) < n || l.LastForwarded.IsZero()) && tries < maxScan(n); seq, tries = seq-1, tries+1 {
		msg, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return l, fmt.Errorf("ledger bucket %s: read %d: %w", bucket, seq, err)
		}
		if op := msg.Header.Get("KV-Operation"); op != "" { // DEL or PURGE
			continue
		}
		key, ok := strings.CutPrefix(msg.Subject, prefix)
		if !ok {
			continue
		}
		source, study, _ := strings.Cut(key, ".")
		var r ledger.Record
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			continue
		}
		f := Forward{Destination: dest, Source: source, OrthancStudyID: study, StudyInstanceUID: r.StudyInstanceUID,
			LastUpdate: r.LastUpdate, Result: forward.ResultForwarded, FinishedAt: r.ForwardedAt}
		l.Read++
		if r.NotSelected {
			f.Result = forward.ResultNotSelected
		} else if l.LastForwarded.IsZero() {
			l.LastForwarded = r.ForwardedAt
		}
		if len(l.Recent) < n {
			l.Recent = append(l.Recent, f)
		}
	}
	l.OlderUnread = l.LastForwarded.IsZero() && tries == maxScan(n) && seq >= state.FirstSeq && seq > 0
	return l, nil
}

// NewestForwards merges the ledgers' records: the n newest over every
// destination, newest first.
func NewestForwards(ledgers []DestinationLedger, n int) []Forward {
	var all []Forward
	for _, l := range ledgers {
		all = append(all, l.Recent...)
	}
	slices.SortStableFunc(all, func(a, b Forward) int { return b.FinishedAt.Compare(a.FinishedAt) })
	return all[:min(len(all), n)]
}

// RecentDeadLetters returns the summaries of up to n dead letters,
// newest first, read from their headers (deadletter.Store.Newest: not
// their failed instances, up to half a megabyte a letter), and how many
// the stream holds in all.
func RecentDeadLetters(ctx context.Context, js jetstream.JetStream, n int) ([]deadletter.Summary, uint64, error) {
	stream, err := js.Stream(ctx, natsjs.DeadLetterStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("stream %s: %w", natsjs.DeadLetterStream, err)
	}
	state := stream.CachedInfo().State
	if state.Msgs == 0 {
		return nil, 0, nil
	}
	store, err := deadletter.Open(ctx, js)
	if err != nil {
		return nil, state.Msgs, err
	}
	out, err := store.Newest(ctx, n)
	return out, state.Msgs, err
}
