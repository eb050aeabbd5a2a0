package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
)

// subjectCounts is how many events the stream holds on each subject.
func subjectCounts(t *testing.T, js jetstream.JetStream) map[string]uint64 {
	t.Helper()
	s, err := js.Stream(t.Context(), natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context(), jetstream.WithSubjectFilter(">"))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects
}

// TestPrioritizer: an event that names its priority keeps it; without a
// rule an event is routine; the rule puts a study it selects in the stat
// lane and one it does not in the routine lane; a rule that cannot read
// the study leaves it routine, counted; and a webhook event waits on the
// triage subject, then goes in the rule's lane, under its usual dedupe ID
// so the reconciler's copy is a duplicate.
func TestPrioritizer(t *testing.T) {
	const (
		mr      = "aaaaaaaa-aaaaaaaa-aaaaaaaa-aaaaaaaa-aaaaaaaa"
		ct      = "bbbbbbbb-bbbbbbbb-bbbbbbbb-bbbbbbbb-bbbbbbbb"
		mrHooks = "cccccccc-cccccccc-cccccccc-cccccccc-cccccccc"
	)
	// The source serves the facts the rule reads (orthancapi.StudyFacts)
	// of the studies it knows; any other study's read fails (503).
	modality := map[string]string{mr: "MR", ct: "CT", mrHooks: "MR"}
	orthanc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, _ := strings.CutPrefix(r.URL.Path, "/studies/")
		id, series := strings.CutSuffix(rest, "/series")
		m, ok := modality[id]
		if !ok {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if series {
			json.NewEncoder(w).Encode([]map[string]any{{"ID": "s1", "MainDicomTags": map[string]string{"Modality": m}}})
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"MainDicomTags": map[string]string{"ModalitiesInStudy": m}})
	}))
	t.Cleanup(orthanc.Close)
	sources, err := newSources(&config.Orthanc{URL: orthanc.URL, SourceName: "main"})
	if err != nil {
		t.Fatal(err)
	}
	ev := func(id string, p events.Priority) *events.StudyStable {
		e, err := events.NewStudyStable("main", id, "1.2.3", "20261203T101500")
		if err != nil {
			t.Fatal(err)
		}
		e.Priority = p
		return e
	}
	const rule = "'MR' in study.modalities"
	tests := []struct {
		name    string
		rule    string
		webhook bool
		event   *events.StudyStable
		subject string
		// priority and by are the labels of stowline_ingest_priority_total
		// that count the event.
		priority events.Priority
		by       string
	}{
		{"named priority", rule, false, ev("11111111-11111111-11111111-11111111-11111111", events.PriorityLow), "stowline.study.stable.main.low", events.PriorityLow, "event"},
		{"named stat", "", false, ev("22222222-22222222-22222222-22222222-22222222", events.PriorityStat), "stowline.study.stable.main.stat", events.PriorityStat, "event"},
		{"no rule", "", false, ev("33333333-33333333-33333333-33333333-33333333", ""), "stowline.study.stable.main", events.PriorityRoutine, "default"},
		{"rule selects", rule, false, ev(mr, ""), "stowline.study.stable.main.stat", events.PriorityStat, "rule"},
		{"rule does not select", rule, false, ev(ct, ""), "stowline.study.stable.main", events.PriorityRoutine, "rule"},
		{"rule fails", rule, false, ev("44444444-44444444-44444444-44444444-44444444", ""), "stowline.study.stable.main", events.PriorityRoutine, "rule_error"},
		{"webhook, rule selects", rule, true, ev(mrHooks, ""), "stowline.study.stable.main.stat", events.PriorityStat, "rule"},
		{"webhook, rule fails", rule, true, ev("55555555-55555555-55555555-55555555-55555555", ""), "stowline.study.stable.main", events.PriorityRoutine, "rule_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testnats.Start(t)
			if _, err := natsjs.DefaultTopology().EnsureEvents(t.Context(), ns.JS); err != nil {
				t.Fatal(err)
			}
			p, err := newPrioritizer(ns.JS, tt.rule, sources, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			var pub events.Publisher = p
			if tt.webhook {
				pub = webhookPublisher{p: p, ctx: t.Context()}
			}
			if _, err := pub.Publish(t.Context(), tt.event); err != nil {
				t.Fatal(err)
			}
			counted := func() float64 { return testutil.ToFloat64(p.events.WithLabelValues(string(tt.priority), tt.by)) }
			deadline := time.Now().Add(10 * time.Second)
			for counted() != 1 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if counted() != 1 {
				t.Fatalf("stowline_ingest_priority_total{priority=%q,by=%q} = %v, want 1", tt.priority, tt.by, counted())
			}
			got := subjectCounts(t, ns.JS)
			inLanes := uint64(0)
			for subject, n := range got {
				if subject != natsjs.TriageSubject("main") {
					inLanes += n
				}
			}
			if got[tt.subject] != 1 || inLanes != 1 {
				t.Errorf("subjects %v, want the event on %s only", got, tt.subject)
			}
			if tt.webhook && got[natsjs.TriageSubject("main")] != 1 {
				t.Errorf("subjects %v, want the webhook's copy on the triage subject", got)
			}
			// The reconciler's copy of the same event is a duplicate.
			ack, err := natsjs.Publisher{JS: ns.JS}.Publish(context.WithoutCancel(t.Context()), tt.event)
			if err != nil || !ack.Duplicate {
				t.Errorf("republish: %+v, %v; want a duplicate", ack, err)
			}
			if !tt.webhook {
				// Through the prioritizer too, and it is not counted
				// again: the metric counts events, not publishes.
				if ack, err := p.Publish(t.Context(), tt.event); err != nil || !ack.Duplicate {
					t.Errorf("republish through the prioritizer: %+v, %v; want a duplicate", ack, err)
				}
				if counted() != 1 {
					t.Errorf("after a duplicate, stowline_ingest_priority_total{priority=%q,by=%q} = %v, want 1", tt.priority, tt.by, counted())
				}
			}
		})
	}
}

