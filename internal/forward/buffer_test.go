package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// An instance the destination says it changed as it stored it (Coercion,
// Elements Discarded) is kept in the source and recorded as kept; one
// stored as sent with another warning (SOP class mismatch) is not.
func TestWarnedInstancesKept(t *testing.T) {
	k := &sink{warnings: map[string]int{"1.2.3.2": 0xB006, "1.2.3.3": 0xB000, "1.2.3.4": 0xB007}}
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	src := newMemSource(5)
	f := newForwarder(t, src, srv.URL, nil)
	rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"1.2.3.2", "1.2.3.3"}; !slices.Equal(rep.kept, want) {
		t.Errorf("kept %v, want %v", rep.kept, want)
	}
	var forwarded []string
	for _, in := range rep.forwarded {
		forwarded = append(forwarded, in.SOPInstanceUID)
	}
	if want := []string{"1.2.3.1", "1.2.3.4", "1.2.3.5"}; !slices.Equal(forwarded, want) {
		t.Errorf("buffer mode would delete %v, want %v", forwarded, want)
	}
	if len(rep.selected) != 5 || len(rep.listed) != 5 {
		t.Errorf("selected %d, listed %d; want 5 and 5", len(rep.selected), len(rep.listed))
	}
}

// An instance the destination said it changed (B000) stays kept when a
// later attempt of the study gets it answered stored without a word: one
// destination's forwarders read no ledger, and an attempt that failed on
// another instance recorded nothing there. Either way the later attempt
// counted it forwarded, and buffer mode deleted the only copy as sent.
func TestKeptByAnEarlierAttemptStaysKept(t *testing.T) {
	tests := []struct {
		name string
		// failures are the first attempt's failed instances.
		failures map[string]int
	}{
		{name: "after a forward of the study (its ack unconfirmed, a backfill)"},
		{name: "after an attempt that failed on another instance", failures: map[string]int{"1.2.3.3": 0xA700}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			failures := &memFailureLog{}
			// A forwarder in buffer mode answered by k, sharing the
			// record of stored instances.
			forwarder := func(k *sink) *Forwarder {
				srv := httptest.NewServer(k.handler(nil))
				t.Cleanup(srv.Close)
				return newForwarder(t, newMemSource(3), srv.URL, nil, func(o *Options) {
					o.Registerer = prometheus.NewRegistry()
					o.Failures = failures
					o.Completed = recordedOK
					o.CleanerFor = func(string) (SourceCleaner, error) { return &memCleaner{}, nil }
				})
			}
			ev := testEvent()
			first := forwarder(&sink{warnings: map[string]int{"1.2.3.2": 0xB000}, failures: tt.failures})
			rep, err := first.transfer(t.Context(), &Attempt{Event: ev, Number: 1})
			if (err != nil) != (tt.failures != nil) {
				t.Fatalf("first attempt: %v", err)
			}
			if err == nil && !slices.Equal(rep.kept, []string{"1.2.3.2"}) {
				t.Fatalf("first attempt kept %v, want [1.2.3.2]", rep.kept)
			}
			rep, err = forwarder(&sink{}).transfer(t.Context(), &Attempt{Event: ev, Number: 2})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rep.kept, []string{"1.2.3.2"}) {
				t.Errorf("second attempt kept %v, want [1.2.3.2]", rep.kept)
			}
			var forwarded []string
			for _, in := range rep.forwarded {
				forwarded = append(forwarded, in.SOPInstanceUID)
			}
			if want := []string{"1.2.3.1", "1.2.3.3"}; !slices.Equal(forwarded, want) {
				t.Errorf("buffer mode would delete %v, want %v", forwarded, want)
			}
		})
	}
}

