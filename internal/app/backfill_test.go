package app

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// TestStreamWindowBeforeTheStreamIsSaid: a backfill or re-forward from the
// event stream reaches back only to the stream's oldest event
// (EVENTS_RETENTION). Asked for more (a destination added with
// `backfill --since 2025-01-01`, --from stream being the default), it
// said "N studies queued" as if the window were covered; it now says
// from when the stream holds events and what reads Orthanc instead. A
// window within the stream gets no such note.
func TestStreamWindowBeforeTheStreamIsSaid(t *testing.T) {
	// Over TCP: the commands connect to NATS_URL.
	srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	js := srv.JS
	ctx := t.Context()
	if _, err := natsjs.DefaultTopology().EnsureLanes(ctx, js, []string{"new"}); err != nil {
		t.Fatal(err)
	}
	publish := func(lastUpdate string) {
		t.Helper()
		ev, err := events.NewStudyStable("main", "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", "1.2.3", lastUpdate)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (natsjs.Publisher{JS: js}).Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	// The stream's oldest event, then a window that starts after it and
	// holds the second one. The commands turn the duration back into a
	// start by their own clock, later than the test's: the start lands
	// after mid by that delay, so the second event comes a second after
	// mid: a loaded host can take longer than 50 ms between since() and
	// the command's parse.
	publish("20261126T101500")
	time.Sleep(50 * time.Millisecond)
	mid := time.Now()
	time.Sleep(time.Second)
	publish("20261126T111500")
	within := func() string { return time.Since(mid).String() }
	yearBack := func() string { return "8760h" }
	env := map[string]string{"NATS_URL": srv.ClientURL()}
	const note = "the event stream holds the events received since"
	for _, tt := range []struct {
		name  string
		run   func(since string) (string, error)
		since func() string
		want  string // the count of events in the window
		noted bool
	}{
		{"backfill, a year back", backfill(env), yearBack, "2 studies would be queued", true},
		{"backfill, within the stream", backfill(env), within, "1 studies would be queued", false},
		{"replay reforward, a year back", reforward(js), yearBack, "2 events would be queued", true},
		{"replay reforward, within the stream", reforward(js), within, "1 events would be queued", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := tt.run(tt.since())
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Fatalf("want %q in:\n%s", tt.want, out)
			}
			if noted := strings.Contains(out, note); noted != tt.noted {
				t.Errorf("said %q: %v, want %v:\n%s", note, noted, tt.noted, out)
			}
			if tt.noted && !strings.Contains(out, "--from source") {
				t.Errorf("the note does not say what reads Orthanc instead:\n%s", out)
			}
		})
	}
}

func backfill(env map[string]string) func(since string) (string, error) {
	return func(since string) (string, error) {
		var out strings.Builder
		err := RunBackfill(context.Background(), []string{"--destination", "new", "--since", since, "--dry-run"},
			func(k string) string { return env[k] }, &out, io.Discard)
		return out.String(), err
	}
}

func reforward(js jetstream.JetStream) func(since string) (string, error) {
	return func(since string) (string, error) {
		var out strings.Builder
		c := &replayCLI{JS: js, Stdout: &out}
		err := c.Run(context.Background(), []string{"reforward", "--destination", "new", "--since", since, "--dry-run"})
		return out.String(), err
	}
}

// A backfill from the sources goes on past one it cannot read: with
// main down it stopped there, and queued nothing of cardio behind it.
// Now cardio's study is queued (here, listed: --dry-run) and the error
// names main. Real Orthanc for cardio; nothing listens at main's URL.
func TestBackfillFromSourcesGoesOnPastAnUnreachableOne(t *testing.T) {
	srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	if _, err := natsjs.DefaultTopology().EnsureLanes(t.Context(), srv.JS, []string{"new"}); err != nil {
		t.Fatal(err)
	}
	cardio := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "backfill-cardio", StableAge: 2})
	uid := dicomgen.NewUID()
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: uid, Series: 1, InstancesPerSeries: 1, Rows: 16, Columns: 16})
	if err != nil {
		t.Fatal(err)
	}
	if res := cardio.Upload(t, files...); len(res.Failed) > 0 {
		t.Fatal(res.Failed)
	}
	cardio.WaitStable(t, 20*time.Second)
	env := map[string]string{"NATS_URL": srv.ClientURL(), "ORTHANC_SOURCES": "main,cardio",
		"ORTHANC_MAIN_URL": "http://" + testharness.FreeAddr(t), "ORTHANC_CARDIO_URL": cardio.URL}
	var out strings.Builder
	err = RunBackfill(t.Context(), []string{"--destination", "new", "--since", "24h", "--from", "source", "--dry-run"},
		func(k string) string { return env[k] }, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "source main") {
		t.Errorf("err = %v, want one naming source main", err)
	}
	if !strings.Contains(out.String(), uid) || !strings.Contains(out.String(), "1 studies would be queued") {
		t.Errorf("cardio's study %s not listed:\n%s", uid, out.String())
	}
}

