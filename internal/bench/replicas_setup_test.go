package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testharness"
)

// replicasPrefix starts every variable of BenchmarkReplicas: its knobs are
// its own, so that they never change what BenchmarkPipeline measures.
const replicasPrefix = "STOWLINE_BENCH_REPLICAS_"

// replicasDoc lists the variables, for the failure message of a bad one.
const replicasDoc = `STOWLINE_BENCH_REPLICAS_STUDIES (64), _INSTANCES (40 per study), _ROWS (256), _COLS (256),
_COUNTS ("1,2,4": forwarder processes), _CONCURRENCY (2), _PARALLEL (2), _MAX_INSTANCES (100),
_EQUIVALENT (1: also one process with COUNT x CONCURRENCY), _DESTS ("loopback,cloud"; also "orthanc"),
_CLOUD_LATENCY (50ms), _CLOUD_BYTES_PER_SECOND (20000000), _ROUNDS (5), _MAX_OTHER_LOAD (0.25),
_TIMEOUT (5m), _SOURCE (this module), _A_HTTP_THREADS (0: Orthanc's default, 50)`

// replicaSettings are BenchmarkReplicas' knobs.
type replicaSettings struct {
	// Studies of Instances instances of Rows x Cols 16-bit pixels each.
	Studies, Instances, Rows, Cols int
	// Counts are the numbers of forwarder processes to measure.
	Counts []int
	// Concurrency and MaxInstances are every replica's
	// FORWARDER_CONCURRENCY and STOW_MAX_INSTANCES, Parallel its STOW-RS
	// requests in flight: its share of the destination's
	// STOW_PARALLEL_REQUESTS (Parallel×K for K replicas), held fixed by
	// STOW_PARALLEL_MIN, so that only the number of processes changes.
	Concurrency, Parallel, MaxInstances int
	// Equivalent also measures, for every count K above 1, one process
	// with FORWARDER_CONCURRENCY K x Concurrency: the same studies in
	// flight as K replicas, in one process.
	Equivalent bool
	// Dests are the destinations: "loopback", "cloud", "orthanc".
	Dests []string
	// CloudLatency and CloudBytesPerSecond shape the "cloud" sink.
	CloudLatency        time.Duration
	CloudBytesPerSecond int
	// Rounds each case runs; medians are reported.
	Rounds int
	// MaxOtherLoad is the competing load (cores) above which a measurement
	// is taken again, up to replicaMaxAttempts times; 0 keeps every first
	// attempt.
	MaxOtherLoad float64
	// Timeout bounds one measurement.
	Timeout time.Duration
	// Source is the module root cmd/forwarder is built from.
	Source string
	// AThreads, when above 0, is Orthanc A's HttpThreadsCount (Orthanc's
	// default is 50). Orthanc serves each connection on one thread for
	// as long as it stays open, idle keep-alive included, so the
	// connections of all replicas together must fit.
	AThreads int
}

// replicaMaxAttempts bounds how often one measurement is taken again
// because other programs were busy.
const replicaMaxAttempts = 3

func loadReplicaSettings(getenv func(string) string) (replicaSettings, error) {
	e := &envVars{prefix: replicasPrefix, getenv: getenv}
	var s replicaSettings
	s.Studies = e.integer("STUDIES", 64, 1, 1000)
	s.Instances = e.integer("INSTANCES", 40, 1, 10000)
	s.Rows = e.integer("ROWS", 256, 1, 4096)
	s.Cols = e.integer("COLS", 256, 1, 4096)
	s.Concurrency = e.integer("CONCURRENCY", 2, 1, 64)
	s.Parallel = e.integer("PARALLEL", 2, 1, 16)
	s.MaxInstances = e.integer("MAX_INSTANCES", 100, 1, 10000)
	s.Equivalent = e.integer("EQUIVALENT", 1, 0, 1) == 1
	s.CloudLatency = e.duration("CLOUD_LATENCY", 50*time.Millisecond, 0, "a duration of at least 0s")
	s.CloudBytesPerSecond = e.integer("CLOUD_BYTES_PER_SECOND", 20_000_000, 0, 1<<30)
	s.Rounds = e.integer("ROUNDS", 5, 1, 50)
	s.Timeout = e.duration("TIMEOUT", 5*time.Minute, time.Second, "a duration of at least 1s")
	s.Source = e.get("SOURCE")
	s.AThreads = e.integer("A_HTTP_THREADS", 0, 0, 1000)
	s.MaxOtherLoad = e.cores("MAX_OTHER_LOAD", 0.25)
	counts := e.get("COUNTS")
	if counts == "" {
		counts = "1,2,4"
	}
	for item := range strings.SplitSeq(counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(item))
		if err != nil || n < 1 || n > 32 {
			e.bad("COUNTS", item, "integers in 1..32 separated by commas")
			continue
		}
		s.Counts = append(s.Counts, n)
	}
	if s.Equivalent && s.Concurrency*replicaMaxCount(s.Counts) > 256 {
		e.bad("CONCURRENCY", strconv.Itoa(s.Concurrency), "at most 256 times the largest count (FORWARDER_CONCURRENCY's limit)")
	}
	dests := e.get("DESTS")
	if dests == "" {
		dests = "loopback,cloud"
	}
	for item := range strings.SplitSeq(dests, ",") {
		switch d := strings.TrimSpace(item); d {
		case replicaDestLoopback, replicaDestCloud, replicaDestOrthanc:
			s.Dests = append(s.Dests, d)
		default:
			e.bad("DESTS", item, `"loopback", "cloud" or "orthanc", separated by commas`)
		}
	}
	return s, e.err(replicasDoc)
}

