package ledger_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

const studyID = "27f7126f-4f66fb14-03f4081b-f9341db2-53925988"

func event(source, lastUpdate string) *events.StudyStable {
	return &events.StudyStable{
		Type: events.TypeStudyStable, Version: events.Version, Source: source,
		OrthancStudyID: studyID, StudyInstanceUID: "1.2.3.4", LastUpdate: lastUpdate,
	}
}

func TestRecordAndLookup(t *testing.T) {
	ns := testnats.Start(t)
	ctx := context.Background()

	if _, err := ledger.Open(ctx, ns.JS, natsjs.DefaultDestination); !errors.Is(err, ledger.ErrNoBucket) {
		t.Fatalf("Open before any forwarder ran: err = %v, want ErrNoBucket", err)
	}
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	ledgerKV, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, natsjs.DefaultDestination)
	l := ledger.New(ns.JS, ledgerKV, ledger.WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Lookup(ctx, "a", studyID); !errors.Is(err, ledger.ErrNotRecorded) {
		t.Fatalf("Lookup of an unknown study: err = %v, want ErrNotRecorded", err)
	}

	steps := []struct {
		name   string
		source string
		lu     string
		want   string // LastUpdate recorded for source "a" afterwards
	}{
		{"first forward", "a", "20261126T100000", "20261126T100000"},
		{"study changed and forwarded again", "a", "20261126T110000", "20261126T110000"},
		{"late event of an older state", "a", "20261126T090000", "20261126T110000"},
		{"same study ID in another source", "b", "20261126T080000", "20261126T110000"},
	}
	for _, s := range steps {
		before := time.Now()
		if err := l.Record(ctx, event(s.source, s.lu)); err != nil {
			t.Fatalf("%s: Record: %v", s.name, err)
		}
		r, err := l.Lookup(ctx, "a", studyID)
		if err != nil {
			t.Fatalf("%s: Lookup: %v", s.name, err)
		}
		if r.LastUpdate != s.want || !r.ForwardedAt.Equal(now) || r.StudyInstanceUID != "1.2.3.4" {
			t.Errorf("%s: record = %+v, want LastUpdate %s", s.name, r, s.want)
		}
		// Stored is the server's time (this host's here), not the
		// forwarder's clock, which WithClock sets days back.
		if s.want == s.lu && (r.Stored.Before(before.Add(-time.Second)) || r.Stored.After(time.Now().Add(time.Second))) {
			t.Errorf("%s: Stored = %v, want the server's time of the write (about %v)", s.name, r.Stored, before)
		}
	}
	if r, err := l.Lookup(ctx, "b", studyID); err != nil || r.LastUpdate != "20261126T080000" {
		t.Errorf("source b: %+v, %v", r, err)
	}

	// Another process opens the same bucket without changing it.
	o, err := ledger.Open(ctx, ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := o.Lookup(ctx, "a", studyID); err != nil || r.LastUpdate != "20261126T110000" {
		t.Errorf("Open: %+v, %v", r, err)
	}
}

func TestConcurrentRecordsKeepTheNewest(t *testing.T) {
	ctx := context.Background()
	l := ledger.New(ledger.NewTestBucket(t))
	lus := []string{"20261126T100001", "20261126T100005", "20261126T100003", "20261126T100002", "20261126T100004"}
	var wg sync.WaitGroup
	errs := make(chan error, len(lus))
	for _, lu := range lus {
		wg.Go(func() { errs <- l.Record(ctx, event("a", lu)) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if r, err := l.Lookup(ctx, "a", studyID); err != nil || r.LastUpdate != "20261126T100005" {
		t.Errorf("after concurrent records: %+v, %v; want the newest LastUpdate", r, err)
	}
}

func TestRecordRefusesInvalidKeys(t *testing.T) {
	l := ledger.New(ledger.NewTestBucket(t))
	ev := event("a.b", "20261126T100000")
	if err := l.Record(context.Background(), ev); err == nil {
		t.Error("a source with a dot must not become a key")
	}
}

// A second delivery of the same study state (an ack not confirmed, a
// duplicate event, a backfill) finds what the first stored already and
// keeps none of it: its record must not erase what the first kept, or
// buffer mode deletes the originals of instances the destination
// changed. A newer state starts afresh.
func TestSameStateKeepsWhatWasKept(t *testing.T) {
	const lu, newer = "20261126T100000", "20261126T110000"
	selected := []orthancapi.Instance{{ID: "i1", SOPInstanceUID: "1.1"}, {ID: "i2", SOPInstanceUID: "1.2"}}
	many := make([]string, 1001) // past the record's bound: every instance kept
	for i := range many {
		many[i] = fmt.Sprintf("1.9.%d", i)
	}
	forwarded := func(kept ...string) ledger.Outcome { return ledger.Outcome{Selected: selected, Kept: kept} }
	// uids are kept UIDs from to to (not included), in the order a
	// record sorts them.
	uids := func(from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, fmt.Sprintf("1.8.%04d", i))
		}
		return out
	}
	tests := []struct {
		name        string
		first, then ledger.Outcome
		thenLU      string
		wantKept    []string
		wantKeptAll bool
		wantNotSel  bool
	}{
		{"kept, then nothing kept", forwarded("1.1"), forwarded(), lu, []string{"1.1"}, false, false},
		{"kept, then another kept", forwarded("1.2"), forwarded("1.1"), lu, []string{"1.1", "1.2"}, false, false},
		{"kept, then the same kept", forwarded("1.1"), forwarded("1.1"), lu, []string{"1.1"}, false, false},
		{"all kept, then nothing kept", forwarded(many...), forwarded(), lu, nil, true, false},
		// The bound holds a list as long as it, by one record or two.
		{"as many kept as the bound, then nothing kept", forwarded(uids(0, 1000)...), forwarded(), lu, uids(0, 1000), false, false},
		{"kept, then more up to the bound", forwarded(uids(0, 600)...), forwarded(uids(600, 1000)...), lu, uids(0, 1000), false, false},
		{"kept, then more past the bound", forwarded(uids(0, 501)...), forwarded(uids(500, 1001)...), lu, nil, true, false},
		// A redelivery after an ack not confirmed, buffer mode having
		// deleted what was selected: the record of the forward stays.
		{"kept, then not selected", forwarded("1.1"), ledger.Outcome{NotSelected: true}, lu, []string{"1.1"}, false, false},
		{"kept, then not selected in a newer state", forwarded("1.1"), ledger.Outcome{NotSelected: true}, newer, nil, false, true},
		// Not selected twice (a redelivery, or another destination's
		// forwarder recording it first): nothing was forwarded, so no
		// ErrForwardedBefore.
		{"not selected, then not selected again", ledger.Outcome{NotSelected: true, Rules: "r1"}, ledger.Outcome{NotSelected: true}, lu, nil, false, true},
		{"kept, then a newer state", forwarded("1.1"), forwarded(), newer, nil, false, false},
		// A conflict skipped, then replaced (STOW_ON_CONFLICT switched
		// to replace, a backfill): the destination holds it as sent.
		{"kept, then replaced", forwarded("1.1", "1.2"), ledger.Outcome{Selected: selected, Replaced: []string{"1.1"}}, lu, []string{"1.2"}, false, false},
		{"kept, then replaced and kept (a warning)", forwarded("1.1"), ledger.Outcome{Selected: selected, Kept: []string{"1.1"}, Replaced: []string{"1.1"}}, lu, []string{"1.1"}, false, false},
		// A conflict skipped, then deleted in the archive by the operator
		// and stored by a backfill of the same state: held as sent.
		{"kept, then stored as sent", forwarded("1.1"), ledger.Outcome{Selected: selected, StoredAsSent: []string{"1.1", "1.2"}}, lu, nil, false, false},
		{"two kept, then one stored as sent", forwarded("1.1", "1.2"), ledger.Outcome{Selected: selected, StoredAsSent: []string{"1.1"}}, lu, []string{"1.2"}, false, false},
		{"kept, then another stored as sent", forwarded("1.1"), ledger.Outcome{Selected: selected, StoredAsSent: []string{"1.2"}}, lu, []string{"1.1"}, false, false},
		{"all kept, then stored as sent", forwarded(many...), ledger.Outcome{Selected: selected, StoredAsSent: []string{"1.1", "1.2"}}, lu, nil, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			l := ledger.New(ledger.NewTestBucket(t))
			if err := l.Completed(ctx, event("a", lu), tt.first); err != nil {
				t.Fatal(err)
			}
			err := l.Completed(ctx, event("a", tt.thenLU), tt.then)
			if wantErr := tt.then.NotSelected && !tt.first.NotSelected && tt.thenLU == lu; errors.Is(err, ledger.ErrForwardedBefore) != wantErr || err != nil && !wantErr {
				t.Fatalf("second Completed = %v, want ErrForwardedBefore: %v", err, wantErr)
			}
			r, err := l.Lookup(ctx, "a", studyID)
			if err != nil {
				t.Fatal(err)
			}
			if r.LastUpdate != tt.thenLU || !slices.Equal(r.Kept, tt.wantKept) || r.KeptAll != tt.wantKeptAll || r.NotSelected != tt.wantNotSel {
				t.Errorf("record %s kept %v (all: %v, not selected: %v); want %s kept %v (all: %v, not selected: %v)",
					r.LastUpdate, r.Kept, r.KeptAll, r.NotSelected, tt.thenLU, tt.wantKept, tt.wantKeptAll, tt.wantNotSel)
			}
		})
	}
}

// The reads that decide buffer mode's deletes (Lookup, and Completed's
// compare-and-set) go to the leader of the bucket's stream
// ($JS.API.STREAM.MSG.GET), never as direct gets, which any replica
// nearly current answers on a cluster: a follower that had not applied a
// write yet answered with the record before it (two destinations
// finishing a study at once each read the other's older record, and
// neither deleted it; a study buffer mode deleted read as not recorded).
// A deleted key reads as not recorded, and is recorded again over its
// delete marker.
func TestReadsComeFromTheStreamLeader(t *testing.T) {
	ns := testnats.Start(t)
	ctx := t.Context()
	kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	// Every JetStream API request, as the server gets it.
	sub, err := ns.NC.SubscribeSync("$JS.API.>")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := ns.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	l := ledger.New(ns.JS, kv)
	ev := event("a", "20261126T100000")
	if err := l.Completed(ctx, ev, ledger.Outcome{}); err != nil {
		t.Fatal(err)
	}
	if r, err := l.Lookup(ctx, "a", studyID); err != nil || r.LastUpdate != ev.LastUpdate {
		t.Fatalf("Lookup: %+v, %v", r, err)
	}
	if err := kv.Delete(ctx, ledger.Key("a", studyID)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Lookup(ctx, "a", studyID); !errors.Is(err, ledger.ErrNotRecorded) {
		t.Fatalf("Lookup of a deleted record: err = %v, want ErrNotRecorded", err)
	}
	if err := l.Completed(ctx, ev, ledger.Outcome{}); err != nil {
		t.Fatalf("Completed over a deleted record: %v", err)
	}
	if r, err := l.Lookup(ctx, "a", studyID); err != nil || r.LastUpdate != ev.LastUpdate {
		t.Fatalf("Lookup after recording again: %+v, %v", r, err)
	}
	// The server delivers each request to sub as it takes it: once it
	// answered the ping, every request is in sub's queue.
	if err := ns.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	leaderGets := 0
	for {
		m, err := sub.NextMsg(10 * time.Millisecond)
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch subj := m.Subject; {
		case strings.HasPrefix(subj, "$JS.API.DIRECT.GET."):
			t.Errorf("direct get %s: any replica may answer it", subj)
		case subj == "$JS.API.STREAM.MSG.GET.KV_"+kv.Bucket():
			leaderGets++
		}
	}
	// Completed reads once, Lookup once: 3 Lookups, 2 Completed.
	if leaderGets != 5 {
		t.Errorf("%d reads from the stream leader, want 5", leaderGets)
	}
}

// A write its NATS user may not publish is refused by nats-server only
// asynchronously: the write times out as in a leader election, which
// callers wait through. The ledger returns the refusal instead, so
// buffer mode's worker is not held for it (docs/nats-permissions.md).
func TestWriteRefusedByPermissions(t *testing.T) {
	const pass = "reader-nats-password-0123"
	ns := testnats.StartWith(t, func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "admin", Password: "admin-nats-password-0123"},
			{Username: "reader", Password: pass, Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
			}},
		}
		o.NoAuthUser = "admin"
	})
	if _, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, "ai"); err != nil {
		t.Fatal(err)
	}
	nc, err := ns.Connect(nats.UserInfo("reader", pass), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	l, err := ledger.Open(t.Context(), js, "ai")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Lookup(t.Context(), "a", studyID); !errors.Is(err, ledger.ErrNotRecorded) {
		t.Fatalf("Lookup: %v, want ErrNotRecorded (the user may read)", err)
	}
	err = l.Completed(t.Context(), event("a", "20261126T100000"), ledger.Outcome{NotSelected: true})
	if !errors.Is(err, nats.ErrPermissionViolation) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("write refused: err = %v, want a permissions violation, not a time-out", err)
	}
	if !strings.Contains(err.Error(), "$KV.") {
		t.Errorf("err %q does not name the subject to grant", err)
	}
	// The connection's last error keeps that refusal until a reconnect
	// (a permission granted by a reload leaves it): a later write that
	// times out with no refusal of its own is JetStream not answering.
	kv, err := js.KeyValue(t.Context(), natsjs.LedgerBucketOf("ai"))
	if err != nil {
		t.Fatal(err)
	}
	stalled := ledger.New(js, stallingKV{kv})
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	err = stalled.Completed(ctx, event("a", "20261126T100000"), ledger.Outcome{NotSelected: true})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrPermissionViolation) {
		t.Errorf("write timed out after the refusal: err = %v, want the time-out, not the earlier refusal", err)
	}
}