// With one destination, an instance its ledger records as kept for the
// event's state of the study stays kept, also once the record of stored
// instances no longer tells (a backfill past the events' retention). A
// ledger or a record of stored instances that cannot be read fails the
// attempt before anything is sent: what to keep is unknown.
func TestKeptInTheLedgerStaysKept(t *testing.T) {
	tests := []struct {
		name             string
		err              error // KeptBefore's
		recordUnreadable bool  // the record of stored instances
		wantKept         []string
	}{
		{name: "read", wantKept: []string{"1.2.3.2"}},
		{name: "ledger unreadable", err: errors.New("ledger unreadable")},
		{name: "record unreadable", recordUnreadable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &sink{}
			srv := httptest.NewServer(k.handler(nil))
			t.Cleanup(srv.Close)
			record := &memFailureLog{}
			f := newForwarder(t, newMemSource(3), srv.URL, nil, func(o *Options) {
				o.Registerer = prometheus.NewRegistry()
				o.Failures, o.Completed = FailureLog(record), recordedOK
				if tt.recordUnreadable {
					o.Failures = &unreadableFailureLog{}
				}
				o.CleanerFor = func(string) (SourceCleaner, error) { return &memCleaner{}, nil }
				o.KeptBefore = func(context.Context, *events.StudyStable) (func(string) bool, error) {
					return func(uid string) bool { return uid == "1.2.3.2" }, tt.err
				}
			})
			rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent(), Number: 1})
			if tt.err != nil || tt.recordUnreadable {
				if Classify(err) != Transient || k.requests.Load() != 0 {
					t.Fatalf("got %v (class %s) after %d requests; want a transient failure, nothing sent", err, Classify(err), k.requests.Load())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rep.kept, tt.wantKept) {
				t.Errorf("kept %v, want %v", rep.kept, tt.wantKept)
			}
			if len(rep.forwarded) != 3-len(tt.wantKept) {
				t.Errorf("buffer mode would delete %d instances, want %d", len(rep.forwarded), 3-len(tt.wantKept))
			}
			// Kept by the ledger's word alone, it is not marked kept in
			// the record: the ledger's KeptAll names every instance, and
			// the marks would keep them all for good, in every later
			// state of the study.
			for id := range record.stored[testEvent().Source+"/"+testEvent().StudyInstanceUID] {
				if strings.HasPrefix(id, "kept:") {
					t.Errorf("record holds %s, written for an instance only the ledger kept", id)
				}
			}
		})
	}
}

// Two Orthanc instances of a study can share a SOP Instance UID in two
// series. The destination's answer names the UID, not the file: the
// answer for one confirmed both, and buffer mode deleted the copy the
// destination never took. The first copy is sent, the other refused: the
// study is partial and nothing is deleted.
func TestRepeatedSOPInstanceUIDRefused(t *testing.T) {
	k := &sink{}
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	src := newMemSource(4)
	again := &src.instances[3]
	again.SOPInstanceUID, again.SeriesInstanceUID = "1.2.3.2", "1.2.3.9"
	src.data[again.ID] = bytes.Repeat([]byte{1}, 1024) // the sink reads it as 1.2.3.2
	f := newForwarder(t, src, srv.URL, nil)
	rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
	var fe *Error
	if !errors.As(err, &fe) || fe.Class != Partial {
		t.Fatalf("err %v, want a partial study (buffer mode would delete %d instances)", err, len(rep.forwarded))
	}
	if len(fe.Instances) != 1 || fe.Instances[0].SOPInstanceUID != "1.2.3.2" || !strings.Contains(fe.Instances[0].Text, again.ID) {
		t.Errorf("refused %+v, want the second copy of 1.2.3.2, naming Orthanc instance %s", fe.Instances, again.ID)
	}
	if len(rep.forwarded) != 0 {
		t.Errorf("buffer mode would delete %v", rep.forwarded)
	}
	if rep.Selected != 4 || len(rep.selected) != 4 {
		t.Errorf("selected %d (%d), want 4: another destination's buffer mode must not take the copy as unwanted here", rep.Selected, len(rep.selected))
	}
}