// At shutdown the ingest waits for the events the webhook answered for
// that still wait for PRIORITY_RULE: here the source is slow to answer,
// and the event is in its lane when drainTriage returns.
func TestTriageDrainedAtShutdown(t *testing.T) {
	p, ns, src := slowSourcePrioritizer(t)
	ev, err := events.NewStudyStable("main", "66666666-66666666-66666666-66666666-66666666", "1.2.3", "20261203T101500")
	if err != nil {
		t.Fatal(err)
	}
	ingest, stop := context.WithCancel(t.Context())
	if _, err := (webhookPublisher{p: p, ctx: ingest}).Publish(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	stop() // the webhook answered; the ingest stops
	drained := make(chan struct{})
	go func() {
		p.drainTriage(time.Minute, time.Minute)
		close(drained)
	}()
	select {
	case <-drained:
		t.Fatal("drainTriage returned while the event was still being triaged")
	case <-time.After(100 * time.Millisecond):
	}
	src.answer() // the source answers (503: the rule fails, the study goes routine)
	<-drained
	if got := subjectCounts(t, ns.JS); got["stowline.study.stable.main"] != 1 {
		t.Errorf("subjects %v after drainTriage, want the event in the routine lane", got)
	}
	// A webhook request still running after the drain stores its event
	// for triage and leaves it to the reconciler: no triage starts.
	late, err := events.NewStudyStable("main", "77777777-77777777-77777777-77777777-77777777", "1.2.4", "20261203T101500")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (webhookPublisher{p: p, ctx: ingest}).Publish(t.Context(), late); err != nil {
		t.Fatal(err)
	}
	// A triage started would have stored it in the routine lane (the
	// source answers at once now).
	p.triaging.Wait()
	if got := subjectCounts(t, ns.JS); got[natsjs.TriageSubject("main")] != 2 || got["stowline.study.stable.main"] != 1 {
		t.Errorf("subjects %v, want both events on the triage subject and only the first in its lane", got)
	}
}

// failingPublisher fails its first fails publishes, as JetStream does
// while it elects a leader.
type failingPublisher struct {
	next  events.Publisher
	fails atomic.Int32
}

func (f *failingPublisher) Publish(ctx context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, nats.ErrNoResponders
	}
	return f.next.Publish(ctx, ev)
}