// TestBackfillRefusesAFlagGivenEmpty: forwarder backfill --until "$T",
// $T unset, took the window up to now, and --priority "" the routine
// lane; a flag given empty is refused, naming it, as replay's are.
func TestBackfillRefusesAFlagGivenEmpty(t *testing.T) {
	srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	if _, err := natsjs.DefaultTopology().EnsureLanes(t.Context(), srv.JS, []string{"new"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"NATS_URL": srv.ClientURL(), "ORTHANC_URL": "http://" + testharness.FreeAddr(t)}
	for _, tt := range []struct {
		args  []string
		names string
	}{
		{[]string{"--destination", "new", "--since", "24h", "--until", "", "--dry-run"}, "--until: empty"},
		{[]string{"--destination", "new", "--since", "24h", "--priority=", "--dry-run"}, "--priority: empty"},
		{[]string{"--destination", "new", "--since", "24h", "--from", "", "--dry-run"}, "--from: empty"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			err := RunBackfill(t.Context(), tt.args, func(k string) string { return env[k] }, io.Discard, io.Discard)
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.names) {
				t.Errorf("err = %v, want a usage error naming %s", err, tt.names)
			}
		})
	}
}

// TestBackfillRefusesAWindowThatHoldsNothing: an --until not after
// --since (the same time given twice, or the two swapped) is the
// operator's mistake, refused as such (exit 2) before anything is read or
// queued, not a backfill that says it queued 0 studies.
func TestBackfillRefusesAWindowThatHoldsNothing(t *testing.T) {
	srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	if _, err := natsjs.DefaultTopology().EnsureLanes(t.Context(), srv.JS, []string{"new"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"NATS_URL": srv.ClientURL(), "ORTHANC_URL": "http://" + testharness.FreeAddr(t)}
	for _, window := range [][]string{
		{"--since", "2026-11-01T00:00Z", "--until", "2026-11-01T00:00Z"},
		{"--since", "2026-11-02", "--until", "2026-11-01"},
	} {
		for _, from := range []string{"stream", "source"} {
			args := append([]string{"--destination", "new", "--from", from, "--dry-run"}, window...)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				var out strings.Builder
				err := RunBackfill(t.Context(), args, func(k string) string { return env[k] }, &out, io.Discard)
				if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "--until must be after --since") {
					t.Errorf("err = %v (output %q), want a usage error: --until must be after --since", err, out.String())
				}
			})
		}
	}
}