// An "already exists" code that a custom STOW_CONFLICT_REASONS left out
// counts as stored, as the operator chose; but unless stowline sent that
// instance before, the destination's copy may hold other content (a
// corrected instance), and buffer mode deleted the correction.
func TestAlreadyExistsOutsideConflictRulesKept(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var stored []string
		for _, uid := range partUIDs(r) {
			if uid != "1.2.3.2" {
				stored = append(stored, `{"00081155":{"vr":"UI","Value":["`+uid+`"]}}`)
			}
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]},"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3.2"]},"00081197":{"vr":"US","Value":[%d]}}]}}`,
			strings.Join(stored, ","), dicomweb.FailureAzureAlreadyExists)
	}))
	t.Cleanup(srv.Close)
	f := newForwarder(t, newMemSource(3), srv.URL, nil, func(o *Options) {
		o.Conflicts = ConflictPolicy{Action: ConflictSkip, Rules: []dicomweb.ConflictRule{{Code: 0xA770, Mask: 0xFFFF}}}
	})
	rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
	if err != nil {
		t.Fatal(err)
	}
	var forwarded []string
	for _, in := range rep.forwarded {
		forwarded = append(forwarded, in.SOPInstanceUID)
	}
	if want := []string{"1.2.3.1", "1.2.3.3"}; !slices.Equal(forwarded, want) {
		t.Errorf("buffer mode would delete %v, want %v", forwarded, want)
	}
	if rep.Instances != 3 || rep.AlreadyStored != 1 || rep.Conflicts != 0 {
		t.Errorf("%d stored, %d already, %d conflicts; want 3, 1, 0", rep.Instances, rep.AlreadyStored, rep.Conflicts)
	}
}

// An answer naming, besides the request's instances, one of another
// request stored in a non-primary image set: that one is not this
// study's conflict to dead-letter.
func TestNonPrimaryOfAnotherRequestIgnored(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		items := []string{`{"00081155":{"vr":"UI","Value":["9.9.9"]},"00081190":{"vr":"UR","Value":["https://dicom-medical-imaging.us-east-1.amazonaws.com/datastore/d/studies/9/series/9/instances/9.9.9?imageSetId=abc"]}}`}
		for _, uid := range partUIDs(r) {
			items = append(items, `{"00081155":{"vr":"UI","Value":["`+uid+`"]}}`)
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
	}))
	t.Cleanup(srv.Close)
	f := newForwarder(t, newMemSource(2), srv.URL, nil)
	if rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()}); err != nil || rep.Instances != 2 {
		t.Fatalf("%d instances confirmed, err %v; want 2, nil", rep.Instances, err)
	}
}

// A de-identifying destination's answer names the copies' UIDs; every
// list of it, warnings too, is mapped back to the originals (a warning
// left unmapped would not keep its instance in buffer mode).
func TestMapBack(t *testing.T) {
	back := map[string]string{"2.25.1": "1.2.3.1", "2.25.2": "1.2.3.2", "2.25.3": "1.2.3.3"}
	res := &dicomweb.Result{
		Stored:        []dicomweb.Instance{{SOPInstanceUID: "2.25.1", WarningReason: dicomweb.WarningCoercion}},
		Failed:        []dicomweb.FailedInstance{{SOPInstanceUID: "2.25.2"}},
		Warnings:      []dicomweb.Warning{{SOPInstanceUID: "2.25.1", WarningReason: dicomweb.WarningCoercion}},
		OtherFailures: []dicomweb.FailedInstance{{SOPInstanceUID: "2.25.3"}},
	}
	mapBack(res, back)
	if res.Stored[0].SOPInstanceUID != "1.2.3.1" || res.Failed[0].SOPInstanceUID != "1.2.3.2" ||
		res.Warnings[0].SOPInstanceUID != "1.2.3.1" || res.OtherFailures[0].SOPInstanceUID != "1.2.3.3" {
		t.Errorf("mapped back: %+v", res)
	}
}

// fakeSelection is an Options.Select's selection: release decides the
// deletes, unselected what no destination selects (nil: none).
type fakeSelection struct {
	unselected func(context.Context) ([]orthancapi.Instance, error)
	release    func(context.Context) ([]orthancapi.Instance, error)
}

func (s fakeSelection) Unselected(ctx context.Context) ([]orthancapi.Instance, error) {
	if s.unselected == nil {
		return nil, nil
	}
	return s.unselected(ctx)
}

func (s fakeSelection) Release(ctx context.Context) ([]orthancapi.Instance, error) {
	return s.release(ctx)
}

// unselecting is a fakeSelection's unselected answering in, err.
func unselecting(in []orthancapi.Instance, err error) func(context.Context) ([]orthancapi.Instance, error) {
	return func(context.Context) ([]orthancapi.Instance, error) { return in, err }
}

// releasingBy is an Options.Select whose selection releases what release
// returns of the listing, and leaves none unselected.
func releasingBy(release func(listed []orthancapi.Instance) ([]orthancapi.Instance, error)) func(*events.StudyStable, []orthancapi.Instance) Selection {
	return func(_ *events.StudyStable, listed []orthancapi.Instance) Selection {
		return fakeSelection{release: func(context.Context) ([]orthancapi.Instance, error) { return release(listed) }}
	}
}

// leaving is a Router that leaves out the instances it names (an SR a rule
// excludes).
type leaving map[string]bool

func (l leaving) Select(_ context.Context, _, _ string, in []orthancapi.Instance) ([]orthancapi.Instance, error) {
	return slices.DeleteFunc(slices.Clone(in), func(i orthancapi.Instance) bool { return l[i.ID] }), nil
}

// Instances no destination's rules select stay in the source for good;
// they are counted as kept_unselected, once a study: with one destination
// by its forwarders, with several by those with Options.CountsUnselected.
func TestUnselectedInstancesCounted(t *testing.T) {
	src := newMemSource(3)
	sr := src.instances[2].ID
	// Several destinations: the others' rules select the SR, and all
	// is released.
	all := releasingBy(func(listed []orthancapi.Instance) ([]orthancapi.Instance, error) {
		return slices.DeleteFunc(slices.Clone(listed), func(i orthancapi.Instance) bool { return i.ID == sr }), nil
	})
	tests := []struct {
		name        string
		router      Router
		sel         func(*events.StudyStable, []orthancapi.Instance) Selection
		counts      bool  // Options.CountsUnselected
		completed   error // Options.Completed's
		wantDeleted int
		wantKept    float64
		wantResult  Result
	}{
		{name: "one destination, its rule excludes the SR", router: leaving{sr: true}, wantDeleted: 2, wantKept: 1},
		{name: "one destination whose rules select none of the study", router: leaving{src.instances[0].ID: true, src.instances[1].ID: true, sr: true}, wantKept: 3},
		// A redelivery after an ack not confirmed: the ledger records this
		// state forwarded, its delivery counted what stays.
		{name: "one destination whose rules select none of what is left of a study forwarded", router: leaving{src.instances[0].ID: true, src.instances[1].ID: true, sr: true},
			completed: fmt.Errorf("%w: recorded", ErrForwardedBefore), wantResult: ResultAlreadyForwarded},
		{name: "one destination without rules", wantDeleted: 3},
		// The selection's unselected, not the listing less what this one
		// selects (1).
		{name: "several, this one counts", router: leaving{sr: true}, counts: true, wantDeleted: 2, wantKept: 2,
			sel: func(ev *events.StudyStable, listed []orthancapi.Instance) Selection {
				return fakeSelection{unselected: unselecting(listed[:2], nil), release: all(ev, listed).Release}
			}},
		// The first destination's forwarders count it.
		{name: "several, another one counts", router: leaving{sr: true}, sel: all, wantDeleted: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rig := newBufferRig(t)
			f := newForwarder(t, src, rig.url, rig.cons, func(o *Options) {
				o.Registerer = prometheus.NewRegistry()
				o.Router = tt.router
				o.Completed = func(context.Context, *events.StudyStable, Completion) error { return tt.completed }
				o.CleanerFor = func(string) (SourceCleaner, error) { return rig.cleaner, nil }
				o.Select = tt.sel
				o.CountsUnselected = tt.counts
			})
			f.handle(t.Context(), rig.deliver(t), "")
			if len(rig.cleaner.deleted) != tt.wantDeleted {
				t.Errorf("deleted %d, want %d", len(rig.cleaner.deleted), tt.wantDeleted)
			}
			if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues("kept_unselected")); got != tt.wantKept {
				t.Errorf("kept_unselected = %v, want %v", got, tt.wantKept)
			}
			if tt.wantResult != "" {
				if got := testutil.ToFloat64(f.m.studies.WithLabelValues(string(tt.wantResult))); got != 1 {
					t.Errorf("studies{result=%q} = %v, want 1", tt.wantResult, got)
				}
			}
		})
	}
}

// A study buffer mode deleted before this destination's event came (acked
// as not selected) has no listing: the destinations' rules are not
// applied to it, which would fail on the study gone and warn.
func TestUnselectedNotCountedOfAStudyGone(t *testing.T) {
	asked := false
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
		o.Registerer = prometheus.NewRegistry()
		o.Select = func(*events.StudyStable, []orthancapi.Instance) Selection {
			asked = true
			return fakeSelection{unselected: unselecting(nil, orthancapi.ErrNotFound)}
		}
		o.CountsUnselected = true
	})
	f.countUnselected(t.Context(), testEvent(), Report{NotSelected: true, deletedNotSelected: true}, f.log)
	if asked {
		t.Error("the rules were applied to a study no longer in the source")
	}
}

// Shutdown stops the rules of kept_unselected as it stops the deletes:
// no warning for it.
func TestUnselectedQuietAtShutdown(t *testing.T) {
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
		o.Registerer = prometheus.NewRegistry()
		o.Select = func(*events.StudyStable, []orthancapi.Instance) Selection {
			return fakeSelection{unselected: func(ctx context.Context) ([]orthancapi.Instance, error) { return nil, ctx.Err() }}
		}
		o.CountsUnselected = true
	})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var logged bytes.Buffer
	rep := Report{Listed: 1, listed: newMemSource(1).instances}
	f.countUnselected(ctx, testEvent(), rep, slog.New(slog.NewTextHandler(&logged, nil)))
	if logged.Len() > 0 {
		t.Errorf("logged at shutdown: %s", logged.String())
	}
}

// kept_unselected is counted over the study as it was listed, before this
// forward's own deletes: the rules read a deleted series without its
// modality, and a study deleted whole not at all. orthancRules stands
// for every destination's rules (one CT|MR, one CT) reading Orthanc: the
// SRs are selected by none, and an instance no longer in the source
// reads as one no rule selects, a study with none left as not found.
func TestUnselectedCountedBeforeDeletes(t *testing.T) {
	tests := []struct {
		name        string
		sr          int  // the study's last sr instances are SRs
		gone        bool // another destination's forwarder deleted the study since it was listed
		wantDeleted int
		wantKept    float64
	}{
		{name: "part released: the SRs stay", sr: 2, wantDeleted: 4, wantKept: 2},
		{name: "all released", sr: 0, wantDeleted: 6},
		{name: "deleted whole by another destination", sr: 0, gone: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rig := newBufferRig(t)
			ev := rig.ev
			src := newMemSource(6)
			sr := map[string]bool{}
			for _, in := range src.instances[len(src.instances)-tt.sr:] {
				sr[in.ID] = true
			}
			orthancRules := func(_ *events.StudyStable, listed []orthancapi.Instance) Selection {
				gone := func() error {
					left := slices.DeleteFunc(slices.Clone(listed), func(in orthancapi.Instance) bool { return slices.Contains(rig.cleaner.deleted, in.ID) })
					if len(left) == 0 || tt.gone {
						return fmt.Errorf("%w: GET /studies/%s: %w", ErrRules, ev.OrthancStudyID, orthancapi.ErrNotFound)
					}
					return nil
				}
				return fakeSelection{
					unselected: func(context.Context) ([]orthancapi.Instance, error) {
						if err := gone(); err != nil {
							return nil, err
						}
						var unselected []orthancapi.Instance
						for _, in := range listed {
							// A deleted one's series is gone: no modality.
							if sr[in.ID] || slices.Contains(rig.cleaner.deleted, in.ID) {
								unselected = append(unselected, in)
							}
						}
						return unselected, nil
					},
					release: func(context.Context) ([]orthancapi.Instance, error) {
						if err := gone(); err != nil {
							return nil, err
						}
						return slices.DeleteFunc(slices.Clone(listed), func(in orthancapi.Instance) bool { return sr[in.ID] }), nil
					},
				}
			}
			var logged bytes.Buffer
			f := newForwarder(t, src, rig.url, rig.cons, func(o *Options) {
				o.Registerer = prometheus.NewRegistry()
				o.Logger = slog.New(slog.NewTextHandler(&logged, nil))
				o.Router = leaving(sr)
				o.Completed = recordedOK
				o.CleanerFor = func(string) (SourceCleaner, error) { return rig.cleaner, nil }
				o.Select = orthancRules
				o.CountsUnselected = true
			})
			f.handle(t.Context(), rig.deliver(t), "")
			if len(rig.cleaner.deleted) != tt.wantDeleted {
				t.Errorf("deleted %d, want %d", len(rig.cleaner.deleted), tt.wantDeleted)
			}
			if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues("kept_unselected")); got != tt.wantKept {
				t.Errorf("kept_unselected = %v, want %v", got, tt.wantKept)
			}
			if strings.Contains(logged.String(), "not counted") {
				t.Errorf("warned: %s", logged.String())
			}
		})
	}
}

// bufferRig is what a buffer mode test hands one delivery through: a
// destination storing all it is sent, a real JetStream consumer, the
// test event and the cleaner buffer mode deletes the study's instances
// through.
type bufferRig struct {
	url     string
	ns      *testnats.Server
	cons    jetstream.Consumer
	ev      *events.StudyStable
	cleaner *memCleaner
}

func newBufferRig(t *testing.T) *bufferRig {
	t.Helper()
	k := &sink{}
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	ns := testnats.Start(t)
	ev := testEvent()
	return &bufferRig{url: srv.URL, ns: ns, cons: consumer(t, ns), ev: ev, cleaner: &memCleaner{lastUpdate: ev.LastUpdate}}
}

// deliver publishes the rig's event and returns its first delivery.
func (r *bufferRig) deliver(t *testing.T) jetstream.Msg {
	t.Helper()
	return deliverOne(t, r.ns, r.cons, r.ev)
}

// bufferForwarder is a forwarder in buffer mode whose ledger records
// every forward, deleting the test event's study, unchanged since, through
// the cleaner returned; set sets the rest of its options.
func bufferForwarder(t *testing.T, set func(*Options)) (*Forwarder, *events.StudyStable, *memCleaner) {
	t.Helper()
	ev := testEvent()
	cleaner := &memCleaner{lastUpdate: ev.LastUpdate}
	f, _ := cleaningForwarder(t, cleaner, set)
	return f, ev, cleaner
}

// Buffer mode asks JetStream again while it does not answer, through a
// leader election, but not for ever: a ledger write the NATS user may not
// make times out alike, and the worker held the study's turn until
// shutdown. Past the bound the deletes count failed, and the warning
// names the possible cause. A rules failure is Orthanc's, even a timeout:
// not asked again (its selection remembers the study's reads, and would
// fail alike).
func TestReleaseUnansweredBounded(t *testing.T) {
	tests := []struct {
		name        string
		err         error // Release's
		wantWarning string
		// Each try on a selection made anew: a selection remembers its
		// reads of the study, a failed one too.
		fresh bool
	}{
		{name: "a ledger write unanswered", err: fmt.Errorf("ledger: write: %w", nats.ErrTimeout),
			wantWarning: "may not write that destination's ledger"},
		// Orthanc timing out: asked again, as JetStream not answering.
		{name: "the rules timing out", err: fmt.Errorf("destination ai: %w: GET /studies/...: %w", ErrRules, context.DeadlineExceeded),
			wantWarning: "rules could not be applied", fresh: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked, made atomic.Int32
			f, ev, cleaner := bufferForwarder(t, func(o *Options) {
				sel := releasingBy(func([]orthancapi.Instance) ([]orthancapi.Instance, error) {
					asked.Add(1)
					return nil, tt.err
				})
				o.Select = func(ev *events.StudyStable, listed []orthancapi.Instance) Selection {
					made.Add(1)
					return sel(ev, listed)
				}
			})
			instances := newMemSource(3).instances
			var logged bytes.Buffer
			f.unansweredFor = time.Second
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			f.deleteForwarded(ctx, ev, instances, instances, nil, slog.New(slog.NewTextHandler(&logged, nil)))
			if ctx.Err() != nil {
				t.Fatal("buffer mode asked JetStream again until its worker's context ended")
			}
			n, m := asked.Load(), made.Load()
			if n < 2 {
				t.Errorf("Release asked %d times, want again until the bound", n)
			}
			if want := map[bool]int32{false: 1, true: n}[tt.fresh]; m != want {
				t.Errorf("%d selections made for %d tries, want %d", m, n, want)
			}
			if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues("failed")); got != 3 || len(cleaner.deleted) > 0 {
				t.Errorf("failed = %v, deleted %v; want 3 failed, none deleted", got, cleaner.deleted)
			}
			if !strings.Contains(logged.String(), tt.wantWarning) {
				t.Errorf("the warning does not say %q: %s", tt.wantWarning, logged.String())
			}
		})
	}
}

// A study the destination's rules select none of, whose ack was not
// confirmed, has nothing of this destination's to delete: it counted the
// whole listing as deleted, gone, failed or waiting by its outcome, and
// released the others' instances besides.
func TestUnconfirmedNotSelectedDeletesNothing(t *testing.T) {
	rig := newBufferRig(t)
	src := newMemSource(2)
	f := newForwarder(t, src, rig.url, rig.cons, func(o *Options) {
		o.Registerer = prometheus.NewRegistry()
		o.Router = leaving{src.instances[0].ID: true, src.instances[1].ID: true}
		o.Completed = recordedOK
		o.CleanerFor = func(string) (SourceCleaner, error) { return rig.cleaner, nil }
		// The others stored it all (their last one released it).
		o.Select = releasingBy(func(listed []orthancapi.Instance) ([]orthancapi.Instance, error) { return listed, nil })
	})
	f.handle(t.Context(), arrivedAck{rig.deliver(t)}, "")
	if n := testutil.ToFloat64(f.m.studies.WithLabelValues(string(ResultAckFailed))); n != 1 {
		t.Fatalf("studies_total{result=ack_failed} = %v, want 1", n)
	}
	if len(rig.cleaner.deleted) > 0 {
		t.Errorf("deleted %v", rig.cleaner.deleted)
	}
	for _, result := range []string{"deleted", "gone", "failed", "skipped", "waiting"} {
		if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues(result)); got != 0 {
			t.Errorf("source_deletes_total{result=%s} = %v, want 0", result, got)
		}
	}
}

// A conflict replaced is recorded as replaced: the ledger's record of
// the same state, which an earlier delivery made keeping that instance
// (a conflict skipped before STOW_ON_CONFLICT became replace), keeps it
// no more, and buffer mode deletes its original once stored.
func TestReplacedConflictRecorded(t *testing.T) {
	const sop = "1.2.3.1" // newMemSource(1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom+json")
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusConflict)
			fmt.Fprintf(w, `{"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[%d]}}]}}`, sop, dicomweb.FailureAzureAlreadyExists)
			return
		}
		fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":[%q]}}]}}`, sop)
	}))
	t.Cleanup(srv.Close)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	var comps []Completion
	f := newForwarder(t, newMemSource(1), srv.URL, cons, func(o *Options) {
		o.Conflicts = ConflictPolicy{Action: ConflictReplace, Method: ReplacePut,
			Rules: []dicomweb.ConflictRule{{Code: dicomweb.FailureAzureAlreadyExists, Mask: 0xFFFF}}}
		o.Completed = func(_ context.Context, _ *events.StudyStable, c Completion) error {
			comps = append(comps, c)
			return nil
		}
	})
	f.handle(t.Context(), deliverOne(t, ns, cons, testEvent()), "")
	if len(comps) != 1 || !slices.Equal(comps[0].Replaced, []string{sop}) || len(comps[0].Kept) > 0 {
		t.Errorf("completions %+v, want one replacing %s, keeping nothing", comps, sop)
	}
}

