package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// TestAuditRepairsGoInTheLowLane: `forwarder audit --enqueue` queued the
// event for every destination in the routine lane, so after a first
// start on an archive the live routine studies waited behind it. Its
// repairs, for every destination and for one, now go in the low lane
// (docs/priority-lanes.md); the event for every destination keeps the
// study's dedupe ID, so the webhook's copy of it is still dropped.
func TestAuditRepairsGoInTheLowLane(t *testing.T) {
	ns := testnats.Start(t)
	ctx := t.Context()
	lanes, err := natsjs.DefaultTopology().EnsureLanes(ctx, ns.JS, []string{"ai"})
	if err != nil {
		t.Fatal(err)
	}
	publish := auditPublish(ns.JS, nil, events.PriorityLow, false)
	for destination, id := range map[string]string{
		"":   "27f7126f-4f66fb14-03f4081b-f9341db2-53925988",
		"ai": "27f7126f-4f66fb14-03f4081b-f9341db2-53925989",
	} {
		ev, err := events.NewStudyStable("main", id, "1.2.3", "20261126T101500")
		if err != nil {
			t.Fatal(err)
		}
		if ack, err := publish(ctx, destination, ev); err != nil || ack.Duplicate {
			t.Fatalf("destination %q: ack %+v, err %v", destination, ack, err)
		}
		if destination != "" {
			continue
		}
		// The webhook's copy, routine, names no priority.
		ack, err := natsjs.Publisher{JS: ns.JS}.Publish(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		if !ack.Duplicate {
			t.Errorf("the webhook's copy of the audit's event was stored again (seq %d): the dedupe ID depends on the lane", ack.Sequence)
		}
	}
	waitPending(t, lanes["ai"], map[events.Priority]uint64{events.PriorityStat: 0, events.PriorityRoutine: 0, events.PriorityLow: 2})
}

// waitPending waits until the lanes' consumers count want pending
// events, all at once: the server counts a stored event for its
// consumers after it acknowledged it.
func waitPending(t *testing.T, lanes map[events.Priority]jetstream.Consumer, want map[events.Priority]uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := map[events.Priority]uint64{}
		for lane := range want {
			info, err := lanes[lane].Info(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			got[lane] = info.NumPending
		}
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("events pending by lane: %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAuditRefusesItsCommandLine: the plain audit took --since and
// audited every study all the same, and took --destination "" (a
// script's unset variable) for every destination; both are refused,
// naming the flag.
func TestAuditRefusesItsCommandLine(t *testing.T) {
	// Nothing to reach: a refused command line stops before any
	// connection.
	env := map[string]string{"NATS_URL": "nats://127.0.0.1:1", "ORTHANC_URL": "http://127.0.0.1:1"}
	for _, tt := range []struct {
		args  []string
		names string
	}{
		{[]string{"--since", "7d"}, "--since"},
		{[]string{"--since", "7d", "--enqueue"}, "--since"},
		{[]string{"--destination", "ai", "--since=36h"}, "--since"},
		{[]string{"--destination", "", "--enqueue"}, "--destination: empty"},
		{[]string{"--destination=", "--verify"}, "--destination: empty"},
		{[]string{"--enqueue", "--priority", ""}, "--priority: empty"},
		{[]string{"--enqueue", "--priority", "urgent"}, "--priority"},
		{[]string{"--priority", "routine"}, "--priority works only with --enqueue"},
		{[]string{"--verify", "--destination", "ai", "--priority", "stat"}, "--priority works only with --enqueue"},
		{[]string{"--kept", "--enqueue"}, "--kept lists only"},
		{[]string{"--kept", "--verify", "--destination", "ai"}, "--kept lists only"},
		{[]string{"--kept", "--since", "yesterday"}, "--since"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			err := RunAudit(t.Context(), tt.args, func(k string) string { return env[k] }, io.Discard, io.Discard)
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.names) {
				t.Errorf("err = %v, want a usage error naming %s", err, tt.names)
			}
		})
	}
}

// TestAuditRequeuesForOneDestination: the audit's event for one
// destination had a fixed dedupe ID, so a second run within
// EVENTS_DEDUPE_WINDOW, after the first copy failed, queued nothing while
// saying it did; then a new one each run, so a scheduled audit without
// --destination queued a copy a run for a destination that was down.
// Named with --destination, each run's copy is stored; without it, once.
func TestAuditRequeuesForOneDestination(t *testing.T) {
	for _, tt := range []struct {
		perRun bool
		want   uint64
	}{
		{perRun: true, want: 2},
		{perRun: false, want: 1},
	} {
		t.Run(fmt.Sprintf("perRun=%v", tt.perRun), func(t *testing.T) {
			ns := testnats.Start(t)
			ctx := t.Context()
			lanes, err := natsjs.DefaultTopology().EnsureLanes(ctx, ns.JS, []string{"ai"})
			if err != nil {
				t.Fatal(err)
			}
			ev, err := events.NewStudyStable("main", "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", "1.2.3", "20261126T101500")
			if err != nil {
				t.Fatal(err)
			}
			for run := range 2 {
				ack, err := auditPublish(ns.JS, nil, events.PriorityLow, tt.perRun)(ctx, "ai", ev)
				if err != nil {
					t.Fatalf("run %d: %v", run+1, err)
				}
				if want := run > 0 && !tt.perRun; ack.Duplicate != want {
					t.Errorf("run %d: duplicate %v, want %v", run+1, ack.Duplicate, want)
				}
			}
			waitPending(t, lanes["ai"], map[events.Priority]uint64{events.PriorityLow: tt.want})
		})
	}
}

// TestAuditRepairsNeedTheLowLanesConsumer: the audit's and the verifying
// audit's repairs were queued without checking that a consumer takes
// them, unlike replays and backfills: with a destination's low-lane
// consumer gone (a removal that stopped part-way, one deleted by hand)
// they reached nobody. --enqueue is now refused before anything is
// queued, naming the consumer. Without --destination ai is left out and
// named, with the unread Orthanc: that error hid the summary and ai's.
func TestAuditRepairsNeedTheLowLanesConsumer(t *testing.T) {
	// Over TCP: the commands connect to NATS_URL.
	srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	ctx := t.Context()
	if _, err := natsjs.DefaultTopology().EnsureLanes(ctx, srv.JS, []string{"ai", "pacs"}); err != nil {
		t.Fatal(err)
	}
	if _, err := natsjs.DefaultTopology().EnsureLedger(ctx, srv.JS, "ai"); err != nil {
		t.Fatal(err)
	}
	low := natsjs.LaneConsumerName("ai", events.PriorityLow)
	if err := srv.JS.DeleteConsumer(ctx, natsjs.EventStream, low); err != nil {
		t.Fatal(err)
	}
	// No Orthanc and no destination answer: a command that gets past
	// the check fails on them instead.
	env := map[string]string{"NATS_URL": srv.ClientURL(), "ORTHANC_URL": "http://127.0.0.1:1",
		"DESTINATIONS": "ai,pacs", "DESTINATION_AI_URL": "http://127.0.0.1:1/dicom-web", "DESTINATION_PACS_URL": "http://127.0.0.1:1/dicom-web"}
	for _, tt := range []struct {
		args  []string
		named bool // ErrNoConsumer, naming low
		exit  int
	}{
		{[]string{"--destination", "ai", "--enqueue"}, true, 2},
		{[]string{"--enqueue"}, true, 1}, // ai skipped: TestAuditSkipsAHalfRemovedDestination
		{[]string{"--verify", "--destination", "ai", "--enqueue"}, true, 2},
		{[]string{"--destination", "pacs", "--enqueue"}, false, 1},
		{[]string{"--destination", "ai"}, false, 1}, // lists only
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stderr strings.Builder
			err := RunAudit(ctx, tt.args, func(k string) string { return env[k] }, io.Discard, &stderr)
			named := errors.Is(err, deadletter.ErrNoConsumer) && strings.Contains(err.Error(), low)
			if code := ExitCode("forwarder audit", err, io.Discard); named != tt.named || code != tt.exit {
				t.Errorf("err = %v (exit %d); want exit %d, naming %s %v", err, code, tt.exit, low, tt.named)
			}
			if tt.exit == 1 && !strings.Contains(stderr.String(), "audit: 0 studies") {
				t.Errorf("no summary:\n%s", stderr.String())
			}
		})
	}
	if info, err := srv.JS.Stream(ctx, natsjs.EventStream); err != nil || info.CachedInfo().State.Msgs != 0 {
		t.Errorf("the event stream: %v; want nothing queued", err)
	}
}

