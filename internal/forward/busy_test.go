package forward

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// A destination behind a proxy that answers 503 above n requests in
// flight (nginx's limit_conn), with the breaker on: a 503 while it
// answers others is its load, re-sent after the limiter's halving, so
// every study is stored with the breaker opened at most once (the first
// burst, before anything was answered, reads as an outage) and the limit
// ends near n. Before, each 503 failed its study and counted for the
// breaker; at each close the limit went back to the ceiling and the 503s
// opened it again. A destination answering 503 to every STOW request
// after it stored a study still opens the breaker, and the held studies
// are stored once it is back.
func TestBusy503IsLoadNotAnOutage(t *testing.T) {
	const n, studies, instances = 4, 30, 24
	tests := []struct {
		name string
		down bool // 503 to every STOW request once a study is stored
	}{
		{name: "busy above n in flight"},
		{name: "down after a store", down: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testnats.Start(t)
			sink := stowsink.New(stowsink.Options{Latency: 100 * time.Millisecond})
			gate := faultproxy.BusyInFlight(sink, n)
			var down atomic.Bool
			var probes atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.Method == http.MethodGet:
					answerProbe(w, &probes)
				case down.Load():
					http.Error(w, "upstream down", http.StatusServiceUnavailable)
				default:
					gate.ServeHTTP(w, r)
				}
			}))
			t.Cleanup(srv.Close)
			cons := consumer(t, ns)
			src := hexSlices{newDICOMSource(t, studies*instances), instances}
			dls := &memDeadLetters{}
			f := newForwarder(t, nil, srv.URL, cons, func(o *Options) {
				o.SourceFor = func(string) (Source, error) { return src, nil }
				o.DeadLetters, o.MaxDeliveries = dls, 48
				o.Concurrency = 8
				o.MaxInstances = 2
				o.RequestConcurrency = 16
				o.ShutdownGrace = time.Minute
				o.Breaker = BreakerOptions{Failures: 5, ProbeInterval: 100 * time.Millisecond, MaxProbeInterval: 200 * time.Millisecond, Prober: newProber(t, srv.URL)}
			})
			runForwarder(t, f)
			acked := func(k int) {
				t.Helper()
				waitConsumerWithin(t, cons, 2*time.Minute, func(i *jetstream.ConsumerInfo) bool {
					return i.AckFloor.Stream == uint64(k) && i.NumAckPending == 0
				})
			}
			opens := func() float64 {
				return testutil.ToFloat64(f.m.breakerTransitions.WithLabelValues(BreakerOpen.String()))
			}
			if tt.down {
				publishStudies(t, ns, 0, 1)
				acked(1)
				down.Store(true)
				publishStudies(t, ns, 1, studies)
				deadline := time.Now().Add(time.Minute)
				for f.Status().State != "open" {
					if time.Now().After(deadline) {
						t.Fatalf("breaker %+v a minute into a 503 outage, want open", f.Status())
					}
					time.Sleep(10 * time.Millisecond)
				}
				down.Store(false)
			} else {
				publishStudies(t, ns, 0, studies)
			}
			acked(studies)
			if l := dls.all(); len(l) != 0 {
				t.Errorf("%d dead letters, first %+v", len(l), l[0])
			}
			if got := sink.Distinct(); got != studies*instances {
				t.Errorf("%d instances at the sink, want %d", got, studies*instances)
			}
			st := f.Status()
			t.Logf("breaker opened %v times; limit %d at the end; %d requests stored, %d refused with 503", opens(), st.Requests, sink.Stats().Requests, gate.Refused())
			if tt.down {
				return
			}
			if o := opens(); o > 1 {
				t.Errorf("breaker opened %v times, want at most once", o)
			}
			// n+1: the refused level is probed again after calm rounds.
			if st.Requests > n+1 {
				t.Errorf("limit %d at the end, want at most %d", st.Requests, n+1)
			}
		})
	}
}

// hexSlices serves study i (its Orthanc ID begins with i in 8 hex
// digits) as the i-th slice of per instances of one source.
type hexSlices struct {
	*dicomSource
	per int
}

func (s hexSlices) StudyInstances(_ context.Context, id string) ([]orthancapi.Instance, error) {
	i, err := strconv.ParseInt(id[:min(len(id), 8)], 16, 0)
	if err != nil {
		return nil, err
	}
	return s.instances[int(i)*s.per : (int(i)+1)*s.per], nil
}