// The bound on asking JetStream again is on the asking, not on one try:
// Select's Orthanc reads of a big study outlast it and must not be cut
// short (such a study was never deleted), and a try whose JetStream reply
// was lost ends at its own timeout, so that a next try comes.
func TestUnansweredBoundOnTheAsking(t *testing.T) {
	const bound = 300 * time.Millisecond
	tests := []struct {
		name string
		opts func(o *Options, calls *atomic.Int32)
	}{
		{"rules slower than the bound", func(o *Options, _ *atomic.Int32) {
			o.Select = func(_ *events.StudyStable, listed []orthancapi.Instance) Selection {
				return fakeSelection{release: func(ctx context.Context) ([]orthancapi.Instance, error) {
					select { // the rules reading the study from Orthanc, one instance at a time
					case <-ctx.Done():
						return nil, ctx.Err()
					case <-time.After(3 * bound):
						return listed, nil
					}
				}}
			}
		}},
		{"unconfigured reply lost once", func(o *Options, calls *atomic.Int32) {
			o.Unconfigured = func(ctx context.Context) ([]string, error) {
				if calls.Add(1) == 1 {
					<-ctx.Done()
					return nil, fmt.Errorf("consumer names: %w", ctx.Err())
				}
				return nil, nil
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			f, ev, cleaner := bufferForwarder(t, func(o *Options) { tt.opts(o, &calls) })
			instances := newMemSource(3).instances
			var logged bytes.Buffer
			f.unansweredFor, f.askTimeout = bound, bound/6
			f.deleteForwarded(t.Context(), ev, instances, instances, nil, slog.New(slog.NewTextHandler(&logged, nil)))
			if len(cleaner.deleted) != 3 {
				t.Errorf("deleted %v, want all 3; logged: %s", cleaner.deleted, logged.String())
			}
			if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues("failed")); got != 0 {
				t.Errorf("failed = %v, want 0", got)
			}
		})
	}
}