// TestAuditRepairsForEveryDestinationNeedLanes: a destination served by
// forwarders from before lanes (one consumer taking the routine subjects
// and its own) takes the audit's repairs for it alone, but not the low
// lane's event for every destination: the audit without --destination
// refuses to queue it rather than lose it.
func TestAuditRepairsForEveryDestinationNeedLanes(t *testing.T) {
	ns := testnats.Start(t)
	ctx := t.Context()
	if _, err := ns.JS.CreateConsumer(ctx, natsjs.EventStream, jetstream.ConsumerConfig{
		Durable:        natsjs.ConsumerName("old"),
		FilterSubjects: []string{natsjs.EventSubject("*"), natsjs.DestinationSubject("old", "*")},
		AckPolicy:      jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	dests := []ledger.Destination{{Name: "old"}}
	if taken, skipped, err := repairsTaken(ctx, ns.JS, dests, events.PriorityLow, false); len(taken) != 1 || skipped != nil || err != nil {
		t.Errorf("repairs for old alone: taken %v, skipped %v, %v; want taken", taken, skipped, err)
	}
	if taken, skipped, err := repairsTaken(ctx, ns.JS, dests, events.PriorityLow, true); len(taken) != 0 || len(skipped) != 1 || !errors.Is(skipped[0], deadletter.ErrNoConsumer) || err != nil {
		t.Errorf("repairs for every destination: taken %v, skipped %v, %v; want skipped, ErrNoConsumer", taken, skipped, err)
	}
}

// auditSite is a deployment for RunAudit: a real Orthanc (source main)
// holding the studies uploaded, stable, and a NATS server over TCP with the
// lanes of destinations, its event stream's duplicate window 90 min.
type auditSite struct {
	env     map[string]string
	srv     *testnats.Server
	lanes   map[string]map[events.Priority]jetstream.Consumer
	studies map[string]*events.StudyStable // by StudyInstanceUID
	// later moves the audit's clock (the server's) ahead of the server.
	later time.Duration
}

// two is the site's two studies, in no set order.
func (s *auditSite) two(t *testing.T) (a, b *events.StudyStable) {
	t.Helper()
	if len(s.studies) != 2 {
		t.Fatalf("%d studies, want 2", len(s.studies))
	}
	for _, ev := range s.studies {
		if a == nil {
			a = ev
		} else {
			b = ev
		}
	}
	return a, b
}

func newAuditSite(t *testing.T, studies int, destinations ...string) *auditSite {
	t.Helper()
	srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	var lanes map[string]map[events.Priority]jetstream.Consumer
	if len(destinations) > 0 {
		var err error
		if lanes, err = natsjs.DefaultTopology().EnsureLanes(t.Context(), srv.JS, destinations); err != nil {
			t.Fatal(err)
		}
	}
	// Not the audit's EVENTS_DEDUPE_WINDOW (24h).
	stream, err := srv.JS.Stream(t.Context(), natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	cfg.Duplicates = 90 * time.Minute
	if _, err := srv.JS.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "audit-app", StableAge: 2})
	for range studies {
		files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: dicomgen.NewUID(), Series: 1, InstancesPerSeries: 1, Rows: 16, Columns: 16})
		if err != nil {
			t.Fatal(err)
		}
		if res := o.Upload(t, files...); len(res.Failed) > 0 {
			t.Fatal(res.Failed)
		}
	}
	o.WaitStable(t, 20*time.Second)
	client, err := orthancapi.New(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	list, err := client.Studies(t.Context(), 0, 100)
	if err != nil || len(list) != studies {
		t.Fatalf("Orthanc's studies: %d, %v; want %d", len(list), err, studies)
	}
	s := &auditSite{srv: srv, lanes: lanes, studies: map[string]*events.StudyStable{},
		env: map[string]string{"NATS_URL": srv.ClientURL(), "ORTHANC_URL": o.URL, "ORTHANC_SOURCE_NAME": "main"}}
	for _, st := range list {
		ev, err := events.NewStudyStable("main", st.ID, st.StudyInstanceUID, st.LastUpdate)
		if err != nil {
			t.Fatal(err)
		}
		s.studies[st.StudyInstanceUID] = ev
	}
	return s
}

