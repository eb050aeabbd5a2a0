package forward

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/natsjs"
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
			publish := func(from, to int) {
				t.Helper()
				for i := from; i < to; i++ {
					ev := testEvent()
					ev.OrthancStudyID = fmt.Sprintf("%08x-4f66fb14-03f4081b-f9341db2-53925988", i)
					ev.StudyInstanceUID = "1.2.4." + strconv.Itoa(i)
					if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(t.Context(), ev); err != nil {
						t.Fatal(err)
					}
				}
			}
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
				publish(0, 1)
				acked(1)
				down.Store(true)
				publish(1, studies)
				deadline := time.Now().Add(time.Minute)
				for f.Status().State != "open" {
					if time.Now().After(deadline) {
						t.Fatalf("breaker %+v a minute into a 503 outage, want open", f.Status())
					}
					time.Sleep(10 * time.Millisecond)
				}
				down.Store(false)
			} else {
				publish(0, studies)
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