// TestBackfillGivesTheStreamsDuplicateWindow: a backfill from the sources
// run again said its studies were not queued again "within
// EVENTS_DEDUPE_WINDOW" giving its own setting, which need not be the
// stream's. It gives the stream's (here 90 min, the command's 24 h).
func TestBackfillGivesTheStreamsDuplicateWindow(t *testing.T) {
	s := newAuditSite(t, 1, "new")
	var out strings.Builder
	for range 2 {
		out.Reset()
		if err := RunBackfill(t.Context(), []string{"--destination", "new", "--since", "24h", "--from", "source"},
			func(k string) string { return s.env[k] }, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(out.String(), "1 studies not queued again") || !strings.Contains(out.String(), "(1h30m0s)") || strings.Contains(out.String(), "24h0m0s") {
		t.Errorf("the second backfill does not give the stream's duplicate window:\n%s", out.String())
	}
}

// TestBackfillDedupesPerLane: a backfill's dedupe ID left out the lane,
// so a rerun with --priority routine after a low-lane backfill (held by
// FORWARD_WINDOWS) was dropped by JetStream within the duplicate window,
// while its table listed the studies as queued. The lane is now part of
// the ID (the low lane keeping the ID it had), and a study not queued
// again is marked in the table.
func TestBackfillDedupesPerLane(t *testing.T) {
	s := newAuditSite(t, 1, "new")
	run := func(args ...string) string {
		t.Helper()
		var out strings.Builder
		args = append([]string{"--destination", "new", "--since", "24h", "--from", "source"}, args...)
		if err := RunBackfill(t.Context(), args, func(k string) string { return s.env[k] }, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	stream, err := s.srv.JS.Stream(t.Context(), natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	// onLane is how many events the stream holds on new's subject of lane.
	onLane := func(lane events.Priority) uint64 {
		t.Helper()
		subject := natsjs.LaneSubject(lane, "new", "main")
		info, err := stream.Info(t.Context(), jetstream.WithSubjectFilter(subject))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[subject]
	}
	for _, tt := range []struct {
		name      string
		args      []string
		want      []string
		duplicate bool
		low       uint64 // the events on new's low and routine lanes after the run
		routine   uint64
	}{
		{"low lane, the default", nil, []string{"1 studies queued for new"}, false, 1, 0},
		{"routine after low", []string{"--priority", "routine"}, []string{"1 studies queued for new"}, false, 1, 1},
		{"routine again", []string{"--priority", "routine"}, []string{"0 studies queued for new", "1 studies not queued again", "not queued again (duplicate)"}, true, 1, 1},
		{"low again", nil, []string{"0 studies queued for new", "not queued again (duplicate)"}, true, 1, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := run(tt.args...)
			for _, want := range tt.want {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if !tt.duplicate && strings.Contains(out, "not queued again") {
				t.Errorf("the study was dropped as a duplicate:\n%s", out)
			}
			if low, routine, stat := onLane(events.PriorityLow), onLane(events.PriorityRoutine), onLane(events.PriorityStat); low != tt.low || routine != tt.routine || stat != 0 {
				t.Errorf("events on new's lanes: low %d, routine %d, stat %d; want %d, %d, 0", low, routine, stat, tt.low, tt.routine)
			}
		})
	}
}

// TestBackfillFromSourcesKeepsToItsWindow: a backfill from the sources
// lists only the studies whose last update is in [--since, --until): a
// window wholly in the past, or one starting in the future, finds none of
// Orthanc's study, updated now.
func TestBackfillFromSourcesKeepsToItsWindow(t *testing.T) {
	s := newAuditSite(t, 1, "new")
	// The window is [since, until): a study updated at the very second
	// one window ends and the next starts is queued by the next only.
	var updated time.Time
	for _, ev := range s.studies {
		var err error
		if updated, err = time.Parse(orthancapi.TimeLayout, ev.LastUpdate); err != nil {
			t.Fatal(err)
		}
	}
	at := updated.Format(time.RFC3339)
	for _, tt := range []struct {
		name   string
		window []string
		want   string
	}{
		{"the last day", []string{"--since", "24h"}, "1 studies would be queued for new"},
		{"until in the past", []string{"--since", "2020-01-01", "--until", "2020-01-02"}, "0 studies would be queued for new"},
		{"since in the future", []string{"--since", "2099-01-01"}, "0 studies would be queued for new"},
		{"until the study's last update", []string{"--since", "24h", "--until", at}, "0 studies would be queued for new"},
		{"since the study's last update", []string{"--since", at, "--until", updated.Add(time.Second).Format(time.RFC3339)}, "1 studies would be queued for new"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			args := append([]string{"--destination", "new", "--from", "source", "--dry-run"}, tt.window...)
			if err := RunBackfill(t.Context(), args, func(k string) string { return s.env[k] }, &out, io.Discard); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if !strings.Contains(out.String(), tt.want) {
				t.Errorf("want %q in:\n%s", tt.want, out.String())
			}
		})
	}
}

// TestBackfillFromSourcesTakesStableStudiesOnly: --from source queues the
// stable studies only (its usage says so): a study Orthanc still receives
// would be forwarded in part, then again in full once it settles.
func TestBackfillFromSourcesTakesStableStudiesOnly(t *testing.T) {
	srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	if _, err := natsjs.DefaultTopology().EnsureLanes(t.Context(), srv.JS, []string{"new"}); err != nil {
		t.Fatal(err)
	}
	// Stable an hour after its last instance: still receiving here.
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "backfill-unstable", StableAge: 3600})
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: dicomgen.NewUID(), Series: 1, InstancesPerSeries: 1, Rows: 16, Columns: 16})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, files...); len(res.Failed) > 0 {
		t.Fatal(res.Failed)
	}
	env := map[string]string{"NATS_URL": srv.ClientURL(), "ORTHANC_URL": o.URL, "ORTHANC_SOURCE_NAME": "main"}
	var out strings.Builder
	if err := RunBackfill(t.Context(), []string{"--destination", "new", "--from", "source", "--since", "24h", "--dry-run"},
		func(k string) string { return env[k] }, &out, io.Discard); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "0 studies would be queued for new") {
		t.Errorf("a study still receiving was taken:\n%s", out.String())
	}
}

// The low lane's backfill ID is the one it was before the lane was part
// of it, so that a backfill rerun across the upgrade is still dropped as
// a duplicate.
func TestBackfillMsgID(t *testing.T) {
	ev := &events.StudyStable{Source: "main", OrthancStudyID: "s1", LastUpdate: "20261204T100000"}
	for _, tt := range []struct {
		lane events.Priority
		want string
	}{
		{events.PriorityLow, ev.MsgID() + "/backfill/new"},
		{events.PriorityRoutine, ev.MsgID() + "/backfill/new/routine"},
		{events.PriorityStat, ev.MsgID() + "/backfill/new/stat"},
	} {
		if got := backfillMsgID(ev, "new", tt.lane); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.lane, got, tt.want)
		}
	}
}
