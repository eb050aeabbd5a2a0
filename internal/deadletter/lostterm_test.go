package deadletter_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
)

// An event whose dead letter was stored but whose termination JetStream
// did not get (NATS lost at that moment) comes back; its letter is not
// stored twice (the store's dedupe), and the study is not counted twice
// either: the redelivery counts already_dead_lettered, not a second
// undecodable or dead_lettered.
func TestLetterOfALostTerminationCountedOnce(t *testing.T) {
	for _, tt := range []struct {
		name     string
		publish  func(ctx context.Context, js jetstream.JetStream) error
		first    string  // the result of the delivery that stored the letter
		failures float64 // failures_total: the undecodable event's is none
	}{
		{"undecodable event", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.PublishMsg(ctx, &nats.Msg{Subject: natsjs.EventSubject("orthanc-a"), Data: []byte("not an event")})
			return err
		}, "undecodable", 0},
		// FORWARDER_MAX_DELIVERIES 1: its first failure dead-letters it,
		// its redelivery is past the limit.
		{"study", func(ctx context.Context, js jetstream.JetStream) error {
			ev := event("orthanc-a", 1)
			_, err := (natsjs.Publisher{JS: js}).Publish(ctx, &ev)
			return err
		}, "dead_lettered", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			store, ns := newStore(t)
			ctx := testCtx(t)
			topo := natsjs.DefaultTopology()
			topo.AckWait = 3 * time.Second // the lost termination's redelivery
			cons, err := topo.EnsureConsumer(ctx, ns.JS, natsjs.DefaultDestination)
			if err != nil {
				t.Fatal(err)
			}
			lossy := &lostTermConsumer{Consumer: cons}
			lossy.lose.Store(true)
			stow, err := dicomweb.New("http://127.0.0.1:9/dicom-web", nil) // never reached: no source answers
			if err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			f, err := forward.New(forward.Options{
				DestinationName: natsjs.DefaultDestination,
				Lanes:           []forward.Lane{{Priority: events.PriorityRoutine, Consumer: lossy}},
				SourceFor:       func(string) (forward.Source, error) { return nil, errors.New("no such source") },
				Destination:     stow,
				Concurrency:     1,
				MaxInstances:    1,
				MaxBytes:        1 << 20,
				AckWait:         topo.AckWait,
				RetryDelay:      time.Second,
				RetryMaxDelay:   time.Second,
				ShutdownGrace:   200 * time.Millisecond,
				DeadLetters:     store,
				MaxDeliveries:   1,
				Registerer:      reg,
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.publish(ctx, ns.JS); err != nil {
				t.Fatal(err)
			}
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- f.Run(runCtx) }()
			// Settled by the second delivery: its termination arrives.
			waitSettled(t, ctx, cons, 1)
			stop()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if lossy.lose.Load() {
				t.Fatal("no termination was lost")
			}

			letters, err := store.List(ctx, deadletter.Filter{All: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(letters) != 1 {
				t.Errorf("%d dead letters, want 1", len(letters))
			}
			got := counts(t, reg, "stowline_forwarder_studies_total", "result")
			want := map[string]float64{tt.first: 1, "already_dead_lettered": 1}
			for _, r := range []string{"undecodable", "dead_lettered", "already_dead_lettered", "retry"} {
				if got[r] != want[r] {
					t.Errorf("studies_total{result=%q} = %v, want %v (all: %v)", r, got[r], want[r], got)
				}
			}
			// The redelivery past FORWARDER_MAX_DELIVERIES is no crash:
			// the study's one failure is counted once.
			failures := counts(t, reg, "stowline_forwarder_failures_total", "class")
			if n := failures[string(forward.Crash)]; n != 0 {
				t.Errorf("failures_total{class=crash} = %v, want 0 (all: %v)", n, failures)
			}
			sum := 0.0
			for _, n := range failures {
				sum += n
			}
			if sum != tt.failures {
				t.Errorf("failures_total = %v, want %v (all: %v)", sum, tt.failures, failures)
			}
		})
	}
}

// lostTermConsumer hands out deliveries whose termination is lost, as
// with NATS lost at that moment, while lose is set: the first only.
type lostTermConsumer struct {
	jetstream.Consumer
	lose atomic.Bool
}

func (c *lostTermConsumer) Next(opts ...jetstream.FetchOpt) (jetstream.Msg, error) {
	m, err := c.Consumer.Next(opts...)
	if err == nil && c.lose.CompareAndSwap(true, false) {
		return lostTerm{m}, nil
	}
	return m, err
}

type lostTerm struct{ jetstream.Msg }

func (lostTerm) TermWithReason(string) error { return nats.ErrConnectionClosed }

// counts reads the counter name from reg by its label label.
func counts(t *testing.T, reg *prometheus.Registry, name, label string) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}
