package app

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// A backfill from a source of more studies than a page (sourcePage) and
// than natsjs.PublishWindow, whose events are published several at a
// time: each study is queued once under its backfill ID and listed once,
// in the order Orthanc lists them; run again, each is listed as a
// duplicate and counted so, and nothing more is stored. A publish refused
// part-way stops the run with its error: the studies before it are listed
// in order, it is not, and what is listed is exactly what was stored;
// so does a cancelled run, whose publishes in flight are ended.
func TestBackfillFromSourcesPublishesSeveralAtATime(t *testing.T) {
	const studies = sourcePage + 100
	o := orthancWithStudies(t, "backfill-many", studies)
	srv := testnats.Start(t)
	ctx := t.Context()
	if _, err := natsjs.DefaultTopology().EnsureLanes(ctx, srv.JS, []string{"new", "other", "third"}); err != nil {
		t.Fatal(err)
	}
	client, err := orthancapi.New(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	var read []*events.StudyStable // in the order Orthanc lists them
	if err := orthancapi.EachStudy(ctx, client, sourcePage, func(st orthancapi.Study) error {
		ev, err := events.NewStudyStable("main", st.ID, st.StudyInstanceUID, st.LastUpdate)
		read = append(read, ev)
		return err
	}); err != nil || len(read) != studies {
		t.Fatalf("Orthanc lists %d studies, %v; want %d", len(read), err, studies)
	}
	// The study whose publish is refused in the last run, and its ID.
	const refusedAt = 100
	refusedID := backfillMsgID(read[refusedAt], "other", events.PriorityLow)
	for _, tt := range []struct {
		name        string
		destination string
		refuse      bool
		cancelAt    int // listed studies after which the run is cancelled
		dups        int // the studies counted and listed as duplicates
	}{
		{name: "queued once", destination: "new"},
		{name: "again: duplicates", destination: "new", dups: studies},
		{name: "refused part-way", destination: "other", refuse: true},
		{name: "cancelled part-way", destination: "third", cancelAt: 50},
	} {
		t.Run(tt.name, func(t *testing.T) {
			js := srv.JS
			if tt.refuse {
				js = testnats.RefusingPublishes{JetStream: js, Refuse: func(m *nats.Msg) bool { return m.Header.Get(jetstream.MsgIDHeader) == refusedID }}
			}
			runCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			var listed []*events.StudyStable
			flags := 0
			dups, err := backfillFromSources(runCtx, &natsjs.Conn{JS: js}, &config.Orthanc{URL: o.URL, SourceName: "main"},
				tt.destination, events.PriorityLow, time.Now().Add(-24*time.Hour), time.Time{}, false,
				func(ev *events.StudyStable, duplicate bool, _ error) {
					listed = append(listed, ev)
					if duplicate {
						flags++
					}
					if len(listed) == tt.cancelAt {
						cancel()
					}
				})
			stored := storedMsgIDs(t, srv.JS, natsjs.LaneSubject(events.PriorityLow, tt.destination, "main"))
			for _, ev := range listed {
				if id := backfillMsgID(ev, tt.destination, events.PriorityLow); stored[id] != 1 {
					t.Errorf("study %s listed, stored %d times under %s", ev.OrthancStudyID, stored[id], id)
				}
			}
			if len(stored) != len(listed) {
				t.Errorf("%d events stored, %d studies listed", len(stored), len(listed))
			}
			if tt.cancelAt > 0 {
				// Those in flight are stored and listed, and no more are
				// started but the study whose start was waiting for a place
				// in the window when the cancellation came (Run ended the
				// task that cancelled): at most PublishWindow after it.
				if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "source main") {
					t.Errorf("err = %v, want context.Canceled for source main", err)
				}
				if len(listed) < tt.cancelAt || len(listed) > tt.cancelAt+natsjs.PublishWindow || !slices.EqualFunc(listed, read[:len(listed)], sameStudy) {
					t.Errorf("listed %d studies; want the first %d to %d read, in order", len(listed), tt.cancelAt, tt.cancelAt+natsjs.PublishWindow)
				}
				return
			}
			if !tt.refuse {
				if err != nil {
					t.Fatal(err)
				}
				if !slices.EqualFunc(listed, read, sameStudy) {
					t.Errorf("listed %d studies not in the order read", len(listed))
				}
				if dups != tt.dups || flags != tt.dups {
					t.Errorf("%d duplicates counted, %d listed as such; want %d", dups, flags, tt.dups)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "source main") || !strings.Contains(err.Error(), refusedID) {
				t.Errorf("err = %v, want one naming source main and %s", err, refusedID)
			}
			if dups != 0 || flags != 0 {
				t.Errorf("%d duplicates counted, %d listed as such; want none", dups, flags)
			}
			// Those before the refused one, in order; those started with it
			// may have been stored and are listed after them, in order.
			if len(listed) < refusedAt || !slices.EqualFunc(listed[:refusedAt], read[:refusedAt], sameStudy) {
				t.Fatalf("listed %d studies; want the %d before the refused one first, in order", len(listed), refusedAt)
			}
			if len(listed) >= refusedAt+natsjs.PublishWindow {
				t.Errorf("listed %d studies: the run did not stop at the refused one", len(listed))
			}
			next := refusedAt + 1
			for _, ev := range listed[refusedAt:] {
				i := slices.IndexFunc(read, func(r *events.StudyStable) bool { return sameStudy(r, ev) })
				if i < next {
					t.Fatalf("study %s listed out of order, or the refused one listed", ev.OrthancStudyID)
				}
				next = i + 1
			}
		})
	}
}

func sameStudy(a, b *events.StudyStable) bool {
	return a.MsgID() == b.MsgID()
}

// storedMsgIDs counts the events stored on subject by dedupe ID.
func storedMsgIDs(t *testing.T, js jetstream.JetStream, subject string) map[string]int {
	t.Helper()
	ctx := t.Context()
	stream, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("event %d: %v", seq, err)
		}
		if m.Subject == subject {
			counts[m.Header.Get(jetstream.MsgIDHeader)]++
		}
	}
	return counts
}