// A study gone from the source whose destination's ledger does not
// answer is asked again through a leader election, but not for ever (a
// read the NATS user may not make times out alike): past the bound it is
// taken for not deleted by buffer mode, and the worker's turn ends.
func TestDeletedByBufferModeUnansweredBounded(t *testing.T) {
	var asked atomic.Int32
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil, func(o *Options) {
		o.Registerer = prometheus.NewRegistry()
		o.Forwarded = func(context.Context, *events.StudyStable) (bool, error) {
			asked.Add(1)
			return false, fmt.Errorf("ledger: read: %w", nats.ErrTimeout)
		}
	})
	f.unansweredFor = time.Second
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var logged bytes.Buffer
	if _, ok := f.deletedByBufferMode(ctx, testEvent(), slog.New(slog.NewTextHandler(&logged, nil))); ok {
		t.Error("taken for deleted by buffer mode while the ledger did not answer")
	}
	if ctx.Err() != nil {
		t.Fatal("the ledger was asked again until the worker's context ended")
	}
	if asked.Load() < 2 || !strings.Contains(logged.String(), "ledger could not be read") {
		t.Errorf("asked %d times, logged %q; want asked again, then a warning", asked.Load(), logged.String())
	}
}

// kept_unselected counts only instances that stay. Another destination's
// forwarder, the last to store the study, deletes what it releases while
// this one, the counting destination, has recorded its forward and not
// yet applied the rules: the rules then read a study without the deleted
// CT series, and its instances, listed still, read as ones no rule
// selects. Those are gone, not kept: only the SRs count.
func TestUnselectedNotCountedDeletedMeanwhile(t *testing.T) {
	const ct, sr = 4, 2
	rig := newBufferRig(t)
	src := newMemSource(ct + sr)
	srs := src.instances[ct:]
	f := newForwarder(t, src, rig.url, rig.cons, func(o *Options) {
		o.Registerer = prometheus.NewRegistry()
		o.Router = leaving{srs[0].ID: true, srs[1].ID: true}
		o.Completed = recordedOK
		o.CleanerFor = func(string) (SourceCleaner, error) { return rig.cleaner, nil }
		o.CountsUnselected = true
		o.Select = func(_ *events.StudyStable, listed []orthancapi.Instance) Selection {
			return fakeSelection{
				unselected: func(context.Context) ([]orthancapi.Instance, error) {
					// The other destination's deletes, just before the
					// rules read the study: its CT series is gone, and
					// the rules read every listed instance as one none
					// selects (the CTs have no modality).
					src.instances = srs
					return listed, nil
				},
				release: func(context.Context) ([]orthancapi.Instance, error) { return nil, nil },
			}
		}
	})
	f.handle(t.Context(), rig.deliver(t), "")
	if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues("kept_unselected")); got != sr {
		t.Errorf("kept_unselected = %v, want %d (the SRs)", got, sr)
	}
}