// A study the webhook answered for while the ingest stopped had one try
// to reach its lane: a store failing once (a leader election in a
// rolling restart) left it on the triage subject, for the reconciler or
// nothing. It is tried again while drainTriage waits.
func TestTriageRetriesAtShutdown(t *testing.T) {
	p, ns, src := slowSourcePrioritizer(t)
	p.next = &failingPublisher{next: p.next}
	p.next.(*failingPublisher).fails.Store(2)
	src.answer() // the source answers at once (503: the rule fails, routine)
	ev, err := events.NewStudyStable("main", "66666666-66666666-66666666-66666666-66666666", "1.2.3", "20261203T101500")
	if err != nil {
		t.Fatal(err)
	}
	ingest, stop := context.WithCancel(t.Context())
	stop() // the ingest stops; its webhook answers the requests in flight
	if _, err := (webhookPublisher{p: p, ctx: ingest}).Publish(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	p.drainTriage(time.Minute, time.Minute)
	if got := subjectCounts(t, ns.JS); got["stowline.study.stable.main"] != 1 {
		t.Errorf("subjects %v after drainTriage, want the event in the routine lane", got)
	}
}

// At shutdown the events still waiting for PRIORITY_RULE are read
// triageReads at a time, as before it: a rolling restart's burst of
// hundreds must not take all of Orthanc's HTTP threads at once. When
// drainTriage stops waiting for the reads, the studies still waiting for
// a turn, and those being read, go in the routine lane unread with the
// reconciler off (nothing else would queue them); with it on they stay
// on the triage subject, for the reconciler's copy, which the rule reads
// after the restart (queued routine, a stat study would stay routine: the
// reconciler's copy a duplicate).
func TestTriageKeepsItsLimitAtShutdown(t *testing.T) {
	const studies = 3 * triageReads
	for _, tt := range []struct {
		name                   string
		reconciled             bool
		wantRoutine, wantShutd int
	}{
		{"reconciler off", false, studies, studies},
		{"reconciler on", true, 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, ns, src := slowSourcePrioritizer(t)
			p.reconciled = tt.reconciled
			ingest, stop := context.WithCancel(t.Context())
			for i := range studies {
				ev, err := events.NewStudyStable("main", fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i), "1.2.3", "20261203T101500")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := (webhookPublisher{p: p, ctx: ingest}).Publish(t.Context(), ev); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "triageReads studies read at once", func() bool { n, _, _ := src.counts(); return n == triageReads })
			stop() // the ingest stops while the source is slow, and stays so
			p.drainTriage(100*time.Millisecond, time.Minute)
			if n := p.pending.Load(); n != 0 {
				t.Errorf("drainTriage returned with %d studies still being triaged", n)
			}
			p.triaging.Wait()
			if _, most, seen := src.counts(); most > triageReads || seen != triageReads {
				t.Errorf("the source got %d requests, %d at once; want %d, at most %d at once (the studies waiting for a turn read nothing after the drain)", seen, most, triageReads, triageReads)
			}
			got := subjectCounts(t, ns.JS)
			if got[natsjs.TriageSubject("main")] != studies || got["stowline.study.stable.main"] != uint64(tt.wantRoutine) {
				t.Errorf("subjects %v, want all %d on the triage subject and %d in the routine lane", got, studies, tt.wantRoutine)
			}
			if n := testutil.ToFloat64(p.events.WithLabelValues("routine", "shutdown")); n != float64(tt.wantShutd) {
				t.Errorf(`stowline_ingest_priority_total{priority="routine",by="shutdown"} = %v, want %d`, n, tt.wantShutd)
			}
		})
	}
}

// Once the reads are cut with the reconciler on, a study of a source it
// polls is left to it, and one of a source it does not poll (not in
// ORTHANC_SOURCES: nothing would queue it) still goes routine.
func TestCutStudyLeftToTheReconcilerOnlyIfItPollsTheSource(t *testing.T) {
	p, ns, _ := slowSourcePrioritizer(t)
	p.reconciled = true
	p.cutReads()
	for _, tt := range []struct {
		source   string
		wantLeft bool
	}{
		{"main", true},
		{"elsewhere", false},
	} {
		ev, err := events.NewStudyStable(tt.source, "77777777-77777777-77777777-77777777-77777777", "1.2.3", "20261203T101500")
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.Publish(t.Context(), ev)
		if left := errors.Is(err, errLeftToReconciler); left != tt.wantLeft || !left && err != nil {
			t.Errorf("source %s: Publish = %v; want left to the reconciler %v", tt.source, err, tt.wantLeft)
		}
	}
	if got := subjectCounts(t, ns.JS); got["stowline.study.stable.elsewhere"] != 1 || got["stowline.study.stable.main"] != 0 {
		t.Errorf("subjects %v, want the unpolled source's study in the routine lane and the other's left", got)
	}
}