func replicaMaxCount(v []int) int {
	m := 0
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

// The destinations.
const (
	// replicaDestLoopback is the discard sink answering at once: the
	// forwarders, A and the sink compete for this machine's cores,
	// nothing else.
	replicaDestLoopback = "loopback"
	// replicaDestCloud is the sink behaving like a distant DICOMweb service.
	replicaDestCloud = "cloud"
	// replicaDestOrthanc is a real Orthanc B with the DICOMweb plugin.
	replicaDestOrthanc = "orthanc"
)

// replicaDest is one destination the forwarders send to.
type replicaDest struct {
	name string
	// url is the DICOMWEB_URL the forwarders get.
	url string
	// sink is the discard server (nil for Orthanc B); it runs in this
	// process.
	sink *stowsink.Sink
	b    *testharness.Orthanc
	desc string
}

// replicaStudy is one study of A.
type replicaStudy struct {
	ID, UID, LastUpdate string
	Instances           int
	Bytes               int64
}

// replicaRig is the shared setup of BenchmarkReplicas: the NATS server,
// Orthanc A with its studies, the destinations and the forwarder binary.
type replicaRig struct {
	set replicaSettings
	tmp string
	a   *testharness.Orthanc

	nats    *natsjs.EmbeddedServer
	natsURL string
	nc      *nats.Conn
	js      jetstream.JetStream

	studies    []replicaStudy
	total      int // instances
	totalBytes int64

	dests []*replicaDest
	// bin is the forwarder binary, source what it was built from.
	bin, source string
}

// replicaEventSource is the source name of the benchmark's events; the
// forwarders have no ORTHANC_SOURCE_NAME, so they take any source.
const replicaEventSource = "bench-a"

// setupReplicas starts the NATS server, Orthanc A (and B when asked),
// loads the studies into A, starts the sinks and builds cmd/forwarder.
func setupReplicas(b *testing.B) *replicaRig {
	b.Helper()
	set, err := loadReplicaSettings(os.Getenv)
	if err != nil {
		b.Fatal(err)
	}
	checkBenchRun(b, "Replicas", replicasPrefix+"ROUNDS")
	r := &replicaRig{set: set, tmp: b.TempDir()}

	// One nats-server for every forwarder, listening on loopback TCP like
	// a shared server of a real deployment. It runs in this process: its
	// CPU counts as the benchmark's own, not the forwarders'.
	r.nats, err = natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{
		StoreDir: filepath.Join(r.tmp, "nats"), ServerName: "bench-replicas", Port: -1, // -1: any free port
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.nats.Shutdown)
	r.natsURL = r.nats.ClientURL()
	if r.nc, err = r.nats.Connect(nats.Name("bench-replicas")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.nc.Close)
	if r.js, err = jetstream.New(r.nc); err != nil {
		b.Fatal(err)
	}

	aOpts := testharness.OrthancOptions{Name: "bench-replicas-a"}
	if set.AThreads > 0 {
		aOpts.Extra = map[string]any{"HttpThreadsCount": set.AThreads}
	}
	r.a = testharness.StartOrthanc(b, aOpts)
	b.Logf("orthanc A %s (pid %d), NATS %s", r.a.URL, r.a.PID(), r.natsURL)
	r.loadStudies(b)

	for _, d := range set.Dests {
		r.dests = append(r.dests, r.startDest(b, d))
	}
	r.bin, r.source = r.buildForwarder(b)
	return r
}

// startDest starts one destination.
func (r *replicaRig) startDest(b *testing.B, name string) *replicaDest {
	b.Helper()
	d := &replicaDest{name: name}
	switch name {
	case replicaDestOrthanc:
		d.b = testharness.StartOrthanc(b, testharness.OrthancOptions{Name: "bench-replicas-b", DicomWeb: true})
		d.url = d.b.URL + "/dicom-web"
		d.desc = "Orthanc B (DICOMweb plugin) on loopback"
		return d
	case replicaDestLoopback:
		d.sink = stowsink.New(stowsink.Options{})
		d.desc = "discard STOW-RS sink on loopback, in the benchmark process"
	case replicaDestCloud:
		// A distant cloud DICOMweb service: 50 ms per request is a
		// cross-region round trip plus the service's commit; 20 MB/s per
		// request is what one TCP connection gets over a 50 ms path with
		// a 1 MiB window (1 MiB / 50 ms = 21 MB/s). The service itself
		// scales out, so only the number of requests in flight bounds the
		// total: the case where more forwarders should help.
		d.sink = stowsink.New(stowsink.Options{Latency: r.set.CloudLatency, BytesPerSecond: r.set.CloudBytesPerSecond})
		d.desc = fmt.Sprintf("discard STOW-RS sink with %v latency and %.0f MB/s per request", r.set.CloudLatency, float64(r.set.CloudBytesPerSecond)/1e6)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: d.sink, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	d.url = "http://" + ln.Addr().String() + "/dicom-web"
	return d
}

// loadStudies generates the studies, uploads them to A and records what A
// stores.
func (r *replicaRig) loadStudies(b *testing.B) {
	b.Helper()
	start := time.Now()
	var files []string
	for i := range r.set.Studies {
		f, err := dicomgen.WriteStudy(filepath.Join(r.tmp, "studies", fmt.Sprintf("study%03d", i)), dicomgen.StudySpec{
			PatientID: fmt.Sprintf("BENCH-REPLICAS-%03d", i), PatientName: "Synthetic^Replicas",
			Series: 1, InstancesPerSeries: r.set.Instances, Rows: r.set.Rows, Columns: r.set.Cols,
		})
		if err != nil {
			b.Fatal(err)
		}
		files = append(files, f...)
	}
	gen := time.Since(start)

	start = time.Now()
	uploadAll(b, r.a, files)
	upload := time.Since(start)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var ids []string
	if err := r.a.Do(ctx, http.MethodGet, "/studies", nil, &ids); err != nil {
		b.Fatal(err)
	}
	if len(ids) != r.set.Studies {
		b.Fatalf("A holds %d studies, want %d", len(ids), r.set.Studies)
	}
	r.studies = make([]replicaStudy, len(ids))
	err := parallel(ctx, len(ids), 4, func(ctx context.Context, i int) error {
		var study struct {
			LastUpdate    string
			MainDicomTags struct{ StudyInstanceUID string }
		}
		if err := r.a.Do(ctx, http.MethodGet, "/studies/"+ids[i], nil, &study); err != nil {
			return err
		}
		var insts []struct{ FileSize int64 }
		if err := r.a.Do(ctx, http.MethodGet, "/studies/"+ids[i]+"/instances", nil, &insts); err != nil {
			return err
		}
		if len(insts) != r.set.Instances {
			return fmt.Errorf("A holds %d instances of study %s, want %d", len(insts), ids[i], r.set.Instances)
		}
		st := replicaStudy{ID: ids[i], UID: study.MainDicomTags.StudyInstanceUID, LastUpdate: study.LastUpdate, Instances: len(insts)}
		for _, in := range insts {
			st.Bytes += in.FileSize
		}
		r.studies[i] = st
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	for _, st := range r.studies {
		r.total += st.Instances
		r.totalBytes += st.Bytes
	}
	b.Logf("%d studies, %d instances, %.1f MB (%dx%d px); generated in %v, uploaded to A in %v",
		len(r.studies), r.total, float64(r.totalBytes)/1e6, r.set.Rows, r.set.Cols,
		gen.Round(time.Millisecond), upload.Round(time.Millisecond))
}

// buildForwarder compiles cmd/forwarder once; every replica runs it.
func (r *replicaRig) buildForwarder(b *testing.B) (bin, source string) {
	b.Helper()
	root, err := moduleRoot(r.set.Source)
	if err != nil {
		b.Fatalf("forwarder source: %v (set %sSOURCE to a module root)", err, replicasPrefix)
	}
	bin = filepath.Join(r.tmp, "forwarder")
	goBuild(b, root, "the forwarder", "./cmd/forwarder", bin)
	return bin, describeSource(root)
}

// resetQueue deletes the event stream, and with it the forwarders'
// consumer, so every measurement starts from an empty queue, a new
// consumer and an empty de-duplication window. The forwarders create both
// again when they start (all at once: that is part of what is tested).
func (r *replicaRig) resetQueue(ctx context.Context) error {
	err := r.js.DeleteStream(ctx, natsjs.EventStream)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete stream %s: %w", natsjs.EventStream, err)
	}
	return nil
}

// publishAll queues every study's event, as the ingest would.
func (r *replicaRig) publishAll(ctx context.Context) error {
	for _, st := range r.studies {
		ev := &events.StudyStable{
			Type: events.TypeStudyStable, Version: events.Version, Source: replicaEventSource,
			OrthancStudyID: st.ID, StudyInstanceUID: st.UID, LastUpdate: st.LastUpdate,
			ReceivedAt: time.Now().UTC(),
		}
		if err := ev.Validate(); err != nil {
			return err
		}
		ack, err := (natsjs.Publisher{JS: r.js}).Publish(ctx, ev)
		if err != nil {
			return err
		}
		if ack.Duplicate {
			return fmt.Errorf("event %s reported as duplicate on a new stream", ev.MsgID())
		}
	}
	return nil
}

// checkQueue verifies that the consumer delivered every event exactly
// once and holds nothing back: no redelivery, nothing pending.
func (r *replicaRig) checkQueue(ctx context.Context) error {
	c, err := r.js.Consumer(ctx, natsjs.EventStream, natsjs.ForwarderConsumer)
	if err != nil {
		return fmt.Errorf("consumer %s: %w", natsjs.ForwarderConsumer, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	n := uint64(len(r.studies))
	if info.NumPending != 0 || info.NumAckPending != 0 || info.Delivered.Consumer != n || info.AckFloor.Consumer != n {
		return fmt.Errorf("consumer after the transfer: %d pending, %d awaiting ack, %d deliveries, ack floor %d; want 0, 0, %d, %d",
			info.NumPending, info.NumAckPending, info.Delivered.Consumer, info.AckFloor.Consumer, n, n)
	}
	return nil
}

// count is how many distinct instances the destination holds.
func (d *replicaDest) count(ctx context.Context) (int, error) {
	if d.sink != nil {
		return d.sink.Distinct(), nil
	}
	var st struct{ CountInstances int }
	err := d.b.Do(ctx, http.MethodGet, "/statistics", nil, &st)
	return st.CountInstances, err
}

// wait blocks until the destination holds n distinct instances.
func (d *replicaDest) wait(ctx context.Context, n int) error {
	if d.sink != nil {
		return d.sink.WaitDistinct(ctx, n)
	}
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		have, err := d.count(ctx)
		if err == nil && have >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("B holds %d of %d instances (last poll error: %v): %w", have, n, err, ctx.Err())
		case <-t.C:
		}
	}
}

// check verifies that the destination received every instance once and
// every byte, then empties it for the next measurement.
func (d *replicaDest) check(ctx context.Context, r *replicaRig) error {
	if d.sink != nil {
		st := d.sink.Stats()
		distinct := d.sink.Distinct()
		d.sink.Reset()
		if distinct != r.total || st.Instances != int64(r.total) || st.Bytes != r.totalBytes {
			return fmt.Errorf("sink received %d instances (%d distinct), %d bytes; want each of %d once, %d bytes",
				st.Instances, distinct, st.Bytes, r.total, r.totalBytes)
		}
		return nil
	}
	n, err := d.count(ctx)
	if err != nil {
		return err
	}
	if n != r.total {
		return fmt.Errorf("B holds %d instances, want %d", n, r.total)
	}
	var ids []string
	if err := d.b.Do(ctx, http.MethodGet, "/patients", nil, &ids); err != nil {
		return err
	}
	for _, id := range ids {
		if err := d.b.Do(ctx, http.MethodDelete, "/patients/"+id, nil, nil); err != nil {
			return fmt.Errorf("empty B: %w", err)
		}
	}
	if n, err := d.count(ctx); err != nil || n != 0 {
		return fmt.Errorf("B holds %d instances after the delete (err %v)", n, err)
	}
	return nil
}

// requests is the number of STOW-RS requests the destination answered
// (sinks only; -1 for Orthanc B).
func (d *replicaDest) requests() int {
	if d.sink == nil {
		return -1
	}
	return int(d.sink.Stats().Requests)
}
