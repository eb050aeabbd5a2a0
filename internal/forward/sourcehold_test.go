package forward

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/orthancapi"
)

// A source Orthanc that stops answering while its study is queued holds
// the study, its delivery unspent, until it answers again: with
// FORWARDER_MAX_DELIVERIES=1 the first failed attempt used to
// dead-letter it ("gave up after 1 deliveries"), as a long Orthanc outage
// did to every study queued meanwhile after 48. Real Orthanc, stopped and
// started again.
func TestSourceOutageHoldsTheStudy(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	srcOrthanc := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "outage-src"})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "outage-dest", DicomWeb: true})
	ev, client := uploadStudy(t, srcOrthanc, 3)
	srcOrthanc.Stop(t)
	// Orthanc comes back after more than an ack wait (3 s): the
	// in-progress signals keep the delivery.
	logs := forwardHeld(t, client, dest, ev, "source Orthanc unreachable: the study is held", func() error {
		time.Sleep(4 * time.Second)
		return srcOrthanc.Restart(context.Background())
	})
	if !strings.Contains(logs.String(), "source Orthanc answers again") {
		t.Errorf("no log of the source's return:\n%s", logs.String())
	}
}

// A source Orthanc that refuses the forwarder's credentials (a password
// changed in Orthanc and not yet in the forwarder's file) holds the
// study until it accepts them, instead of dead-lettering it and every
// study after it for an operator to replay. Real Orthanc, its password
// changed back.
func TestSourceRefusingCredentialsHoldsTheStudy(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("starts real Orthanc servers; skipped in -short mode")
	}
	srcOrthanc := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "refusing-src", Username: "forwarder", Password: "pw-new-0123"})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "refusing-dest", DicomWeb: true})
	ev, _ := uploadStudy(t, srcOrthanc, 3)
	client, err := orthancapi.New(srcOrthanc.URL, orthancapi.WithBasicAuth("forwarder", "pw-old-4567"))
	if err != nil {
		t.Fatal(err)
	}
	// An operator mends the password.
	forwardHeld(t, client, dest, ev, "source Orthanc refuses the forwarder's credentials: the study is held", func() error {
		return srcOrthanc.RestartWithPassword(context.Background(), "pw-old-4567")
	})
}

// forwardHeld forwards ev from client's Orthanc to dest, with the source
// probed through client and one delivery a study, and runs mend once the
// log says held (the study is held for its source). The study must then
// arrive whole (the 3 instances of uploadStudy(t, o, 3)), with no dead
// letter. It returns the forwarder's log.
func forwardHeld(t *testing.T, client *orthancapi.Client, dest *testharness.Orthanc, ev *events.StudyStable, held string, mend func() error) *testharness.LogBuffer {
	t.Helper()
	var logs testharness.LogBuffer
	f, ns, cons, dls := orthancForwarder(t, client, dest, func(o *Options) {
		o.SourceProbe = func(ctx context.Context, _ string) error {
			_, err := client.System(ctx)
			return err
		}
		o.MaxInstances, o.MaxDeliveries = 10, 1
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	// From another goroutine, so failures are reported with t.Error, not
	// t.Fatal.
	mended := make(chan struct{})
	go func() {
		defer close(mended)
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs.String(), held); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("no %q in the log within 30 s", held)
				return
			}
		}
		if err := mend(); err != nil {
			t.Errorf("mend the source Orthanc: %v", err)
		}
	}()
	t.Cleanup(func() { <-mended })
	forwardOne(t, f, ns, cons, ev)
	if letters := dls.all(); len(letters) != 0 {
		t.Fatalf("dead-lettered as %q: %s; want the study held until the source was mended", letters[0].Class, letters[0].Reason)
	}
	if n := len(dest.InstanceMD5s(t)); n != 3 {
		t.Errorf("the destination holds %d instances, want 3", n)
	}
	return &logs
}

// holdForSource holds only while the source does not answer; a stop
// while held, of the forwarder or of the work, ends the hold with an
// error that gives the study back.
func TestHoldForSource(t *testing.T) {
	down := &orthancapi.Error{StatusCode: 503, NotFromOrthanc: "proxy"}
	refused := &orthancapi.Error{StatusCode: 401, OrthancMessage: "Unauthorized"}
	for _, tt := range []struct {
		name  string
		probe error
		end   string // how a hold ends: "work" cancels ctx, "stop" starts shutdown
		held  bool
		want  error
	}{
		{"the source answers: the study's own failure", nil, "", false, nil},
		{"the source refuses credentials, the work is cancelled", refused, "work", true, context.Canceled},
		{"the source is down, the work is cancelled", down, "work", true, context.Canceled},
		{"the source is down, shutdown starts", down, "stop", true, errShutdown},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, merr := newMetrics(prometheus.NewRegistry(), "default")
			if merr != nil {
				t.Fatal(merr)
			}
			f := &Forwarder{opts: Options{SourceProbe: func(context.Context, string) error { return tt.probe }},
				m: m, stopping: make(chan struct{})}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			switch tt.end {
			case "work":
				cancel()
			case "stop":
				close(f.stopping)
			}
			a := &Attempt{Event: &events.StudyStable{Source: "a"}}
			held, err := f.holdForSource(ctx, a, errors.New("GET /studies/x/instances: connection refused"), slog.New(slog.DiscardHandler))
			if held != tt.held || !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Errorf("held %v, err %v; want held %v, err %v", held, err, tt.held, tt.want)
			}
		})
	}
}
