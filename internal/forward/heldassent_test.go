package forward

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// A conflict skipped (STOW_ON_CONFLICT=skip) is kept in the destination's
// ledger, and forwarder audit --kept lists the study. The runbook's fix,
// the archive's copy deleted and the same state of the study forwarded
// again (a backfill), stores it as sent: the study is listed no more. In
// buffer mode the ledger's Kept also keeps the original in the source,
// and a later delivery's word alone does not clear it. Nor does it clear
// one the destination changed (B000, B006) when it first stored it, and
// stores again without a word: its copy is still the changed one.
func TestStoredAsSentClearsWhatTheLedgerKept(t *testing.T) {
	tests := []struct {
		name     string
		first    *sink // the first delivery's destination
		buffer   bool
		wantKept []string // after the backfill
	}{
		{name: "forwarding", first: &sink{failures: map[string]int{"1.2.3.2": 0x0111}}, wantKept: nil},
		{name: "buffer mode", first: &sink{failures: map[string]int{"1.2.3.2": 0x0111}}, buffer: true, wantKept: []string{"1.2.3.2"}},
		{name: "coerced (B000), then stored without a word", first: &sink{warnings: map[string]int{"1.2.3.2": 0xB000}}, wantKept: []string{"1.2.3.2"}},
		{name: "elements discarded (B006), then stored without a word", first: &sink{warnings: map[string]int{"1.2.3.2": 0xB006}}, wantKept: []string{"1.2.3.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			ns := testnats.Start(t)
			kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, natsjs.DefaultDestination)
			if err != nil {
				t.Fatal(err)
			}
			l := ledger.New(ns.JS, kv)
			// The record of stored instances, shared by the deliveries.
			stored := &memFailureLog{}
			ev := testEvent()
			// deliver forwards ev to a destination answering k, and
			// records it in l as the forwarder does.
			deliver := func(k *sink) {
				t.Helper()
				srv := httptest.NewServer(k.handler(nil))
				t.Cleanup(srv.Close)
				f := newForwarder(t, newMemSource(3), srv.URL, nil, func(o *Options) {
					o.Registerer = prometheus.NewRegistry()
					o.Failures = stored
					o.Conflicts = ConflictPolicy{Action: ConflictSkip, Rules: []dicomweb.ConflictRule{{Code: 0x0111, Mask: 0xFFFF}}}
					o.Completed = func(ctx context.Context, ev *events.StudyStable, c Completion) error {
						return l.Completed(ctx, ev, ledger.Outcome{NotSelected: c.NotSelected, Selected: c.Selected, Kept: c.Kept, Replaced: c.Replaced, StoredAsSent: c.StoredAsSent})
					}
					if tt.buffer {
						o.CleanerFor = func(string) (SourceCleaner, error) { return &memCleaner{}, nil }
					}
				})
				rep, err := f.transfer(ctx, &Attempt{Event: ev, Number: 1})
				if err != nil {
					t.Fatal(err)
				}
				if recorded, _ := f.recordCompletion(ctx, ev, rep, slog.New(slog.DiscardHandler)); !recorded {
					t.Fatal("not recorded in the ledger")
				}
			}
			kept := func() []string {
				t.Helper()
				var uids []string
				if _, err := ledger.ListKept(ctx, "default", l, time.Time{}, func(k ledger.KeptStudy) error {
					uids = append(uids, k.Kept...)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				return uids
			}
			deliver(tt.first)
			if got := kept(); !slices.Equal(got, []string{"1.2.3.2"}) {
				t.Fatalf("after the first delivery, audit --kept lists %v, want [1.2.3.2]", got)
			}
			deliver(&sink{})
			if got := kept(); !slices.Equal(got, tt.wantKept) {
				t.Errorf("after the backfill stored it without a word, audit --kept lists %v, want %v", got, tt.wantKept)
			}
		})
	}
}
