package status_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
)

// cutJetStream is a JetStream that asks through a closed connection while
// cut is set, as one whose NATS server is gone.
type cutJetStream struct {
	jetstream.JetStream
	closed jetstream.JetStream
	cut    atomic.Bool
}

func (c *cutJetStream) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	if c.cut.Load() {
		return c.closed.Stream(ctx, name)
	}
	return c.JetStream.Stream(ctx, name)
}

// Every scrape of every Prometheus reads the queue: while NATS is down,
// each one failed and each was logged at warn, several lines a minute per
// process for the whole outage. The first is logged, with the count, and
// the end of the outage is.
func TestQueueCollectorLogsAnOutageOnce(t *testing.T) {
	ns := testnats.Start(t)
	gone := testnats.Start(t)
	gone.NC.Close()
	js := &cutJetStream{JetStream: ns.JS, closed: gone.JS}
	var logs testharness.LogBuffer
	reg := prometheus.NewRegistry()
	// Generous for the scrape that must succeed on a loaded host; the cut
	// ones fail at once on the closed connection, not at the timeout.
	reg.MustRegister(status.NewQueueCollector(js, 10*time.Second, slog.New(slog.NewJSONHandler(&logs, nil)), status.WithScrapeReuse(0)))

	js.cut.Store(true)
	for range 5 {
		if got := gatheredValue(t, reg, "stowline_jetstream_info_success"); got != 0 {
			t.Fatalf("stowline_jetstream_info_success = %v with JetStream unreachable", got)
		}
	}
	if n := strings.Count(logs.String(), "JetStream did not answer"); n != 1 {
		t.Errorf("5 scrapes in an outage logged %d warnings, want 1:\n%s", n, logs.String())
	}

	js.cut.Store(false)
	if got := gatheredValue(t, reg, "stowline_jetstream_info_success"); got != 1 {
		t.Fatalf("stowline_jetstream_info_success = %v with JetStream back", got)
	}
	if !strings.Contains(logs.String(), `"msg":"queue metrics: JetStream answers again","failures":5`) {
		t.Errorf("the outage's end is not logged with its count:\n%s", logs.String())
	}
}

// gatheredValue gathers reg and returns the value of the gauge named name.
func gatheredValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("%s not gathered", name)
	return 0
}

// slowJetStream counts the streams asked for, each answered late.
type slowJetStream struct {
	jetstream.JetStream
	asked atomic.Int32
}

func (s *slowJetStream) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s.asked.Add(1)
	time.Sleep(100 * time.Millisecond)
	return s.JetStream.Stream(ctx, name)
}

// /metrics answers anyone who can reach the port, and each scrape read
// every queue: scrapes at once (a scan, a monitoring loop gone wrong)
// made as many reads at once against the JetStream leaders, and a client
// scraping in a loop a read each. Scrapes that come while a read runs,
// or within scrapeReuse after it, take its answer.
func TestQueueCollectorScrapesAtOnceShareARead(t *testing.T) {
	ns := testnats.Start(t)
	js := &slowJetStream{JetStream: ns.JS}
	reg := prometheus.NewRegistry()
	reg.MustRegister(status.NewQueueCollector(js, 10*time.Second, nil))
	gatheredValue(t, reg, "stowline_jetstream_info_success")
	one := js.asked.Swap(0)
	gatheredValue(t, reg, "stowline_jetstream_info_success")
	if n := js.asked.Swap(0); n != 0 {
		t.Errorf("a scrape right after another asked for %d streams, want none (the last read's answer)", n)
	}

	// Scrapes at once share the read under way even with no reuse (the
	// reuse above would answer them all from the last read).
	reg = prometheus.NewRegistry()
	reg.MustRegister(status.NewQueueCollector(js, 10*time.Second, nil, status.WithScrapeReuse(0)))
	const scrapes = 10
	var wg sync.WaitGroup
	for range scrapes {
		wg.Go(func() {
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// A scrape that starts late on a loaded host may read again: up to
	// half of them, not every one.
	if got := js.asked.Load(); got > scrapes/2*one {
		t.Errorf("%d scrapes at once asked for %d streams, want at most %d (%d reads of %d)", scrapes, got, scrapes/2*one, scrapes/2, one)
	}
}
