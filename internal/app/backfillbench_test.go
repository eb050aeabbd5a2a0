package app

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
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
)

// benchStudies is how many studies BenchmarkBackfillFromSources's Orthanc
// holds: enough pages (sourcePage) that neither the first page nor the
// last dominates.
const benchStudies = 3000

// BenchmarkBackfillFromSources backfills a real Orthanc's benchStudies
// studies a run, reporting studies/s: dry (Orthanc's study pages alone)
// and queued, over TCP to an embedded nats-server (the pages and every
// publish with its ack), directly and over a link that delays each
// direction by half a millisecond, as a NATS server on another host does.
// The difference from dry is what the publishes cost.
func BenchmarkBackfillFromSources(b *testing.B) {
	o := orthancWithStudies(b, "backfill-bench", benchStudies)
	srv := testnats.StartWith(b, func(o *server.Options) { o.Port, o.DontListen = -1, false })
	oc := &config.Orthanc{URL: o.URL, SourceName: "main"}
	since := time.Now().Add(-24 * time.Hour)
	destinations := 0
	for _, bb := range []struct {
		name  string
		dry   bool
		delay time.Duration // each way, between the backfill and NATS
	}{{"dry", true, 0}, {"queued", false, 0}, {"queued-1ms-round-trip", false, 500 * time.Microsecond}} {
		b.Run(bb.name, func(b *testing.B) {
			url := srv.ClientURL()
			if bb.delay > 0 {
				url = testnats.SlowLink(b, strings.TrimPrefix(url, "nats://"), bb.delay)
			}
			nc, err := nats.Connect(url)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(nc.Close)
			js, err := jetstream.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			conn := &natsjs.Conn{NC: nc, JS: js}
			for range b.N {
				b.StopTimer()
				// A destination of its own each run: the same studies
				// again would be duplicates.
				destinations++
				destination := fmt.Sprintf("bench%d", destinations)
				if _, err := natsjs.DefaultTopology().EnsureLanes(context.Background(), srv.JS, []string{destination}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				n := 0
				dups, err := backfillFromSources(context.Background(), conn, oc, destination, events.PriorityLow, since, time.Time{}, bb.dry,
					func(*events.StudyStable, bool, error) { n++ })
				if err != nil || dups != 0 || n != benchStudies {
					b.Fatalf("backfill = %d studies, %d duplicates, %v; want %d, 0, nil", n, dups, err, benchStudies)
				}
			}
			b.ReportMetric(float64(b.N*benchStudies)/b.Elapsed().Seconds(), "studies/s")
		})
	}
}

// orthancWithStudies starts an Orthanc holding n stable studies of one
// small instance each, stored with one storescu run.
func orthancWithStudies(tb testing.TB, name string, n int) *testharness.Orthanc {
	tb.Helper()
	o := testharness.StartOrthanc(tb, testharness.OrthancOptions{Name: name, StableAge: 1})
	dir := tb.TempDir()
	for i := range n {
		// A directory each: WriteStudy names its files by series and
		// instance number.
		if _, err := dicomgen.WriteStudy(filepath.Join(dir, strconv.Itoa(i)), dicomgen.StudySpec{StudyInstanceUID: dicomgen.NewUID(), Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8}); err != nil {
			tb.Fatal(err)
		}
	}
	if res := o.StoreSCU(tb, dir); len(res.Failed) > 0 {
		tb.Fatalf("%d files not stored", len(res.Failed))
	}
	o.WaitStudies(tb, n, time.Minute)
	o.WaitStable(tb, time.Minute)
	return o
}