// The counting destination's forwarders make one selection per study:
// its Unselected applies every destination's rules for kept_unselected,
// and the deletes' Release finds them applied; a second selection would
// apply them all again, reading the study from Orthanc again.
func TestCounterSelectsOncePerStudy(t *testing.T) {
	type calls struct{ unselected, release int }
	rig := newBufferRig(t)
	src := newMemSource(3)
	sr := src.instances[2]
	made := map[string][]*calls{} // the selections made, by study
	f := newForwarder(t, src, rig.url, rig.cons, func(o *Options) {
		o.Registerer = prometheus.NewRegistry()
		o.Router = leaving{sr.ID: true}
		o.Completed = recordedOK
		o.CleanerFor = func(string) (SourceCleaner, error) { return rig.cleaner, nil }
		o.CountsUnselected = true
		o.Select = func(ev *events.StudyStable, listed []orthancapi.Instance) Selection {
			c := &calls{}
			made[ev.OrthancStudyID] = append(made[ev.OrthancStudyID], c)
			return fakeSelection{
				unselected: func(context.Context) ([]orthancapi.Instance, error) {
					c.unselected++
					return []orthancapi.Instance{sr}, nil
				},
				release: func(context.Context) ([]orthancapi.Instance, error) {
					c.release++
					return slices.DeleteFunc(slices.Clone(listed), func(in orthancapi.Instance) bool { return in.ID == sr.ID }), nil
				},
			}
		}
	})
	f.handle(t.Context(), rig.deliver(t), "")
	sels := made[rig.ev.OrthancStudyID]
	if len(sels) != 1 {
		t.Fatalf("%d selections made for the study, want 1", len(sels))
	}
	if sels[0].unselected == 0 || sels[0].release == 0 {
		t.Errorf("on the selection: %d Unselected, %d Release; want both asked", sels[0].unselected, sels[0].release)
	}
	if got := testutil.ToFloat64(f.m.sourceDeletes.WithLabelValues("kept_unselected")); got != 1 || len(rig.cleaner.deleted) != 2 {
		t.Errorf("kept_unselected = %v, deleted %v; want the SR kept, the 2 others deleted", got, rig.cleaner.deleted)
	}
}