// stallingKV is a bucket whose writes get no answer, as during a leader
// election.
type stallingKV struct{ jetstream.KeyValue }

func (stallingKV) Create(ctx context.Context, _ string, _ []byte, _ ...jetstream.KVCreateOpt) (uint64, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

func (stallingKV) Update(ctx context.Context, _ string, _ []byte, _ uint64) (uint64, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

// A record dated more than a day after the forwarder's clock was stamped
// by an Orthanc whose clock ran ahead (or a forged event): kept, it would
// stand for every later change of the study up to that date. A later
// forward of a state within the day moves it back, and says so; a record
// within the day, or in the past, still never moves back, nor one far
// ahead to a state also far ahead.
func TestRecordFarAheadMovesBack(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	stamp := func(d time.Duration) string { return now.Add(d).Format("20060102T150405") }
	tests := []struct {
		name, recorded, then, want string
		warned                     bool
	}{
		{"30 days ahead", stamp(30 * 24 * time.Hour), stamp(0), stamp(0), true},
		{"in year 9999", "99991231T235959", stamp(-time.Hour), stamp(-time.Hour), true},
		{"25 hours ahead, then a state also ahead", stamp(25 * time.Hour), stamp(2 * time.Hour), stamp(2 * time.Hour), true},
		{"23 hours ahead", stamp(23 * time.Hour), stamp(0), stamp(23 * time.Hour), false},
		// The Orthanc clock still ahead: an older attempt finishing late
		// (a retry, another replica) is no mended state.
		{"30 days ahead, then an older state also far ahead", stamp(30 * 24 * time.Hour), stamp(29 * 24 * time.Hour), stamp(30 * 24 * time.Hour), false},
		{"newer, in the past", stamp(-time.Hour), stamp(-2 * time.Hour), stamp(-time.Hour), false},
		{"older", stamp(-2 * time.Hour), stamp(-time.Hour), stamp(-time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			var logs bytes.Buffer
			js, kv := ledger.NewTestBucket(t)
			l := ledger.New(js, kv, ledger.WithClock(func() time.Time { return now }),
				ledger.WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))
			if err := l.Completed(ctx, event("a", tt.recorded), ledger.Outcome{}); err != nil {
				t.Fatal(err)
			}
			if err := l.Completed(ctx, event("a", tt.then), ledger.Outcome{}); err != nil {
				t.Fatal(err)
			}
			r, err := l.Lookup(ctx, "a", studyID)
			if err != nil {
				t.Fatal(err)
			}
			if r.LastUpdate != tt.want {
				t.Errorf("record at %s, want %s", r.LastUpdate, tt.want)
			}
			warned := strings.Contains(logs.String(), `"level":"WARN"`) && strings.Contains(logs.String(), `"recorded_last_update":"`+tt.recorded+`"`)
			if warned != tt.warned {
				t.Errorf("warned %v, want %v; log: %s", warned, tt.warned, logs.String())
			}
		})
	}
}
