package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
)

// maxScan bounds the messages read backwards to find the n most recent
// entries of a stream with gaps (deleted or overwritten messages).
func maxScan(n int) int { return 20*n + 100 }

// ErrNoLedger is returned by RecentFromLedger when no forwarder records
// completed forwards in the ledger (bucket missing).
var ErrNoLedger = errors.New("status: no ledger of completed forwards")

// RecentFromLedger returns the n most recently completed forwards
// recorded in the ledger bucket (all forwarder replicas, across
// restarts), newest first. It reads the bucket's stream backwards from its
// last message, so its cost does not grow with the ledger.
func RecentFromLedger(ctx context.Context, js jetstream.JetStream, n int) ([]Forward, error) {
	stream, err := js.Stream(ctx, "KV_"+natsjs.LedgerBucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, ErrNoLedger
	}
	if err != nil {
		return nil, fmt.Errorf("ledger bucket %s: %w", natsjs.LedgerBucket, err)
	}
	state := stream.CachedInfo().State
	prefix := "$KV." + natsjs.LedgerBucket + "."
	var out []Forward
	for seq, tries := state.LastSeq, 0; seq >= state.FirstSeq && seq > 0 && len(out) < n && tries < maxScan(n); seq, tries = seq-1, tries+1 {
		msg, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("ledger bucket %s: read %d: %w", natsjs.LedgerBucket, seq, err)
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
		out = append(out, Forward{Source: source, OrthancStudyID: study, StudyInstanceUID: r.StudyInstanceUID,
			LastUpdate: r.LastUpdate, Result: forward.ResultForwarded, FinishedAt: r.ForwardedAt})
	}
	return out, nil
}

// RecentDeadLetters returns up to n dead letters, newest first, and how
// many the stream holds in all.
func RecentDeadLetters(ctx context.Context, js jetstream.JetStream, n int) ([]deadletter.Entry, uint64, error) {
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
	if state.Msgs <= uint64(n) {
		all, err := store.List(ctx, deadletter.Filter{All: true})
		slices.Reverse(all)
		return all, state.Msgs, err
	}
	var out []deadletter.Entry
	for seq, tries := state.LastSeq, 0; seq >= state.FirstSeq && seq > 0 && len(out) < n && tries < maxScan(n); seq, tries = seq-1, tries+1 {
		e, err := store.Get(ctx, seq)
		if errors.Is(err, deadletter.ErrNotFound) {
			continue
		}
		if err != nil {
			return out, state.Msgs, err
		}
		out = append(out, *e)
	}
	return out, state.Msgs, nil
}