// TestBackfillFromSourcesGoesOnPastAnInvalidStudy: a study whose event
// would be invalid (a malformed multi-valued StudyInstanceUID, which
// Orthanc stores) ended the walk of its source: no study Orthanc lists
// after it was queued, on every run. It is now listed, not queued, with
// why, the walk goes on, and the run fails (exit 1) naming it. Real
// Orthanc, listing [valid, invalid, valid].
func TestBackfillFromSourcesGoesOnPastAnInvalidStudy(t *testing.T) {
	srv := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	if _, err := natsjs.DefaultTopology().EnsureLanes(t.Context(), srv.JS, []string{"new"}); err != nil {
		t.Fatal(err)
	}
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "backfill-invalid", StableAge: 1})
	for i := range 3 {
		// One at a time: Orthanc 1.10 lists studies in the order it made
		// them.
		uid := dicomgen.NewUID()
		files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: uid, Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8})
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			// Two values, as a faulty modality sends them: dicomgen writes
			// valid UIDs only, so the file is changed, the length kept.
			at := strings.LastIndexByte(uid, '.')
			multi := uid[:at] + `\` + uid[at+1:]
			b, err := os.ReadFile(files[0])
			if err != nil {
				t.Fatal(err)
			}
			if n := bytes.Count(b, []byte(uid)); n != 1 {
				t.Fatalf("the StudyInstanceUID is %d times in the file, want once", n)
			}
			if err := os.WriteFile(files[0], bytes.Replace(b, []byte(uid), []byte(multi), 1), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if res := o.Upload(t, files...); len(res.Failed) > 0 {
			t.Fatal(res.Failed)
		}
		o.WaitStudies(t, i+1, 20*time.Second)
	}
	o.WaitStable(t, 20*time.Second)
	client, err := orthancapi.New(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	listed, err := client.Studies(t.Context(), 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var valid []*events.StudyStable
	var bad string
	for i, st := range listed {
		ev, err := events.NewStudyStable("main", st.ID, st.StudyInstanceUID, st.LastUpdate)
		switch {
		case err == nil:
			valid = append(valid, ev)
		case i == 1:
			bad = st.ID
		default:
			t.Fatalf("study %d of %d listed invalid: %v", i, len(listed), err)
		}
	}
	if len(valid) != 2 || bad == "" {
		t.Fatalf("Orthanc lists %d studies, the invalid one %q second; want [valid, invalid, valid]", len(listed), bad)
	}
	env := map[string]string{"NATS_URL": srv.ClientURL(), "ORTHANC_URL": o.URL, "ORTHANC_SOURCE_NAME": "main"}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"dry run", []string{"--dry-run"}, "2 studies would be queued for new"},
		{"run", nil, "2 studies queued for new"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			err := RunBackfill(t.Context(), append([]string{"--destination", "new", "--from", "source", "--since", "24h"}, tt.args...),
				func(k string) string { return env[k] }, &out, io.Discard)
			if code := ExitCode("forwarder backfill", err, io.Discard); code != 1 || !strings.Contains(err.Error(), bad) {
				t.Errorf("exit %d, err %v; want 1, naming study %s", code, err, bad)
			}
			for _, want := range []string{tt.want, "not queued: invalid event", "1 studies not queued: their event would be invalid"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			if tt.args != nil {
				return
			}
			stored := storedMsgIDs(t, srv.JS, natsjs.LaneSubject(events.PriorityLow, "new", "main"))
			for _, ev := range valid {
				if id := backfillMsgID(ev, "new", events.PriorityLow); stored[id] != 1 {
					t.Errorf("study %s stored %d times, want once", ev.OrthancStudyID, stored[id])
				}
			}
			if len(stored) != len(valid) {
				t.Errorf("%d events stored, want %d", len(stored), len(valid))
			}
		})
	}
}
