package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
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
// selected", it reads on (within maxScan sequences) for LastForwarded. It
// reads batches of records, a request each (batchGet): the newest 2n
// sequences, then the rest of the bound if it needs more. It read one
// record a request, up to maxScan of them for a destination whose rules
// select few studies, and a page load waited for all of them.
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
	info := stream.CachedInfo()
	state := info.State
	if state.Msgs == 0 || state.LastSeq == 0 {
		return l, nil
	}
	prefix := "$KV." + bucket + "."
	// add takes the next older message, and reports whether the read is
	// done: n records, and the last forward among them or behind.
	add := func(msg *jetstream.RawStreamMsg) bool {
		key, ok := strings.CutPrefix(msg.Subject, prefix)
		if op := msg.Header.Get("KV-Operation"); !ok || op != "" { // DEL or PURGE
			return false
		}
		source, study, _ := strings.Cut(key, ".")
		var r ledger.Record
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			return false
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
		return len(l.Recent) >= n && !l.LastForwarded.IsZero()
	}
	// The bound is on sequences: a record written again left a gap.
	bound := uint64(maxScan(n))
	lowest := state.FirstSeq
	if state.LastSeq-state.FirstSeq >= bound {
		lowest = state.LastSeq - bound + 1
	}
	done := false
	for to, span := state.LastSeq, uint64(2*max(n, 1)); !done && to >= lowest; span = bound {
		from := lowest
		if to-lowest >= span {
			from = to - span + 1
		}
		var msgs []*jetstream.RawStreamMsg
		batched := false
		if info.Config.AllowDirect {
			if msgs, batched, err = batchGet(ctx, js.Conn(), info.Config.Name, from, int(to-from+1)); err != nil {
				return l, fmt.Errorf("ledger bucket %s: read %d to %d: %w", bucket, from, to, err)
			}
		}
		if !batched {
			// A server without batch gets (before NATS 2.11): a request
			// a record, as far as needed.
			for seq := to; seq >= lowest && !done; seq-- {
				msg, err := stream.GetMsg(ctx, seq)
				if errors.Is(err, jetstream.ErrMsgNotFound) {
					continue
				}
				if err != nil {
					return l, fmt.Errorf("ledger bucket %s: read %d: %w", bucket, seq, err)
				}
				done = add(msg)
			}
			break
		}
		// Newest first; a batch may run past to where from..to has gaps.
		for i := len(msgs) - 1; i >= 0 && !done; i-- {
			if msgs[i].Sequence <= to {
				done = add(msgs[i])
			}
		}
		to = from - 1
	}
	l.OlderUnread = l.LastForwarded.IsZero() && lowest > state.FirstSeq
	return l, nil
}

// batchGetTimeout bounds one batch read.
const batchGetTimeout = 5 * time.Second

// batchGet returns up to batch messages of stream from sequence from on,
// oldest first, read with one batch direct get (NATS 2.11 and later;
// $JS.API.DIRECT.GET.<stream>, the permission a single direct get
// needs). ok is false where the server answered as to a single get (an
// older server, or a replica of one in a cluster being upgraded): the
// caller then reads one message at a time.
func batchGet(ctx context.Context, nc *nats.Conn, stream string, from uint64, batch int) (msgs []*jetstream.RawStreamMsg, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, batchGetTimeout)
	defer cancel()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, false, fmt.Errorf("batch get: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, err := json.Marshal(struct {
		Seq   uint64 `json:"seq"`
		Batch int    `json:"batch"`
	}{from, batch})
	if err != nil {
		return nil, false, err
	}
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
		return nil, false, fmt.Errorf("batch get: %w", err)
	}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil, false, fmt.Errorf("batch get: %w", err)
		}
		switch status := m.Header.Get("Status"); status {
		case "":
		case "204": // the batch's end
			return msgs, true, nil
		case "404", "503":
			// No message from `from` on, which a newer server answers only
			// past the stream's last message, never asked for here: an older
			// server's answer for a deleted one. No responders: no direct
			// gets.
			return nil, false, nil
		default:
			return nil, false, fmt.Errorf("batch get: %s %s", status, m.Header.Get("Description"))
		}
		if m.Header.Get("Nats-Num-Pending") == "" {
			return nil, false, nil // an older server's single get
		}
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return nil, false, fmt.Errorf("batch get: sequence %q: %w", m.Header.Get(jetstream.SequenceHeader), err)
		}
		at, _ := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
		msgs = append(msgs, &jetstream.RawStreamMsg{Subject: m.Header.Get(jetstream.SubjectHeader), Sequence: seq,
			Header: m.Header, Data: m.Data, Time: at})
	}
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