// A webhook event of a source the ingest does not read (not in
// ORTHANC_SOURCES) is in its lane, routine (the rule has nothing to read
// it from), by the time the webhook answers, with no triage copy: no
// reconciler polls that source, so a triage copy left behind by an ingest
// stopped after the answer, or by a lane refusing the event after it,
// would be lost until an audit. A refusal is answered as a failure. The
// event waits for no turn behind the slow reads of another source's
// studies either.
func TestUnpolledSourceStoredInItsLaneBeforeTheAnswer(t *testing.T) {
	tests := []struct {
		name string
		// drained: the ingest stops triaging before the event comes.
		drained bool
		// refusals: the lane store's failures before it takes the event.
		refusals int32
		wantErr  bool
	}{
		{name: "every turn taken by a slow read"},
		{name: "the ingest stopping", drained: true},
		{name: "the lane refusing it", refusals: 1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ns, src := slowSourcePrioritizer(t)
			p.timeout = time.Minute // the reads hold their turns throughout
			failing := &failingPublisher{next: p.next}
			failing.fails.Store(tt.refusals) // the slow reads' studies publish after the event
			p.next = failing
			for i := range triageReads {
				ev, err := events.NewStudyStable("main", fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i), "1.2.3", "20261203T101500")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := (webhookPublisher{p: p, ctx: t.Context()}).Publish(t.Context(), ev); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "every turn taken by a slow read", func() bool { n, _, _ := src.counts(); return n == triageReads })
			if tt.drained {
				p.mu.Lock()
				p.drained = true
				p.mu.Unlock()
			}
			ev, err := events.NewStudyStable("elsewhere", "99999999-99999999-99999999-99999999-99999999", "1.2.3", "20261203T101500")
			if err != nil {
				t.Fatal(err)
			}
			_, err = (webhookPublisher{p: p, ctx: t.Context()}).Publish(t.Context(), ev)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Publish = %v, want an error %v", err, tt.wantErr)
			}
			wantInLane := uint64(1)
			if tt.wantErr {
				wantInLane = 0
			}
			got := subjectCounts(t, ns.JS)
			if got["stowline.study.stable.elsewhere"] != wantInLane || got[natsjs.TriageSubject("elsewhere")] != 0 {
				t.Errorf("subjects %v when the webhook answered, want %d in the routine lane of elsewhere and no triage copy", got, wantInLane)
			}
			if inFlight, _, seen := src.counts(); inFlight != triageReads || seen != triageReads {
				t.Errorf("the source answers %d requests of %d, want the %d slow reads still running", inFlight, seen, triageReads)
			}
			src.answer()
			p.triaging.Wait() // before the JetStream server stops
		})
	}
}

// waitFor waits for cond, failing the test after 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not after 20 s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The reconciler publishes through the rule within INGEST_PUBLISH_TIMEOUT,
// which may be shorter than the rule's own time-out: a source too slow to
// read must leave the study routine, not make the publish fail (the
// reconciler would retry the same study, and stop there, for good).
func TestRuleLeavesThePublishItsTime(t *testing.T) {
	p, ns, _ := slowSourcePrioritizer(t)
	ev, err := events.NewStudyStable("main", "88888888-88888888-88888888-88888888-88888888", "1.2.3", "20261203T101500")
	if err != nil {
		t.Fatal(err)
	}
	// As the reconciler publishes with an INGEST_PUBLISH_TIMEOUT shorter
	// than the rule's reads' priorityRuleTimeout (5 s): reads that took
	// all of it would leave the publish nothing. Not the default 2 s:
	// the publish's half, 2 s here, leaves a loaded host room.
	ctx, cancel := context.WithTimeout(t.Context(), priorityRuleTimeout*4/5)
	defer cancel()
	if _, err := p.Publish(ctx, ev); err != nil {
		t.Fatalf("Publish = %v, want the study stored in the routine lane", err)
	}
	if got := testutil.ToFloat64(p.events.WithLabelValues("routine", "rule_error")); got != 1 {
		t.Errorf("stowline_ingest_priority_total{priority=\"routine\",by=\"rule_error\"} = %v, want 1", got)
	}
	if got := subjectCounts(t, ns.JS); got["stowline.study.stable.main"] != 1 {
		t.Errorf("subjects %v, want the event in the routine lane", got)
	}
}

