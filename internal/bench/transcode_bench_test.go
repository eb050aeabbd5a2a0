package bench

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// BenchmarkTranscode measures what STOW_TRANSFER_SYNTAXES costs: the
// generated study (STOWLINE_BENCH_SERIES, _PER_SERIES, _ROWS, _COLS),
// rewritten as Implicit VR Little Endian with dcmconv, is forwarded from
// Orthanc A into the discard sink by the forwarder (in this process, with
// an embedded JetStream) as it is, and converted to Explicit VR Little
// Endian; and read from A with 4 workers as files and converted, without
// sending. Medians of STOWLINE_BENCH_ROUNDS rounds, cases alternating:
//
//	go test -run '^$' -bench Transcode -benchtime 1x -timeout 30m ./internal/bench/
func BenchmarkTranscode(b *testing.B) {
	set, err := loadSettings(os.Getenv)
	if err != nil {
		b.Fatal(err)
	}
	dcmconv := testharness.RequireBinary(b, "dcmconv")
	files, err := dicomgen.WriteStudy(b.TempDir(), dicomgen.StudySpec{PatientID: "TRANSCODE", Series: set.Series, InstancesPerSeries: set.PerSeries, Rows: set.Rows, Columns: set.Cols})
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range files {
		if out, err := exec.Command(dcmconv, "+ti", f, f).CombinedOutput(); err != nil {
			b.Fatalf("dcmconv +ti %s: %v: %s", f, err, out)
		}
	}
	a := testharness.StartOrthanc(b, testharness.OrthancOptions{Name: "transcode-a"})
	if res := a.Upload(b, files...); len(res.Failed) > 0 {
		b.Fatalf("upload: %v", res.Failed)
	}
	src, err := orthancapi.New(a.URL)
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	var studies []string
	a.GetJSON(b, "/studies", &studies)
	instances, err := src.StudyInstances(ctx, studies[0])
	if err != nil {
		b.Fatal(err)
	}
	var bytes int64
	for _, in := range instances {
		bytes += in.FileSize
	}
	sink := stowsink.New(stowsink.Options{})
	sinkSrv := httptest.NewServer(sink)
	b.Cleanup(sinkSrv.Close)
	ns := testnats.Start(b)
	cons, err := natsjs.DefaultTopology().EnsureConsumer(ctx, ns.JS, natsjs.DefaultDestination)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("# transcode: %d instances, %.1f MB Implicit VR LE, Orthanc %s\n", len(instances), float64(bytes)/1e6, a.Release.Name)

	type tcase struct {
		name    string
		run     func(round int) error
		seconds []float64
	}
	// Each forward is a new event: a later LastUpdate, which JetStream
	// does not drop as a repeat.
	events := 0
	forwardCase := func(name string, syntaxes []string) *tcase {
		return &tcase{name: name, run: func(int) error {
			events++
			return forwardOnce(ctx, ns, cons, src, sinkSrv.URL, sink, syntaxes, studies[0], events, len(instances))
		}}
	}
	readCase := func(name string, open func(ctx context.Context, id string) (io.ReadCloser, error)) *tcase {
		return &tcase{name: name, run: func(int) error { return readAll(ctx, instances, open) }}
	}
	cases := []*tcase{
		forwardCase("forward plain", nil),
		forwardCase("forward converted", []string{"1.2.840.10008.1.2.1"}),
		readCase("read files", func(ctx context.Context, id string) (io.ReadCloser, error) {
			rc, _, err := src.OpenInstanceFile(ctx, id)
			return rc, err
		}),
		readCase("read converted", func(ctx context.Context, id string) (io.ReadCloser, error) {
			return src.OpenTranscodedInstance(ctx, id, "1.2.840.10008.1.2.1")
		}),
	}
	for _, c := range cases { // warm-up
		if err := c.run(-1); err != nil {
			b.Fatalf("%s: %v", c.name, err)
		}
	}
	for round := range set.Rounds {
		order := slices.Clone(cases)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, c := range order {
			start := time.Now()
			if err := c.run(round); err != nil {
				b.Fatalf("%s: %v", c.name, err)
			}
			c.seconds = append(c.seconds, time.Since(start).Seconds())
			fmt.Printf("# round %d/%d %-18s %6.2f s  loadavg %s\n", round+1, set.Rounds, c.name, c.seconds[len(c.seconds)-1], loadavg())
		}
	}
	medians := map[string]float64{}
	for _, c := range cases {
		slices.Sort(c.seconds)
		m := c.seconds[len(c.seconds)/2]
		medians[c.name] = m
		fmt.Printf("%-18s median %6.2f s  %7.1f MB/s (source bytes)\n", c.name, m, float64(bytes)/1e6/m)
	}
	fmt.Printf("converted forward takes %.2fx the plain forward's time; reading converted takes %.2fx reading files\n",
		medians["forward converted"]/medians["forward plain"], medians["read converted"]/medians["read files"])
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportMetric(medians[c.name], "s/study")
			b.ReportMetric(float64(bytes)/1e6/medians[c.name], "MB/s")
		})
	}
}

// forwardOnce publishes the study's event and runs a forwarder until it
// is acked.
func forwardOnce(ctx context.Context, ns *testnats.Server, cons jetstream.Consumer, src *orthancapi.Client, sinkURL string,
	sink *stowsink.Sink, syntaxes []string, studyID string, event, n int) error {
	client, err := dicomweb.New(sinkURL, nil)
	if err != nil {
		return err
	}
	fw, err := forward.New(forward.Options{
		DestinationName: natsjs.DefaultDestination, Lanes: []forward.Lane{{Priority: events.PriorityRoutine, Consumer: cons}},
		SourceFor:   func(string) (forward.Source, error) { return src, nil },
		Destination: client, Concurrency: 1, MaxInstances: 100, MaxBytes: 256 << 20, RequestConcurrency: 4,
		AckWait: time.Minute, RetryDelay: time.Second, RetryMaxDelay: time.Second, TransferSyntaxes: syntaxes,
	})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- fw.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	sink.Reset()
	ev := &events.StudyStable{Type: events.TypeStudyStable, Version: 1, Source: "a", OrthancStudyID: studyID,
		StudyInstanceUID: "1.2.3", LastUpdate: time.Date(2026, 12, 2, 0, 0, event, 0, time.UTC).Format("20060102T150405")}
	ack, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, ev)
	if err != nil {
		return err
	}
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.AckFloor.Stream >= ack.Sequence {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := sink.Distinct(); got != n {
		return fmt.Errorf("the sink got %d instances, want %d", got, n)
	}
	return nil
}

// readAll reads every instance with open, 4 at a time, and discards it.
func readAll(ctx context.Context, instances []orthancapi.Instance, open func(ctx context.Context, id string) (io.ReadCloser, error)) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, in := range instances {
		g.Go(func() error {
			rc, err := open(ctx, in.ID)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			return err
		})
	}
	return g.Wait()
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if len(b) > 14 {
		b = b[:14]
	}
	return string(b)
}