// record records the study's forward to destination in its ledger, now.
func (s *auditSite) record(t *testing.T, ev *events.StudyStable, destination string) {
	t.Helper()
	s.recordAt(t, ev, destination, time.Now())
}

// recordAt records the study's forward to destination by a forwarder
// whose clock says at (the server stores it now).
func (s *auditSite) recordAt(t *testing.T, ev *events.StudyStable, destination string, at time.Time) {
	t.Helper()
	kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), s.srv.JS, destination)
	if err != nil {
		t.Fatal(err)
	}
	if err := ledger.New(s.srv.JS, kv, ledger.WithClock(func() time.Time { return at })).Record(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
}

// audit runs forwarder audit args; stderr holds the summary.
func (s *auditSite) audit(t *testing.T, args ...string) (stderr string, err error) {
	t.Helper()
	var out strings.Builder
	err = runAudit(t.Context(), args, func(k string) string { return s.env[k] }, io.Discard, &out, func(o *ledger.AuditOptions) {
		// One server stores the ledgers and the events, with one clock:
		// a study recorded before an event is, without waiting a minute.
		o.ClockMargin = time.Nanosecond
		if now := o.Now; now != nil {
			o.Now = func() time.Time { return now().Add(s.later) }
		}
	})
	return out.String(), err
}

