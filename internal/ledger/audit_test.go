package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// publish queues an event in the low lane, as the forwarder audit
// command does.
func publish(js jetstream.JetStream) func(context.Context, string, *events.StudyStable) (*jetstream.PubAck, error) {
	return func(ctx context.Context, destination string, ev *events.StudyStable) (*jetstream.PubAck, error) {
		msgID := ev.MsgID()
		if destination != "" {
			msgID += "/audit/" + destination + "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
		}
		return natsjs.PublishTo(ctx, js, natsjs.LaneSubject(events.PriorityLow, destination, ev.Source), ev, msgID)
	}
}

func upload(t *testing.T, o *testharness.Orthanc, uid string, n int) string {
	t.Helper()
	if uid == "" {
		uid = dicomgen.NewUID()
	}
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: uid, Series: 1, InstancesPerSeries: n, Rows: 16, Columns: 16})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, files...); len(res.Failed) > 0 {
		t.Fatal(res.Failed)
	}
	return uid
}

func run(t *testing.T, a *ledger.Auditor, enqueue bool) (map[string]ledger.Finding, ledger.Summary) {
	t.Helper()
	found := map[string]ledger.Finding{}
	sum, err := a.Run(context.Background(), enqueue, func(f ledger.Finding) error {
		found[f.Destination+"/"+f.StudyInstanceUID] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found, sum
}

// waitNextSecond waits until the wall clock is in a later second than when
// it was called: what Orthanc stores after it gets a later LastUpdate than
// what it stored before.
func waitNextSecond(t *testing.T) {
	t.Helper()
	start := time.Now().Unix()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Unix() == start {
		if time.Now().After(deadline) {
			t.Fatal("the wall clock did not move on to the next second")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Two destinations: the audit reports a study once for each destination
// that lacks its current state, and enqueues it for those only.
func TestAudit(t *testing.T) {
	testharness.ForEachRelease(t, testAudit)
}

func testAudit(t *testing.T, rel testharness.Release) {
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "audit-src", StableAge: 2, Release: rel})
	client, err := orthancapi.New(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	ns := testnats.Start(t)
	ctx := context.Background()
	ledgers := map[string]*ledger.Ledger{}
	var dests []ledger.Destination
	for _, d := range []string{natsjs.DefaultDestination, "ai"} {
		kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, d)
		if err != nil {
			t.Fatal(err)
		}
		ledgers[d] = ledger.New(ns.JS, kv)
		dests = append(dests, ledger.Destination{Name: d, Records: ledgers[d]})
	}
	a, err := ledger.NewAuditor(ledger.AuditOptions{
		Sources:      []ledger.Source{{Name: "src", Orthanc: client}},
		Destinations: dests,
		Publish:      publish(ns.JS),
		PageSize:     4, // pages of four studies, overlapping
	})
	if err != nil {
		t.Fatal(err)
	}

	forwarded, changed, never := upload(t, o, "", 2), upload(t, o, "", 1), upload(t, o, "", 1)
	o.WaitStable(t, 20*time.Second)
	studies, err := client.Studies(ctx, 0, 100)
	if err != nil || len(studies) != 3 {
		t.Fatalf("Studies = %d, %v", len(studies), err)
	}
	record := func(uid string, destinations ...string) {
		t.Helper()
		for _, s := range studies {
			if s.StudyInstanceUID != uid {
				continue
			}
			ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "src",
				OrthancStudyID: s.ID, StudyInstanceUID: s.StudyInstanceUID, LastUpdate: s.LastUpdate}
			for _, d := range destinations {
				if err := ledgers[d].Record(ctx, ev); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// The forwarders completed these forwards.
	record(forwarded, natsjs.DefaultDestination, "ai")
	record(changed, natsjs.DefaultDestination)
	found, sum := run(t, a, false)
	if len(found) != 3 || found["default/"+never].Reason != ledger.ReasonNeverForwarded ||
		found["ai/"+never].Reason != ledger.ReasonNeverForwarded || found["ai/"+changed].Reason != ledger.ReasonNeverForwarded {
		t.Fatalf("findings = %+v, want %s at both destinations and %s at ai", found, never, changed)
	}
	if sum != (ledger.Summary{Studies: 3, Forwarded: 1, Findings: 3, Missing: 2}) {
		t.Errorf("summary = %+v", sum)
	}

	// The default destination gets the third study; an instance arrives
	// later in the second (LastUpdate has a resolution of a second, so it
	// must arrive in a later second), and a new study is still receiving.
	record(never, natsjs.DefaultDestination)
	waitNextSecond(t)
	upload(t, o, changed, 1)
	o.WaitStable(t, 20*time.Second)
	upload(t, o, "", 1)
	found, sum = run(t, a, true)
	if len(found) != 3 || found["ai/"+never].Reason != ledger.ReasonNeverForwarded ||
		found["default/"+changed].Reason != ledger.ReasonChanged || found["default/"+changed].ForwardedLastUpdate == "" ||
		found["default/"+changed].ForwardedLastUpdate >= found["default/"+changed].LastUpdate ||
		found["ai/"+changed].Reason != ledger.ReasonNeverForwarded {
		t.Fatalf("findings = %+v, want %s at ai, and %s at both (changed since its forward at default)", found, never, changed)
	}
	for key, f := range found {
		if !f.Enqueued || f.Duplicate {
			t.Errorf("%s: enqueued=%v duplicate=%v, want a new event", key, f.Enqueued, f.Duplicate)
		}
	}
	if sum.Studies != 4 || sum.Unstable != 1 || sum.Enqueued != 3 {
		t.Errorf("summary = %+v, want 4 studies, 1 unstable, 3 enqueued", sum)
	}
	// The study only ai lacks went to ai only; the one both lack, to both
	// in one event.
	if n := subjectCount(t, ns, natsjs.LaneSubject(events.PriorityLow, "ai", "src")); n != 1 {
		t.Errorf("%d events for ai only, want 1", n)
	}
	if n := subjectCount(t, ns, natsjs.LaneSubject(events.PriorityLow, "", "src")); n != 1 {
		t.Errorf("%d events for every destination, want 1", n)
	}
	// Enqueued again within the dedupe window: JetStream keeps one event
	// for every destination, and counts it apart; the events for one
	// destination have IDs of their own each time, and are queued again.
	// (The study still receiving may have become stable meanwhile: it is
	// new.)
	again, sum := run(t, a, true)
	for key := range found {
		f := again[key]
		if want := strings.HasSuffix(key, "/"+changed); !f.Enqueued || f.Duplicate != want {
			t.Errorf("second --enqueue of %s: %+v, want enqueued, duplicate %v", key, f, want)
		}
	}
	if sum.Duplicates != 2 || sum.Enqueued < 1 {
		t.Errorf("second --enqueue: summary %+v, want 2 duplicates (the event for both) and at least 1 enqueued", sum)
	}
	for _, d := range []string{"default", "ai"} {
		if _, ok := again[d+"/"+forwarded]; ok {
			t.Errorf("the forwarded, unchanged study %s is reported for %s", forwarded, d)
		}
	}
}

// subjectCount is how many messages the event stream holds on subject.
func subjectCount(t *testing.T, ns *testnats.Server, subject string) uint64 {
	t.Helper()
	s, err := ns.JS.Stream(context.Background(), natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// fakeOrthanc lists fixed stable studies.
type fakeOrthanc struct{ studies []orthancapi.Study }

func (f fakeOrthanc) System(context.Context) (orthancapi.System, error) {
	return orthancapi.System{Name: "src"}, nil
}

func (f fakeOrthanc) Studies(_ context.Context, since, limit int) ([]orthancapi.Study, error) {
	if since >= len(f.studies) {
		return nil, nil
	}
	return f.studies[since:min(len(f.studies), since+limit)], nil
}

type noRecords struct{}

func (noRecords) Lookup(context.Context, string, string) (ledger.Record, error) {
	return ledger.Record{}, ledger.ErrNotRecorded
}

// Auditing some of the destinations (--destination), a study they all
// lack is queued for each of them only, never for every destination.
func TestAuditOfSomeDestinationsEnqueuesForThemOnly(t *testing.T) {
	study := orthancapi.Study{ID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500", IsStable: true}
	var published []string
	for _, some := range []bool{false, true} {
		published = nil
		a, err := ledger.NewAuditor(ledger.AuditOptions{
			Sources:      []ledger.Source{{Name: "src", Orthanc: fakeOrthanc{[]orthancapi.Study{study}}}},
			Destinations: []ledger.Destination{{Name: "ai", Records: noRecords{}}},
			Some:         some,
			Publish: func(_ context.Context, destination string, _ *events.StudyStable) (*jetstream.PubAck, error) {
				published = append(published, destination)
				return &jetstream.PubAck{}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Run(context.Background(), true, func(ledger.Finding) error { return nil }); err != nil {
			t.Fatal(err)
		}
		want := ""
		if some {
			want = "ai"
		}
		if len(published) != 1 || published[0] != want {
			t.Errorf("some=%v: published for %q, want [%q]", some, published, want)
		}
	}
}

// TestAuditCountsDuplicatesApart: an event JetStream dropped as a
// duplicate was counted as enqueued, and the audit exited 0 having
// queued nothing; it is counted apart.
func TestAuditCountsDuplicatesApart(t *testing.T) {
	study := orthancapi.Study{ID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500", IsStable: true}
	for _, tt := range []struct {
		duplicate bool
		want      ledger.Summary
	}{
		{false, ledger.Summary{Studies: 1, Findings: 1, Missing: 1, Enqueued: 1}},
		{true, ledger.Summary{Studies: 1, Findings: 1, Missing: 1, Duplicates: 1}},
	} {
		a, err := ledger.NewAuditor(ledger.AuditOptions{
			Sources:      []ledger.Source{{Name: "src", Orthanc: fakeOrthanc{[]orthancapi.Study{study}}}},
			Destinations: []ledger.Destination{{Name: "ai", Records: noRecords{}}},
			Publish: func(context.Context, string, *events.StudyStable) (*jetstream.PubAck, error) {
				return &jetstream.PubAck{Duplicate: tt.duplicate}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if sum, err := a.Run(t.Context(), true, func(ledger.Finding) error { return nil }); err != nil || sum != tt.want {
			t.Errorf("duplicate=%v: summary %+v, %v; want %+v", tt.duplicate, sum, err, tt.want)
		}
	}
}

// One source Orthanc down does not leave the others unaudited: the audit
// stopped at the first source it could not read ("main", down for the
// weekend), and reported nothing of "cardio" behind it. Now cardio's
// missing study is reported and enqueued, and the error names main.
// Real Orthancs, main stopped.
func TestAuditGoesOnPastAnUnreachableSource(t *testing.T) {
	mainOrthanc := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "audit-main"})
	cardio := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "audit-cardio", StableAge: 2})
	mainClient, err := orthancapi.New(mainOrthanc.URL)
	if err != nil {
		t.Fatal(err)
	}
	cardioClient, err := orthancapi.New(cardio.URL)
	if err != nil {
		t.Fatal(err)
	}
	uid := upload(t, cardio, "", 1)
	cardio.WaitStable(t, 20*time.Second)
	mainOrthanc.Stop(t)
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ledger.NewAuditor(ledger.AuditOptions{
		Sources:      []ledger.Source{{Name: "main", Orthanc: mainClient}, {Name: "cardio", Orthanc: cardioClient}},
		Destinations: []ledger.Destination{{Name: natsjs.DefaultDestination, Records: ledger.New(ns.JS, kv)}},
		Publish:      publish(ns.JS),
	})
	if err != nil {
		t.Fatal(err)
	}
	var found []ledger.Finding
	sum, err := a.Run(t.Context(), true, func(f ledger.Finding) error {
		found = append(found, f)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "source main") {
		t.Errorf("err = %v, want one naming source main", err)
	}
	if len(found) != 1 || found[0].Source != "cardio" || found[0].StudyInstanceUID != uid || !found[0].Enqueued {
		t.Fatalf("findings = %+v, want cardio's study %s enqueued", found, uid)
	}
	if sum.Studies != 1 || sum.Enqueued != 1 {
		t.Errorf("summary = %+v", sum)
	}
}

// records holds fixed records by Orthanc study ID.
type records map[string]ledger.Record

func (r records) Lookup(_ context.Context, _, id string) (ledger.Record, error) {
	rec, ok := r[id]
	if !ok {
		return ledger.Record{}, ledger.ErrNotRecorded
	}
	return rec, nil
}

// A study pacs forwarded, missing at ai, is "probably queued" only while
// ai holds an event as old as pacs's forward (a minute's margin): its
// own event was stored before. An event held since, or a forward older
// than the stream's MaxAge (the event expired), does not hold it back.
func TestAuditProbablyQueuedByTime(t *testing.T) {
	study := orthancapi.Study{ID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500", IsStable: true}
	now := time.Now()
	week := 7 * 24 * time.Hour
	for _, tt := range []struct {
		name      string
		forwarded time.Time // at pacs
		held      time.Time // ai's oldest event
		maxAge    time.Duration
		want      ledger.Summary
		asked     bool // Held called
	}{
		{"nothing held", now.Add(-time.Hour), time.Time{}, week, ledger.Summary{Enqueued: 1}, true},
		{"held since", now.Add(-time.Hour), now.Add(-58 * time.Minute), week, ledger.Summary{Enqueued: 1}, true},
		{"held before", now.Add(-time.Hour), now.Add(-2 * time.Hour), week, ledger.Summary{ProbablyQueued: 1}, true},
		{"held within the margin", now.Add(-time.Hour), now.Add(-time.Hour + 30*time.Second), week, ledger.Summary{ProbablyQueued: 1}, true},
		{"expired", now.Add(-week - time.Hour), now.Add(-week - 2*time.Hour), week, ledger.Summary{Enqueued: 1}, false},
		{"no MaxAge", now.Add(-week - time.Hour), now.Add(-week - 2*time.Hour), 0, ledger.Summary{ProbablyQueued: 1}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			asked := false
			a, err := ledger.NewAuditor(ledger.AuditOptions{
				Sources: []ledger.Source{{Name: "src", Orthanc: fakeOrthanc{[]orthancapi.Study{study}}}},
				Destinations: []ledger.Destination{{Name: "ai", Records: noRecords{}},
					{Name: "pacs", Records: records{study.ID: {LastUpdate: study.LastUpdate, Stored: tt.forwarded}}}},
				Publish: func(context.Context, string, *events.StudyStable) (*jetstream.PubAck, error) {
					return &jetstream.PubAck{}, nil
				},
				Held: func(_ context.Context, destination string) (time.Time, error) {
					asked = true
					if destination != "ai" {
						t.Errorf("held of %s asked", destination)
					}
					return tt.held, nil
				},
				EventsMaxAge: tt.maxAge,
			})
			if err != nil {
				t.Fatal(err)
			}
			sum, err := a.Run(t.Context(), true, func(ledger.Finding) error { return nil })
			tt.want.Studies, tt.want.Findings, tt.want.Missing = 1, 1, 1
			if err != nil || sum != tt.want || asked != tt.asked {
				t.Errorf("summary %+v, %v, held asked %v; want %+v, asked %v", sum, err, asked, tt.want, tt.asked)
			}
		})
	}
}

// The study's event was stored no later than its first forward: with
// several destinations holding it, that is the earliest of their records
// that counts, in whatever order the destinations are listed. ai holds
// events from between pacs's forward and archive's only: it took the
// study's event and lost it, and the audit queues it again.
func TestAuditProbablyQueuedByTheFirstForward(t *testing.T) {
	study := orthancapi.Study{ID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500", IsStable: true}
	now := time.Now()
	recorded := func(at time.Time) records {
		return records{study.ID: {LastUpdate: study.LastUpdate, Stored: at}}
	}
	pacs := ledger.Destination{Name: "pacs", Records: recorded(now.Add(-time.Hour))}
	archive := ledger.Destination{Name: "archive", Records: recorded(now.Add(-10 * time.Minute))}
	for _, tt := range []struct {
		name   string
		others []ledger.Destination
	}{
		{"first forward listed first", []ledger.Destination{pacs, archive}},
		{"first forward listed last", []ledger.Destination{archive, pacs}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ledger.NewAuditor(ledger.AuditOptions{
				Sources:      []ledger.Source{{Name: "src", Orthanc: fakeOrthanc{[]orthancapi.Study{study}}}},
				Destinations: append([]ledger.Destination{{Name: "ai", Records: noRecords{}}}, tt.others...),
				Publish: func(context.Context, string, *events.StudyStable) (*jetstream.PubAck, error) {
					return &jetstream.PubAck{}, nil
				},
				Held: func(context.Context, string) (time.Time, error) {
					return now.Add(-30 * time.Minute), nil
				},
				EventsMaxAge: 7 * 24 * time.Hour,
			})
			if err != nil {
				t.Fatal(err)
			}
			sum, err := a.Run(t.Context(), true, func(ledger.Finding) error { return nil })
			want := ledger.Summary{Studies: 1, Findings: 1, Missing: 1, Enqueued: 1}
			if err != nil || sum != want {
				t.Errorf("summary %+v, %v; want %+v", sum, err, want)
			}
		})
	}
}

// Every partial finding read ai's lane consumers again, 5 s each when one
// did not answer: a destination added to an archive made every study a
// finding. They are read once a run, again only for a study forwarded
// after the last read (its event may be newer), and a failed read is
// remembered: its findings are not queued, each with the problem.
func TestAuditReadsHeldOnceARun(t *testing.T) {
	now := time.Now()
	var studies []orthancapi.Study
	recs := records{}
	for i, at := range []time.Time{now.Add(-2 * time.Hour), now.Add(-time.Hour), now, now.Add(-time.Hour)} {
		st := orthancapi.Study{ID: "27f7126f-4f66fb14-03f4081b-f9341db2-5392598" + strconv.Itoa(i), StudyInstanceUID: "1.2.3." + strconv.Itoa(i), LastUpdate: "20261126T101500", IsStable: true}
		studies = append(studies, st)
		recs[st.ID] = ledger.Record{LastUpdate: st.LastUpdate, Stored: at}
	}
	for _, tt := range []struct {
		name  string
		err   error
		reads int
		want  ledger.Summary
	}{
		// The third study, forwarded now, reads again.
		{"read", nil, 2, ledger.Summary{Enqueued: 4}},
		{"unreadable", errors.New("no answer"), 1, ledger.Summary{NotEnqueued: 4}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reads := 0
			a, err := ledger.NewAuditor(ledger.AuditOptions{
				Sources:      []ledger.Source{{Name: "src", Orthanc: fakeOrthanc{studies}}},
				Destinations: []ledger.Destination{{Name: "ai", Records: noRecords{}}, {Name: "pacs", Records: recs}},
				Publish: func(context.Context, string, *events.StudyStable) (*jetstream.PubAck, error) {
					return &jetstream.PubAck{}, nil
				},
				Held: func(context.Context, string) (time.Time, error) {
					reads++
					return time.Time{}, tt.err
				},
				EventsMaxAge: 7 * 24 * time.Hour,
			})
			if err != nil {
				t.Fatal(err)
			}
			var problems int
			sum, err := a.Run(t.Context(), true, func(f ledger.Finding) error {
				if f.Problem != "" && strings.Contains(f.Problem, "no answer") {
					problems++
				}
				return nil
			})
			tt.want.Studies, tt.want.Findings, tt.want.Missing = 4, 4, 4
			if err != nil || sum != tt.want || reads != tt.reads || problems != tt.want.NotEnqueued {
				t.Errorf("summary %+v, %v, %d reads, %d problems; want %+v, %d reads", sum, err, reads, problems, tt.want, tt.reads)
			}
		})
	}
}

// A copy an operator queued for one destination alone (a backfill, a
// replay) is stored after the others' forward, so the time test does not
// see it, and a scheduled audit queued the study there again. A finding
// whose destination holds an event for it alone of its state (or a newer
// one) is now "already queued", nothing published for it; a copy of an
// older state does not count. A study every destination lacks gets its
// ordinary event unless each of them holds such a copy.
func TestAuditSeesCopiesQueuedForOneDestination(t *testing.T) {
	study := orthancapi.Study{ID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500", IsStable: true}
	key := natsjs.StudyKey{Source: "src", OrthancStudyID: study.ID}
	forwarded := records{study.ID: {LastUpdate: study.LastUpdate, Stored: time.Now()}}
	for _, tt := range []struct {
		name      string
		pacs      ledger.Records
		alone     map[string]map[natsjs.StudyKey]string // by destination
		err       error                                 // of HeldAlone
		want      ledger.Summary
		published []string // destinations of the events published
	}{
		{"its state", forwarded, map[string]map[natsjs.StudyKey]string{"ai": {key: study.LastUpdate}}, nil, ledger.Summary{Duplicates: 1}, nil},
		{"a newer state", forwarded, map[string]map[natsjs.StudyKey]string{"ai": {key: "20261127T000000"}}, nil, ledger.Summary{Duplicates: 1}, nil},
		{"an older state", forwarded, map[string]map[natsjs.StudyKey]string{"ai": {key: "20261125T000000"}}, nil, ledger.Summary{Enqueued: 1}, []string{"ai"}},
		{"another study", forwarded, map[string]map[natsjs.StudyKey]string{"ai": {{Source: "src", OrthancStudyID: "other"}: study.LastUpdate}}, nil, ledger.Summary{Enqueued: 1}, []string{"ai"}},
		{"unreadable", forwarded, nil, errors.New("no answer"), ledger.Summary{NotEnqueued: 1}, nil},
		{"missing at both, held at both", noRecords{}, map[string]map[natsjs.StudyKey]string{"ai": {key: study.LastUpdate}, "pacs": {key: study.LastUpdate}}, nil, ledger.Summary{Duplicates: 2}, nil},
		{"missing at both, held at ai", noRecords{}, map[string]map[natsjs.StudyKey]string{"ai": {key: study.LastUpdate}}, nil, ledger.Summary{Enqueued: 2}, []string{""}},
		{"missing at both, unreadable", noRecords{}, nil, errors.New("no answer"), ledger.Summary{Enqueued: 2}, []string{""}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var published []string
			a, err := ledger.NewAuditor(ledger.AuditOptions{
				Sources:      []ledger.Source{{Name: "src", Orthanc: fakeOrthanc{[]orthancapi.Study{study}}}},
				Destinations: []ledger.Destination{{Name: "ai", Records: noRecords{}}, {Name: "pacs", Records: tt.pacs}},
				Publish: func(_ context.Context, destination string, _ *events.StudyStable) (*jetstream.PubAck, error) {
					published = append(published, destination)
					return &jetstream.PubAck{}, nil
				},
				// ai holds nothing as old as pacs's forward.
				Held: func(context.Context, string) (time.Time, error) { return time.Time{}, nil },
				HeldAlone: func(_ context.Context, destination string) (map[natsjs.StudyKey]string, error) {
					return tt.alone[destination], tt.err
				},
				EventsMaxAge: 7 * 24 * time.Hour,
			})
			if err != nil {
				t.Fatal(err)
			}
			sum, err := a.Run(t.Context(), true, func(ledger.Finding) error { return nil })
			findings := tt.want.Duplicates + tt.want.Enqueued + tt.want.NotEnqueued
			tt.want.Studies, tt.want.Findings, tt.want.Missing = 1, findings, 1
			if err != nil || sum != tt.want || !slices.Equal(published, tt.published) {
				t.Errorf("summary %+v, %v, published for %q; want %+v, published for %q", sum, err, published, tt.want, tt.published)
			}
		})
	}
}

// electing records answers as a ledger's stream without a leader for its
// first unanswered reads (503), then as recorded.
type electing struct {
	unanswered int
	rec        ledger.Record
}

func (e *electing) Lookup(context.Context, string, string) (ledger.Record, error) {
	if e.unanswered > 0 {
		e.unanswered--
		return ledger.Record{}, fmt.Errorf("ledger: read: %w", &jetstream.APIError{Code: 503, Description: "JetStream system temporarily unavailable"})
	}
	return e.rec, nil
}

// A ledger read that JetStream does not answer, as while a NATS cluster
// elects its leader, is read again: the audit stopped at it.
func TestAuditReadsThroughALeaderElection(t *testing.T) {
	study := orthancapi.Study{ID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500", IsStable: true}
	a, err := ledger.NewAuditor(ledger.AuditOptions{
		Sources:      []ledger.Source{{Name: "src", Orthanc: fakeOrthanc{[]orthancapi.Study{study}}}},
		Destinations: []ledger.Destination{{Name: "ai", Records: &electing{unanswered: 1, rec: ledger.Record{LastUpdate: study.LastUpdate}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := a.Run(t.Context(), false, func(f ledger.Finding) error { t.Errorf("finding %+v", f); return nil })
	if err != nil || sum.Forwarded != 1 {
		t.Errorf("summary %+v, err %v; want the study forwarded, no error", sum, err)
	}
}

// meeting is a ledger whose reads wait until all of its peers' reads
// started (or 5 s passed), and records whether they did.
type meeting struct {
	arrived *sync.WaitGroup
	met     *atomic.Int32
	rec     ledger.Record
}

func (m meeting) Lookup(ctx context.Context, _, _ string) (ledger.Record, error) {
	m.arrived.Done()
	done := make(chan struct{})
	go func() { m.arrived.Wait(); close(done) }()
	select {
	case <-done:
		m.met.Add(1)
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
	}
	return m.rec, nil
}

// The destinations' ledgers are read at the same time for each study:
// one after another, an audit of a million studies and ten destinations
// was ten million sequential round trips.
func TestAuditReadsTheDestinationsAtOnce(t *testing.T) {
	study := orthancapi.Study{ID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500", IsStable: true}
	const n = 4
	var arrived sync.WaitGroup
	arrived.Add(n)
	var met atomic.Int32
	var dests []ledger.Destination
	for i := range n {
		dests = append(dests, ledger.Destination{Name: fmt.Sprintf("d%d", i), Records: meeting{&arrived, &met, ledger.Record{LastUpdate: study.LastUpdate}}})
	}
	a, err := ledger.NewAuditor(ledger.AuditOptions{
		Sources:      []ledger.Source{{Name: "src", Orthanc: fakeOrthanc{[]orthancapi.Study{study}}}},
		Destinations: dests,
	})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := a.Run(t.Context(), false, func(f ledger.Finding) error { t.Errorf("finding %+v", f); return nil })
	if err != nil || sum.Forwarded != 1 {
		t.Errorf("summary %+v, err %v; want the study forwarded, no error", sum, err)
	}
	if got := met.Load(); got != n {
		t.Errorf("%d of %d ledger reads overlapped all the others, want all", got, n)
	}
}

// failing is a ledger whose reads fail with err.
type failing struct{ err error }

func (f failing) Lookup(context.Context, string, string) (ledger.Record, error) {
	return ledger.Record{}, f.err
}

// A destination whose ledger read fails ends the study's other reads,
// read again through a leader election for up to 30 s, and the audit's
// error names it, not a read it cancelled.
func TestAuditFailureEndsTheOtherReads(t *testing.T) {
	study := orthancapi.Study{ID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500", IsStable: true}
	elect := &electing{unanswered: 1000}
	a, err := ledger.NewAuditor(ledger.AuditOptions{
		Sources: []ledger.Source{{Name: "src", Orthanc: fakeOrthanc{[]orthancapi.Study{study}}}},
		Destinations: []ledger.Destination{
			{Name: "electing", Records: elect},
			{Name: "broken", Records: failing{errors.New("ledger: read: permission denied")}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Run(t.Context(), false, func(f ledger.Finding) error { t.Errorf("finding %+v", f); return nil })
	if err == nil || !strings.Contains(err.Error(), "destination broken") || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("err %v, want the broken destination's failure", err)
	}
	if asked := 1000 - elect.unanswered; asked > 3 {
		t.Errorf("the electing ledger was read %d times after the other failed, want its wait ended", asked)
	}
}

// TestListKept: the studies recorded forwarded whose record keeps
// instances (a conflict skipped, an unproven copy, a warning that the
// destination changed them) are listed, with the kept UIDs, and only
// those forwarded within the window: the plain audit counts them
// forwarded, and only a Warn line named them before.
func TestListKept(t *testing.T) {
	selected := []orthancapi.Instance{{ID: "i1", SOPInstanceUID: "1.1"}, {ID: "i2", SOPInstanceUID: "1.2"}}
	many := make([]string, 1001) // past a record's bound: every instance kept
	for i := range many {
		many[i] = fmt.Sprintf("1.9.%d", i)
	}
	day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	records := []struct {
		k       int
		at      time.Time
		outcome ledger.Outcome
	}{
		{1, day, ledger.Outcome{Selected: selected, Kept: []string{"1.2"}}},
		{2, day, ledger.Outcome{Selected: selected}},
		{3, day, ledger.Outcome{NotSelected: true}},
		{4, day.Add(48 * time.Hour), ledger.Outcome{Selected: selected, Kept: many}},
		{5, day.Add(48 * time.Hour), ledger.Outcome{Selected: selected, Kept: []string{"1.1", "1.2"}}},
	}
	js, kv := ledger.NewTestBucket(t)
	for _, r := range records {
		ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "main",
			OrthancStudyID: sid(r.k), StudyInstanceUID: fmt.Sprintf("1.2.%d", r.k), LastUpdate: "20261201T100000"}
		l := ledger.New(js, kv, ledger.WithClock(func() time.Time { return r.at }))
		if err := l.Completed(t.Context(), ev, r.outcome); err != nil {
			t.Fatal(err)
		}
	}
	want := func(k int, at time.Time, all bool, kept ...string) ledger.KeptStudy {
		return ledger.KeptStudy{Destination: "archive", Source: "main", OrthancStudyID: sid(k), StudyInstanceUID: fmt.Sprintf("1.2.%d", k),
			LastUpdate: "20261201T100000", ForwardedAt: at, Kept: kept, KeptAll: all}
	}
	tests := []struct {
		name  string
		since time.Time
		want  []ledger.KeptStudy
	}{
		{"every record", time.Time{}, []ledger.KeptStudy{want(1, day, false, "1.2"), want(4, day.Add(48*time.Hour), true), want(5, day.Add(48*time.Hour), false, "1.1", "1.2")}},
		{"within the window", day.Add(time.Hour), []ledger.KeptStudy{want(4, day.Add(48*time.Hour), true), want(5, day.Add(48*time.Hour), false, "1.1", "1.2")}},
		{"none so recent", day.Add(72 * time.Hour), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []ledger.KeptStudy
			n, err := ledger.ListKept(t.Context(), "archive", ledger.New(js, kv), tt.since, func(k ledger.KeptStudy) error {
				got = append(got, k)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(got, func(a, b ledger.KeptStudy) int { return strings.Compare(a.OrthancStudyID, b.OrthancStudyID) })
			if n != len(tt.want) || !slices.EqualFunc(got, tt.want, func(a, b ledger.KeptStudy) bool {
				return a.Destination == b.Destination && a.Source == b.Source && a.OrthancStudyID == b.OrthancStudyID &&
					a.StudyInstanceUID == b.StudyInstanceUID && a.LastUpdate == b.LastUpdate && a.ForwardedAt.Equal(b.ForwardedAt) &&
					slices.Equal(a.Kept, b.Kept) && a.KeptAll == b.KeptAll
			}) {
				t.Errorf("ListKept = %d, %+v\nwant %+v", n, got, tt.want)
			}
		})
	}
	// A report failing stops the walk, its error returned.
	stop := errors.New("stdout closed")
	if _, err := ledger.ListKept(t.Context(), "archive", ledger.New(js, kv), time.Time{}, func(ledger.KeptStudy) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("ListKept with a failing report = %v, want %v", err, stop)
	}
}