// A request that broke off on the source (an instance Orthanc failed to
// read) got no answer from the destination: it does not make the
// destination one that answers, so during an outage behind a proxy
// answering 503 the next study's 503 fails it at once, not re-sent as
// load. Before, the broken-off request gave its place back as answered
// (Done), and every 503 for a minute after it was re-sent 5 times.
func TestBrokenOffRequestIsNoAnswer(t *testing.T) {
	var answered atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The body first, as a proxy buffering requests reads it: a
		// request that breaks off gets no answer.
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		answered.Add(1)
		http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	src := brokenStudy{newMemSource(2)}
	f := newForwarder(t, nil, srv.URL, nil, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.InstanceRetries, o.InstanceRetryDelay = 1, time.Millisecond
	})
	ev := testEvent()
	ev.OrthancStudyID = "broken"
	if _, err := f.transfer(t.Context(), &Attempt{Event: ev}); Classify(err) != Transient || !strings.Contains(fmt.Sprint(err), "the source Orthanc failed to read") {
		t.Fatalf("the study of an unreadable instance: err %v, want a transient failure to read from the source", err)
	}
	if f.limit.AnsweredWithin(time.Minute) {
		t.Error("the destination counts as answering after requests that broke off on the source")
	}
	if n := answered.Load(); n != 0 {
		t.Fatalf("%d requests of the unreadable study answered, want none", n)
	}
	ev = testEvent()
	ev.OrthancStudyID, ev.StudyInstanceUID = "readable", "1.2.4"
	_, err := f.transfer(t.Context(), &Attempt{Event: ev})
	if !DestinationDown(err) {
		t.Errorf("the readable study: err %v, want the 503 for the circuit breaker", err)
	}
	if n := answered.Load(); n != 1 {
		t.Errorf("the readable study's request sent %d times, want once: a 503 with nothing answered is an outage, not load", n)
	}
}

// brokenStudy serves study "broken" as the first instance of a memSource,
// which Orthanc fails to read (its own 500), any other study as the rest.
type brokenStudy struct{ *memSource }

func (s brokenStudy) StudyInstances(_ context.Context, id string) ([]orthancapi.Instance, error) {
	if id == "broken" {
		return s.instances[:1], nil
	}
	return s.instances[1:], nil
}

func (s brokenStudy) OpenInstanceFile(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	if id == s.instances[0].ID {
		return nil, 0, &orthancapi.Error{StatusCode: http.StatusInternalServerError, OrthancMessage: "The path does not point to a regular file"}
	}
	return s.memSource.OpenInstanceFile(ctx, id)
}

// Requests sent again for load are counted by status: a 429, and a 503
// while the destination answers others; a 503 with nothing answered
// fails its study, re-sent never.
func TestResendsCountedByStatus(t *testing.T) {
	tests := []struct {
		name string
		// answers are the statuses of the requests in turn (0 and
		// after the last: stored), over studies of one request sent
		// one after the other.
		answers []int
		studies int
		wantErr bool
		want    map[string]float64
	}{
		{"429", []int{429, 0}, 1, false, map[string]float64{"429": 1, "503": 0}},
		// Sent again overloadResends times, then the study fails (about
		// 8 s of doubling delays).
		{"429 every time", []int{429, 429, 429, 429, 429, 429, 429, 429}, 1, true, map[string]float64{"429": overloadResends, "503": 0}},
		{"503 while answering others", []int{0, 503, 503, 0}, 2, false, map[string]float64{"429": 0, "503": 2}},
		{"503 with nothing answered", []int{503}, 1, true, map[string]float64{"429": 0, "503": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var k sink
			stored := k.handler(nil)
			var next atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				i := int(next.Add(1)) - 1
				if i < len(tt.answers) && tt.answers[i] != 0 {
					_, _ = io.Copy(io.Discard, r.Body)
					w.WriteHeader(tt.answers[i])
					return
				}
				stored.ServeHTTP(w, r)
			}))
			t.Cleanup(srv.Close)
			f := newForwarder(t, newMemSource(1), srv.URL, nil)
			var err error
			for range tt.studies {
				_, err = f.transfer(t.Context(), &Attempt{Event: testEvent()})
			}
			if (err != nil) != tt.wantErr {
				t.Errorf("the last study: err %v, want an error: %v", err, tt.wantErr)
			}
			for status, want := range tt.want {
				if got := testutil.ToFloat64(f.m.resends.WithLabelValues(status)); got != want {
					t.Errorf("stowline_forwarder_stow_resends_total{status=%q} = %v, want %v", status, got, want)
				}
			}
		})
	}
}