// TestAuditEnqueueFromCron: a scheduled `forwarder audit --enqueue` exited
// 3 for studies merely waiting in the queue (their event a duplicate: a
// backlog, an open breaker, a closed lane), telling the operator to queue
// them again with --destination, which sends them twice; it said "2
// studies" for one study missing at 2 destinations, and printed the local
// EVENTS_DEDUPE_WINDOW as the stream's. Already queued is now reported
// apart and exits 0, studies are counted once, and the window is the
// stream's. Study a is missing at ai and pacs (the event every
// destination takes), b at ai only (an event for ai under a fixed ID).
// Once pacs forwarded a, a run queued a again for ai, under its own ID,
// while its first event still waited there: a study whose first event
// waits for a down destination is now "probably queued" there, and
// queued again only once the destination holds no event as old as
// pacs's forward (TestAuditRepairsByTime). pacs forwarded b before the
// first run: ai's events, stored since, do not hold b's back.
func TestAuditEnqueueFromCron(t *testing.T) {
	s := newAuditSite(t, 2, "ai", "pacs")
	a, b := s.two(t)
	s.record(t, b, "pacs")
	pending := func(ai, pacs uint64) {
		t.Helper()
		waitPending(t, s.lanes["ai"], map[events.Priority]uint64{events.PriorityRoutine: 0, events.PriorityLow: ai})
		waitPending(t, s.lanes["pacs"], map[events.Priority]uint64{events.PriorityRoutine: 0, events.PriorityLow: pacs})
	}
	// drainAI acknowledges every event in ai's low lane: ai is back.
	drainAI := func() {
		t.Helper()
		ackAll(t, s.lanes["ai"][events.PriorityLow])
		waitPending(t, s.lanes["ai"], map[events.Priority]uint64{events.PriorityLow: 0})
	}
	for _, tt := range []struct {
		name     string
		before   func()
		args     []string
		missing  bool // ErrMissing, else no error
		says     []string
		ai, pacs uint64
	}{
		{"list", nil, nil, true, []string{"2 missing at a destination (3 findings"}, 0, 0},
		{"first run", nil, []string{"--enqueue"}, false, []string{"3 findings queued, 0 already queued"}, 2, 1},
		{"the next hour", nil, []string{"--enqueue"}, false, []string{"0 findings queued, 3 already queued, 0 probably queued", "duplicate window (1h30m0s)", "--destination NAME --enqueue"}, 2, 1},
		{"pacs forwarded a, ai is down", func() { s.record(t, a, "pacs") }, []string{"--enqueue"}, false, []string{"0 findings queued, 1 already queued, 1 probably queued"}, 2, 1},
		{"ai is back, a's record lost", drainAI, []string{"--enqueue"}, false, []string{"1 findings queued, 1 already queued, 0 probably queued"}, 1, 1},
		{"a copy for ai known lost", nil, []string{"--destination", "ai", "--enqueue"}, false, []string{"2 findings queued, 0 already queued"}, 3, 1},
	} {
		if tt.before != nil {
			tt.before()
		}
		stderr, err := s.audit(t, tt.args...)
		if tt.missing != errors.Is(err, ErrMissing) || !tt.missing && err != nil {
			t.Errorf("%s: err = %v, want missing %v", tt.name, err, tt.missing)
		}
		if tt.missing && !strings.HasPrefix(err.Error(), "2 studies") {
			t.Errorf("%s: err = %v, want 2 studies counted", tt.name, err)
		}
		for _, want := range tt.says {
			if !strings.Contains(stderr, want) {
				t.Errorf("%s: stderr does not say %q:\n%s", tt.name, want, stderr)
			}
		}
		if strings.Contains(stderr, "24h0m0s") {
			t.Errorf("%s: stderr gives the local EVENTS_DEDUPE_WINDOW:\n%s", tt.name, stderr)
		}
		pending(tt.ai, tt.pacs)
	}
}