// While the NATS client reconnects, the webhook answers at once: Orthanc's
// Lua post, and Orthanc's REST API with it, waits for that answer.
func TestWebhookPublisherNotConnected(t *testing.T) {
	pub := webhookPublisher{ctx: t.Context(), connected: func() bool { return false }}
	if _, err := pub.Publish(t.Context(), &events.StudyStable{}); !errors.Is(err, errNotConnected) {
		t.Fatalf("Publish = %v, want errNotConnected", err)
	}
}

// slowSource is an Orthanc that answers (503: the rule fails, the study
// goes routine) only once answer is called or its request is given up.
type slowSource struct {
	answer func()

	mu                   sync.Mutex
	inFlight, most, seen int
}

// counts returns the requests being answered, the most at once, and all.
func (s *slowSource) counts() (inFlight, most, seen int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight, s.most, s.seen
}

// slowSourcePrioritizer is a prioritizer whose rule reads a slowSource,
// on a real JetStream.
func slowSourcePrioritizer(t *testing.T) (p *prioritizer, ns *testnats.Server, src *slowSource) {
	t.Helper()
	src = &slowSource{}
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src.mu.Lock()
		src.inFlight++
		src.seen++
		src.most = max(src.most, src.inFlight)
		src.mu.Unlock()
		defer func() {
			src.mu.Lock()
			src.inFlight--
			src.mu.Unlock()
		}()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
	}))
	t.Cleanup(slow.Close)
	var once sync.Once
	src.answer = func() { once.Do(func() { close(release) }) }
	t.Cleanup(src.answer) // before slow.Close, which waits for the handlers
	sources, err := newSources(&config.Orthanc{URL: slow.URL, SourceName: "main"})
	if err != nil {
		t.Fatal(err)
	}
	ns = testnats.Start(t)
	if _, err := natsjs.DefaultTopology().EnsureEvents(t.Context(), ns.JS); err != nil {
		t.Fatal(err)
	}
	p, err = newPrioritizer(ns.JS, "'MR' in study.modalities", sources, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return p, ns, src
}

// The ingest's stop bounds the orchestrators are given cover its HTTP
// grace, which lets a webhook waiting INGEST_PUBLISH_TIMEOUT for
// JetStream be answered, and then the triage's wait.
func TestIngestShutdownGraceCoversPublishTimeout(t *testing.T) {
	if got := ingestHTTPGrace(13*time.Second) + triageShutdownWait; got > IngestShutdownGrace {
		t.Errorf("with a 13 s publish timeout the ingest takes up to %s to stop, IngestShutdownGrace says %s", got, IngestShutdownGrace)
	}
	if got := ingestHTTPGrace(config.MaxIngestPublishTimeout) + triageShutdownWait; got > IngestMaxShutdownGrace {
		t.Errorf("with the longest publish timeout the ingest takes up to %s to stop, IngestMaxShutdownGrace says %s", got, IngestMaxShutdownGrace)
	}
	for _, timeout := range []time.Duration{100 * time.Millisecond, 10 * time.Second, 20 * time.Second, config.MaxIngestPublishTimeout} {
		if g := ingestHTTPGrace(timeout); g < HTTPShutdownGrace || g <= timeout {
			t.Errorf("ingestHTTPGrace(%s) = %s: want at least %s and more than the timeout", timeout, g, HTTPShutdownGrace)
		}
	}
}