// fillEventStream makes the event stream refuse every new event, as a
// full one does: it holds one, and at most one.
func (s *auditSite) fillEventStream(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	if _, err := s.srv.JS.Publish(ctx, natsjs.EventSubject("other"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	stream, err := s.srv.JS.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 1, jetstream.DiscardNew
	if _, err := s.srv.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

// TestAuditFailsForAFindingNotQueued: an audit --enqueue whose repair
// JetStream refuses (the event stream full, a permission missing) exits
// with an error naming the count, even for one finding: a scheduled
// audit that exits 0 says the study is on its way when it is not.
func TestAuditFailsForAFindingNotQueued(t *testing.T) {
	s := newAuditSite(t, 1, "ai")
	s.fillEventStream(t)
	stderr, err := s.audit(t, "--enqueue")
	if err == nil || !strings.Contains(err.Error(), "1 findings could not be enqueued") {
		t.Errorf("err = %v, want 1 finding not enqueued\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "0 findings queued") {
		t.Errorf("stderr does not say none was queued:\n%s", stderr)
	}
}

// TestAuditRepairsByTime: a study missing at ai only was "probably
// queued" while ai's lanes held any event not acknowledged, its own or
// not, so a busy destination never got a lost copy repaired. It is now
// held back only while ai holds an event as old as pacs's record of the
// study (its own event is stored before): an unrelated event stored
// after it does not, and a record older than the stream's MaxAge (its
// event expired) never does. The times compared were the forwarder's
// clock (the record's ForwardedAt) and the server's (the events'): a
// pacs forwarder ten minutes slow made a's event, waiting at ai, look
// stored after the forward, and a was queued at ai twice. The record's
// time is now the server's, when it stored it.
func TestAuditRepairsByTime(t *testing.T) {
	s := newAuditSite(t, 1, "ai", "pacs")
	var a *events.StudyStable
	for _, ev := range s.studies {
		a = ev
	}
	ctx := t.Context()
	stream, err := s.srv.JS.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	maxAge := stream.CachedInfo().Config.MaxAge
	if maxAge <= 0 {
		t.Fatal("the event stream has no MaxAge")
	}
	queue := func(subject string, ev *events.StudyStable, msgID string) {
		t.Helper()
		if _, err := natsjs.PublishTo(ctx, s.srv.JS, subject, ev, msgID); err != nil {
			t.Fatal(err)
		}
	}
	other, err := events.NewStudyStable("main", "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", "1.2.3", "20261126T101500")
	if err != nil {
		t.Fatal(err)
	}
	routine := s.lanes["ai"][events.PriorityRoutine]
	for _, tt := range []struct {
		name         string
		before       func()
		later        time.Duration // the audit's clock ahead of the server's
		says         []string
		routine, low uint64 // pending at ai
	}{
		{"a's own event waits at ai", func() {
			queue(natsjs.LaneSubject(events.PriorityRoutine, "", "main"), a, a.MsgID())
			s.record(t, a, "pacs")
		}, 0, []string{"0 findings queued, 0 already queued, 1 probably queued"}, 1, 0},
		{"pacs's forwarder's clock is slow", func() {
			s.recordAt(t, a, "pacs", time.Now().Add(-10*time.Minute))
		}, 0, []string{"0 findings queued, 0 already queued, 1 probably queued"}, 1, 0},
		{"ai took a's event, an unrelated one waits", func() {
			ackAll(t, routine)
			s.record(t, a, "pacs")
			queue(natsjs.LaneSubject(events.PriorityRoutine, "ai", "main"), other, other.MsgID())
		}, 0, []string{"1 findings queued, 0 already queued, 0 probably queued"}, 1, 1},
		{"a's event may wait at ai", func() {
			// ai took the repair, so nothing is held for it alone; the
			// unrelated event, held, is older than a's record.
			ackAll(t, s.lanes["ai"][events.PriorityLow])
			s.record(t, a, "pacs")
		}, 0, []string{"0 findings queued, 0 already queued, 1 probably queued"}, 1, 0},
		// Published, as expired: the stream drops it as a duplicate of
		// the repair ai took (its window is the server's, not shifted).
		{"a's event expired", nil, maxAge + time.Hour, []string{"0 findings queued, 1 already queued, 0 probably queued", `"msg":"study enqueued by the audit"`}, 1, 0},
	} {
		if tt.before != nil {
			tt.before()
		}
		// The audit reads what ai's lanes hold: they must have counted
		// the events just queued.
		testnats.WaitCounted(ctx, t, s.srv.JS)
		s.later = tt.later
		stderr, err := s.audit(t, "--enqueue")
		if err != nil {
			t.Errorf("%s: err = %v", tt.name, err)
		}
		for _, want := range tt.says {
			if !strings.Contains(stderr, want) {
				t.Errorf("%s: stderr does not say %q:\n%s", tt.name, want, stderr)
			}
		}
		waitPending(t, s.lanes["ai"], map[events.Priority]uint64{events.PriorityRoutine: tt.routine, events.PriorityLow: tt.low})
	}
}

// TestAuditSeesACopyQueuedForOneDestination: a study pacs forwarded,
// which an operator then backfilled for ai alone, was queued again at ai
// by a scheduled audit while that copy waited: stored after pacs's
// forward, the copy did not hold the study back (TestAuditRepairsByTime).
// The audit now reads the events ai's lanes hold for it alone, and the
// study is "already queued" there; a copy of an older state of the study
// does not count.
func TestAuditSeesACopyQueuedForOneDestination(t *testing.T) {
	s := newAuditSite(t, 1, "ai", "pacs")
	var a *events.StudyStable
	for _, ev := range s.studies {
		a = ev
	}
	low := s.lanes["ai"][events.PriorityLow]
	backfill := func(ev *events.StudyStable) {
		t.Helper()
		if _, err := natsjs.PublishTo(t.Context(), s.srv.JS, natsjs.LaneSubject(events.PriorityLow, "ai", "main"), ev, ev.MsgID()+"/backfill"); err != nil {
			t.Fatal(err)
		}
	}
	older := *a
	older.LastUpdate = "20000101T000000"
	for _, tt := range []struct {
		name   string
		before func()
		says   string
		low    uint64 // pending at ai
	}{
		{"backfilled for ai after pacs's forward", func() {
			s.record(t, a, "pacs")
			backfill(a)
		}, "0 findings queued, 1 already queued, 0 probably queued", 1},
		{"ai took it, its record lost; an older state backfilled", func() {
			ackAll(t, low)
			backfill(&older)
		}, "1 findings queued, 0 already queued, 0 probably queued", 2},
	} {
		tt.before()
		// The audit reads what ai's lanes hold: they must have counted
		// the copy just backfilled.
		testnats.WaitCounted(t.Context(), t, s.srv.JS)
		stderr, err := s.audit(t, "--enqueue")
		if err != nil || !strings.Contains(stderr, tt.says) {
			t.Errorf("%s: err = %v, stderr does not say %q:\n%s", tt.name, err, tt.says, stderr)
		}
		waitPending(t, s.lanes["ai"], map[events.Priority]uint64{events.PriorityRoutine: 0, events.PriorityLow: tt.low})
	}
}

// ackAll acknowledges every event c holds.
func ackAll(t *testing.T, c jetstream.Consumer) {
	t.Helper()
	batch, err := c.FetchNoWait(100)
	if err != nil {
		t.Fatal(err)
	}
	for msg := range batch.Messages() {
		if err := msg.DoubleAck(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Error(); err != nil {
		t.Fatal(err)
	}
}

// TestAuditPriority: every repair of the audit went to the low lane, so a
// site recovering lost triage (RECONCILE_ENABLED=false), or re-queuing
// expired live events, saw them wait for the low lane's FORWARD_WINDOWS.
// --priority puts them in another lane, as backfill's does: study a,
// missing at both, goes in the routine lane of both; b, missing at ai, in
// ai's.
func TestAuditPriority(t *testing.T) {
	s := newAuditSite(t, 2, "ai", "pacs")
	a, b := s.two(t)
	// Before a's event, queued by the run, which then does not hold b
	// back at ai (TestAuditRepairsByTime).
	s.record(t, b, "pacs")
	if stderr, err := s.audit(t, "--enqueue", "--priority", "routine"); err != nil {
		t.Fatalf("audit: %v\n%s", err, stderr)
	}
	waitPending(t, s.lanes["ai"], map[events.Priority]uint64{events.PriorityStat: 0, events.PriorityRoutine: 2, events.PriorityLow: 0})
	waitPending(t, s.lanes["pacs"], map[events.Priority]uint64{events.PriorityStat: 0, events.PriorityRoutine: 1, events.PriorityLow: 0})
	msg, err := s.lanes["pacs"][events.PriorityRoutine].Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var ev events.StudyStable
	if err := json.Unmarshal(msg.Data(), &ev); err != nil || ev.OrthancStudyID != a.OrthancStudyID || ev.Priority != events.PriorityRoutine {
		t.Errorf("pacs's event: %+v, %v; want study %s, priority routine", ev, err, a.OrthancStudyID)
	}
}

// TestAuditSkipsAHalfRemovedDestination: with one destination's low-lane
// consumer gone (forwarder destinations remove stopped part-way),
// `forwarder audit --enqueue` was refused (exit 2) for every destination.
// That one is now left out and named, the others' repairs are queued, and
// the audit exits 1.
func TestAuditSkipsAHalfRemovedDestination(t *testing.T) {
	s := newAuditSite(t, 1, "ai", "pacs")
	low := natsjs.LaneConsumerName("ai", events.PriorityLow)
	if err := s.srv.JS.DeleteConsumer(t.Context(), natsjs.EventStream, low); err != nil {
		t.Fatal(err)
	}
	stderr, err := s.audit(t, "--enqueue")
	if code := ExitCode("forwarder audit", err, io.Discard); code != 1 || !errors.Is(err, deadletter.ErrNoConsumer) || !strings.Contains(err.Error(), low) {
		t.Errorf("err = %v (exit %d), want exit 1 naming %s", err, code, low)
	}
	if !strings.Contains(stderr, "1 findings queued") {
		t.Errorf("pacs's repair not queued:\n%s", stderr)
	}
	waitPending(t, s.lanes["pacs"], map[events.Priority]uint64{events.PriorityRoutine: 0, events.PriorityLow: 1})
}

// TestAuditEnqueuesBeforeAnyForwarderRan: 0e00a27's check that a
// consumer takes the repairs refused `forwarder audit --enqueue` on a
// deployment whose forwarders never ran (no consumer at all), although
// their consumers, made later, take what the stream holds: the first
// deployment on an Orthanc holding studies could not queue them. It
// queues them again.
func TestAuditEnqueuesBeforeAnyForwarderRan(t *testing.T) {
	s := newAuditSite(t, 1)
	if stderr, err := s.audit(t, "--enqueue"); err != nil {
		t.Fatalf("audit --enqueue: %v\n%s", err, stderr)
	}
	if n := streamMsgs(t, s.srv); n != 1 {
		t.Errorf("the event stream holds %d events, want the study's", n)
	}
	lanes, err := natsjs.DefaultTopology().EnsureLanes(t.Context(), s.srv.JS, []string{natsjs.DefaultDestination})
	if err != nil {
		t.Fatal(err)
	}
	waitPending(t, lanes[natsjs.DefaultDestination], map[events.Priority]uint64{events.PriorityRoutine: 0, events.PriorityLow: 1})
}

// TestAuditEnqueueAfterALeftoverLaneConsumer: the audit took a stream
// without routine consumers for a first start and queued its repairs
// unchecked, while EnsureLanes takes any lane consumer (here a leftover
// stowline-low-old) for a running deployment and starts new destinations
// with new events: the repairs reached nobody, and a later audit found
// them already queued. The repairs now need a consumer then too.
func TestAuditEnqueueAfterALeftoverLaneConsumer(t *testing.T) {
	s := newAuditSite(t, 1)
	cfg := natsjs.DefaultTopology().LaneConsumerConfig("old", events.PriorityLow, []string{"old"})
	if _, err := s.srv.JS.CreateConsumer(t.Context(), natsjs.EventStream, cfg); err != nil {
		t.Fatal(err)
	}
	want := natsjs.LaneConsumerName(natsjs.DefaultDestination, events.PriorityLow)
	stderr, err := s.audit(t, "--enqueue")
	if !errors.Is(err, deadletter.ErrNoConsumer) || !strings.Contains(err.Error(), want) {
		t.Errorf("audit --enqueue: err = %v, want one naming %s\n%s", err, want, stderr)
	}
	if n := streamMsgs(t, s.srv); n != 0 {
		t.Errorf("the event stream holds %d events, want none: no consumer takes them", n)
	}
	lanes, err := natsjs.DefaultTopology().EnsureLanes(t.Context(), s.srv.JS, []string{"pacs"})
	if err != nil {
		t.Fatal(err)
	}
	if stderr, err := s.audit(t, "--enqueue"); err != nil {
		t.Fatalf("audit --enqueue once pacs runs: %v\n%s", err, stderr)
	}
	waitPending(t, lanes["pacs"], map[events.Priority]uint64{events.PriorityRoutine: 0, events.PriorityLow: 1})
}

// streamMsgs is how many events the event stream holds.
func streamMsgs(t *testing.T, srv *testnats.Server) uint64 {
	t.Helper()
	st, err := srv.JS.Stream(t.Context(), natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.Msgs
}

// TestAuditListsKeptStudies: a study whose corrected copy the archive
// refused (STOW_ON_CONFLICT=skip) is recorded forwarded, with the
// instances it keeps, and the plain audit counts it forwarded: nothing
// listed such studies. `forwarder audit --kept` lists them from the
// ledgers alone (no Orthanc answers here), for every destination or the
// one named, within --since; a destination with no ledger yet has none.
func TestAuditListsKeptStudies(t *testing.T) {
	srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	ctx := t.Context()
	if _, err := natsjs.DefaultTopology().EnsureLanes(ctx, srv.JS, []string{"archive", "ai"}); err != nil {
		t.Fatal(err)
	}
	kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, srv.JS, "archive")
	if err != nil {
		t.Fatal(err)
	}
	selected := []orthancapi.Instance{{ID: "i1", SOPInstanceUID: "1.2.1.1"}, {ID: "i2", SOPInstanceUID: "1.2.1.2"}}
	for i, r := range []struct {
		at   time.Time
		kept []string
	}{
		{time.Now(), []string{"1.2.1.2"}},
		{time.Now(), nil},
		{time.Now().Add(-72 * time.Hour), []string{"1.2.1.1"}},
	} {
		ev, err := events.NewStudyStable("main", fmt.Sprintf("%08d-00000000-00000000-00000000-00000000", i), fmt.Sprintf("1.2.%d", i), "20261201T100000")
		if err != nil {
			t.Fatal(err)
		}
		if err := ledger.New(srv.JS, kv, ledger.WithClock(func() time.Time { return r.at })).Completed(ctx, ev, ledger.Outcome{Selected: selected, Kept: r.kept}); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{"NATS_URL": srv.ClientURL(), "ORTHANC_URL": "http://127.0.0.1:1"}
	for _, tt := range []struct {
		args []string
		want []string // Orthanc study IDs listed, in the ledger's order
	}{
		{[]string{"--kept"}, []string{"00000000-00000000-00000000-00000000-00000000", "00000002-00000000-00000000-00000000-00000000"}},
		{[]string{"--kept", "--destination", "archive", "--since", "2d"}, []string{"00000000-00000000-00000000-00000000-00000000"}},
		{[]string{"--kept", "--destination", "ai"}, nil},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr strings.Builder
			err := RunAudit(ctx, append(tt.args, "--json"), func(k string) string { return env[k] }, &stdout, &stderr)
			if err != nil {
				t.Fatalf("audit: %v\n%s", err, stderr.String())
			}
			var got []string
			for line := range strings.Lines(stdout.String()) {
				var k ledger.KeptStudy
				if err := json.Unmarshal([]byte(line), &k); err != nil {
					t.Fatalf("%q: %v", line, err)
				}
				if k.Destination != "archive" || k.Source != "main" || len(k.Kept) != 1 || k.KeptAll {
					t.Errorf("listed %+v; want archive's study of source main keeping one instance", k)
				}
				got = append(got, k.OrthancStudyID)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("listed %v, want %v", got, tt.want)
			}
			if summary := fmt.Sprintf("audit --kept: %d studies", len(tt.want)); !strings.Contains(stderr.String(), summary) {
				t.Errorf("stderr lacks %q:\n%s", summary, stderr.String())
			}
		})
	}
	// The table names the count and the first UID kept.
	var stdout strings.Builder
	if err := RunAudit(ctx, []string{"--kept", "--since", "2d"}, func(k string) string { return env[k] }, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	if out := stdout.String(); !strings.Contains(out, "FIRST KEPT SOP INSTANCE UID") || !regexp.MustCompile(`archive +main +00000000-\S+ +1\.2\.0 +20261201T100000 +\S+ +1 +1\.2\.1\.2\n`).MatchString(out) {
		t.Errorf("table:\n%s", out)
	}
}