// A webhook event whose triage copy gets no acknowledgement is triaged all
// the same: JetStream may have stored that copy (an acknowledgement lost
// in a leader election), and nothing else would take it to a lane. Orthanc
// is still told of the failure.
func TestUnansweredTriageCopyStillTriaged(t *testing.T) {
	sources, err := newSources(&config.Orthanc{URL: "http://" + testharness.FreeAddr(t), SourceName: "main"}) // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	ns := testnats.Start(t)
	if _, err := natsjs.DefaultTopology().EnsureEvents(t.Context(), ns.JS); err != nil {
		t.Fatal(err)
	}
	p, err := newPrioritizer(ns.JS, "'MR' in study.modalities", sources, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	p.timeout = time.Second
	ev, err := events.NewStudyStable("main", "66666666-66666666-66666666-66666666-66666666", "1.2.3", "20261203T101500")
	if err != nil {
		t.Fatal(err)
	}
	// A deadline already past: the publish ends unanswered.
	ctx, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	pub := webhookPublisher{p: p, ctx: t.Context()}
	if _, err := pub.Publish(ctx, ev); !natsjs.Unanswered(err) {
		t.Fatalf("Publish = %v, want an unanswered publish", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for subjectCounts(t, ns.JS)["stowline.study.stable.main"] != 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := subjectCounts(t, ns.JS); got["stowline.study.stable.main"] != 1 {
		t.Fatalf("subjects %v, want the event in the routine lane", got)
	}
}

// A webhook event whose triage copy JetStream refuses (an answer, not a
// lost one) gives its place in the triage backlog back: nothing triages
// it, and Orthanc is told of the failure. Were it kept, each refusal (a
// full stream refuses every event) would take a place for good, and once
// the backlog was full every webhook event would go routine unread.
func TestRefusedTriageCopyFreesItsPlace(t *testing.T) {
	for _, tt := range []struct {
		name   string
		refuse func(t *testing.T, p *prioritizer, ns *testnats.Server)
		want   error
	}{
		{"stream full", func(t *testing.T, p *prioritizer, ns *testnats.Server) {
			// An operator's cap on the event stream, reached.
			s, err := ns.JS.Stream(t.Context(), natsjs.EventStream)
			if err != nil {
				t.Fatal(err)
			}
			cfg := s.CachedInfo().Config
			cfg.MaxMsgs = 1
			if _, err := ns.JS.UpdateStream(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
			filler, err := events.NewStudyStable("main", "99999999-99999999-99999999-99999999-99999999", "1.2.9", "20261203T101500")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(t.Context(), filler); err != nil {
				t.Fatal(err)
			}
		}, natsjs.ErrStorageFull},
		{"publish refused", func(t *testing.T, p *prioritizer, ns *testnats.Server) {
			p.js = refusingJetStream{JetStream: p.js, err: errExpectedStream}
		}, errExpectedStream},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, ns, _ := slowSourcePrioritizer(t)
			tt.refuse(t, p, ns)
			ev, err := events.NewStudyStable("main", "66666666-66666666-66666666-66666666-66666666", "1.2.3", "20261203T101500")
			if err != nil {
				t.Fatal(err)
			}
			_, err = (webhookPublisher{p: p, ctx: t.Context()}).Publish(t.Context(), ev)
			if !errors.Is(err, tt.want) || natsjs.Unanswered(err) {
				t.Fatalf("Publish = %v, want the refusal, %v", err, tt.want)
			}
			if n := p.pending.Load(); n != 0 {
				t.Errorf("%d studies in the triage backlog after the refusal, want 0", n)
			}
		})
	}
}

// errExpectedStream is JetStream's refusal of a publish whose expected
// stream is not the subject's.
var errExpectedStream = &jetstream.APIError{Code: 400, ErrorCode: 10060, Description: "expected stream does not match"}

// refusingJetStream is a JetStream that answers every publish with err.
type refusingJetStream struct {
	jetstream.JetStream
	err error
}

func (r refusingJetStream) PublishMsg(context.Context, *nats.Msg, ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return nil, r.err
}

// A burst of webhook events faster than the rule's reads (a bulk
// migration under a rule that reads metadata) fills the triage backlog,
// and no more: each event beyond it goes in the routine lane at once,
// unread and counted, rather than hold a goroutine until the ingest runs
// out of memory. The fill is logged once, and so is the room again.
func TestTriageBacklogBounded(t *testing.T) {
	p, ns, src := slowSourcePrioritizer(t)
	var logs bytes.Buffer // read once the triages are done
	p.log = slog.New(slog.NewTextHandler(&logs, nil))
	p.backlog = 3 * triageReads
	// No read may time out (going routine as rule_error) while a loaded
	// host publishes the burst and the checks run.
	p.timeout = time.Minute
	const overflow = 5
	for i := range p.backlog + overflow {
		ev, err := events.NewStudyStable("main", fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i), "1.2.3", "20261203T101500")
		if err != nil {
			t.Fatal(err)
		}
		ack, err := (webhookPublisher{p: p, ctx: t.Context()}).Publish(t.Context(), ev)
		if err != nil || ack.Duplicate {
			t.Fatalf("Publish %d = %+v, %v; want stored", i, ack, err)
		}
	}
	waitFor(t, "triageReads studies read at once", func() bool { n, _, _ := src.counts(); return n == triageReads })
	if n := p.pending.Load(); n != p.backlog {
		t.Errorf("%d studies in triage, want the backlog's %d", n, p.backlog)
	}
	got := subjectCounts(t, ns.JS)
	if got[natsjs.TriageSubject("main")] != uint64(p.backlog) || got["stowline.study.stable.main"] != overflow {
		t.Errorf("subjects %v, want %d on the triage subject and the %d beyond it in the routine lane", got, p.backlog, overflow)
	}
	if n := testutil.ToFloat64(p.events.WithLabelValues("routine", "triage_full")); n != overflow {
		t.Errorf(`stowline_ingest_priority_total{priority="routine",by="triage_full"} = %v, want %d`, n, overflow)
	}
	src.answer() // the reads end (503: the rule fails, the studies go routine)
	waitFor(t, "every study in the routine lane", func() bool {
		return subjectCounts(t, ns.JS)["stowline.study.stable.main"] == uint64(p.backlog+overflow)
	})
	p.triaging.Wait()
	for _, msg := range []string{"the triage backlog is full", "the triage backlog has room again"} {
		if n := strings.Count(logs.String(), msg); n != 1 {
			t.Errorf("logged %q %d times, want once:\n%s", msg, n, logs.String())
		}
	}
}

// A webhook event whose triage copy is stored (Orthanc told 202) but whose
// lane refuses it for the whole triage budget is counted: with the
// reconciler off nothing else queues that study, and the log line alone
// reached no alert. One stored in its lane is not counted.
func TestTriageNotQueuedCounted(t *testing.T) {
	for _, tt := range []struct {
		name     string
		maxMsgs  int64 // the event stream's cap; 1 holds the triage copy only
		wantLane uint64
		wantLost float64
	}{
		{"lane stored", -1, 1, 0},
		{"lane refused for the budget", 1, 0, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, ns, src := slowSourcePrioritizer(t)
			src.answer() // the source answers at once (503: the rule fails, routine)
			p.budget = 1500 * time.Millisecond
			s, err := ns.JS.Stream(t.Context(), natsjs.EventStream)
			if err != nil {
				t.Fatal(err)
			}
			cfg := s.CachedInfo().Config
			cfg.MaxMsgs = tt.maxMsgs
			if _, err := ns.JS.UpdateStream(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
			ev, err := events.NewStudyStable("main", "66666666-66666666-66666666-66666666-66666666", "1.2.3", "20261203T101500")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := (webhookPublisher{p: p, ctx: t.Context()}).Publish(t.Context(), ev); err != nil {
				t.Fatalf("Publish = %v, want the triage copy stored", err)
			}
			p.triaging.Wait()
			got := subjectCounts(t, ns.JS)
			if got[natsjs.TriageSubject("main")] != 1 || got["stowline.study.stable.main"] != tt.wantLane {
				t.Errorf("subjects %v, want the triage copy and %d in the routine lane", got, tt.wantLane)
			}
			if n := testutil.ToFloat64(p.notQueued); n != tt.wantLost {
				t.Errorf("stowline_ingest_triage_not_queued_total = %v, want %v", n, tt.wantLost)
			}
		})
	}
}

// TestIngestCountsNATSReconnects: while the ingest is cut off from NATS
// its readiness fails, and a Service refuses Orthanc's posts before the
// webhook counts them; the reconnect is counted instead, for
// StowlineWebhookNotStored.
func TestIngestCountsNATSReconnects(t *testing.T) {
	ns := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = testharness.FreePort(t), false })
	c, err := natsjs.Connect(t.Context(), natsjs.ConnectOptions{URL: ns.ClientURL()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	reconnects := natsReconnects(c.NC)
	if n := testutil.ToFloat64(reconnects); n != 0 {
		t.Fatalf("stowline_ingest_nats_reconnects_total = %v at start, want 0", n)
	}
	id, err := c.NC.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.NATSServer().DisconnectClientByID(id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reconnect counted", func() bool { return testutil.ToFloat64(reconnects) == 1 && c.NC.IsConnected() })
}
