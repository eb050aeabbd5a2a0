package bench

import (
	"cmp"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testharness"
)

// largeRSSLimit is the target: the forwarder's peak RSS while it forwards
// one 2 GB study, streaming end to end.
const largeRSSLimit = 64 << 20

// largeRSSInterval is how often stowline's RSS is sampled.
const largeRSSInterval = 50 * time.Millisecond

// BenchmarkLargeStudy forwards one large generated study from a real
// Orthanc A into the discard STOW-RS sink (internal/stowsink, served by
// this process) with the real stowline binary, and reports stowline's peak
// RSS against the 64 MiB target. By default the study holds 192 instances
// of 2048x2048 16-bit pixels (8 MiB each, like a digital radiograph or a
// mammogram) and one instance of 16384x16384 pixels (512 MiB, like a
// breast tomosynthesis volume in one instance): 2 GiB. The sink stands in
// for the destination so that the destination's storage is neither the
// bottleneck nor a second copy on the disk.
//
//	go test -run '^$' -bench LargeStudy -benchtime 1x -timeout 30m ./internal/bench/
func BenchmarkLargeStudy(b *testing.B) {
	l := setupLarge(b)
	l.printHeader()
	var cases []*largeCase
	for _, fs := range l.set.Stowline {
		cases = append(cases, &largeCase{name: "stowline-to-sink/" + fs.String(),
			run: func(ctx context.Context, round int) (largeSample, error) { return l.run(ctx, fs, round) }})
	}
	if len(cases) == 0 {
		b.Fatal("nothing to measure: " + envPrefix + "LARGE_STOWLINE is \"-\"")
	}
	for _, w := range l.set.shared.ReadWorkers {
		cases = append(cases, &largeCase{name: fmt.Sprintf("ref-A-read/workers=%d", w), read: true,
			run: func(ctx context.Context, _ int) (largeSample, error) { return l.runRead(ctx, w) }})
	}
	for round := range l.set.Rounds {
		for _, c := range roundOrder(cases, round) {
			s := l.measure(b, c, round)
			c.samples = append(c.samples, s)
			fmt.Printf("# round %d/%d %-32s %s\n", round+1, l.set.Rounds, c.name, l.line(s))
		}
	}
	var read *largeSummary
	for _, c := range cases {
		if s := l.summarize(c); c.read && (read == nil || s.mbPerS > read.mbPerS) {
			read = &s
		}
	}
	l.printTable(cases, read)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) { l.report(b, c, read) })
	}
}

// largeGroup is one series of the large study: Count instances of Rows x
// Cols 16-bit pixels.
type largeGroup struct{ Count, Rows, Cols int }

func (g largeGroup) bytes() int64 { return int64(g.Count) * int64(g.Rows) * int64(g.Cols) * 2 }

// largeSettings are BenchmarkLargeStudy's knobs (STOWLINE_BENCH_LARGE_*);
// the shared ones (_SOURCE, _PROFILE_DIR, _TIMEOUT, _STOWLINE_ENV,
// _MAX_OTHER_LOAD) come from settings.
type largeSettings struct {
	shared   settings
	Shape    []largeGroup
	Stowline []fwdSetting
	Rounds   int
}

const largeSettingsDoc = `STOWLINE_BENCH_LARGE_SHAPE ("192x2048x2048,1x16384x16384": COUNTxROWSxCOLS per series),
STOWLINE_BENCH_LARGE_STOWLINE ("4/100,4/100/4": concurrency/max instances[/STOW_PARALLEL_REQUESTS], 4/100 the defaults),
STOWLINE_BENCH_LARGE_ROUNDS (3)`

func loadLargeSettings(getenv func(string) string) (largeSettings, error) {
	shared, err := loadSettings(getenv)
	if err != nil {
		return largeSettings{}, err
	}
	s := largeSettings{shared: shared}
	e := &envVars{prefix: envPrefix, getenv: getenv}
	shape := e.get("LARGE_SHAPE")
	if shape == "" {
		shape = "192x2048x2048,1x16384x16384"
	}
	for _, item := range strings.Split(shape, ",") {
		f := strings.Split(strings.TrimSpace(item), "x")
		var n []int
		for _, v := range f {
			if i, err := strconv.Atoi(v); err == nil && i >= 1 {
				n = append(n, i)
			}
		}
		// dicomgen: Rows and Columns up to 65535, PixelData under 4 GiB.
		if len(f) != 3 || len(n) != 3 || n[0] > 100000 || n[1] > 65535 || n[2] > 65535 || int64(n[1])*int64(n[2])*2 > 0xFFFFFFFE {
			e.errs = append(e.errs, fmt.Sprintf("%sLARGE_SHAPE: %q is not COUNTxROWSxCOLS (rows and columns 1..65535, under 4 GiB of pixels)", envPrefix, item))
			continue
		}
		s.Shape = append(s.Shape, largeGroup{Count: n[0], Rows: n[1], Cols: n[2]})
	}
	s.Stowline = e.fwdSettings("LARGE_STOWLINE", "4/100,4/100/4")
	s.Rounds = e.integer("LARGE_ROUNDS", 3, 1, 50)
	return s, e.err(largeSettingsDoc)
}

// large is the setup of one BenchmarkLargeStudy run.
type large struct {
	set  largeSettings
	a    *testharness.Orthanc
	tmp  string
	http *http.Client

	sink    *stowsink.Sink
	sinkURL string

	studyID, studyUID, lastUpdate string
	// ids are A's instance IDs, sizes their file sizes.
	ids                         []string
	sizes                       []int64
	count                       int
	totalBytes, largestInstance int64
	// storedBytes is the size of A's storage directory once the study
	// was loaded.
	storedBytes int64

	stowline, source string
}

type largeCase struct {
	name string
	// read is the reference: A's raw parallel read.
	read    bool
	run     func(ctx context.Context, round int) (largeSample, error)
	samples []largeSample
}

// largeSample is one measured transfer.
type largeSample struct {
	// toSink is the time from the webhook POST until the sink held every
	// instance; done until stowline logged "study forwarded".
	toSink, done time.Duration
	// CPU time of stowline, A, the sink (this process) and the rest of
	// the machine during the transfer.
	cpuClient, cpuA, cpuSink, other time.Duration
	// readyRSS is stowline's RSS when it was ready and idle; sampledRSS
	// the largest of its RSS read every largeRSSInterval during the
	// transfer; peakRSS its VmHWM (the exact peak) after it. readyAnon
	// and sampledAnon are the same for its anonymous memory (RssAnon):
	// RSS also counts the pages of the binary it touched (about 32 MiB
	// of a 59 MB binary), which the kernel shares and can drop.
	readyRSS, sampledRSS, peakRSS int64
	readyAnon, sampledAnon        int64
	// rssTrace is the RSS samples, in MiB, thinned to at most 24.
	rssTrace []int64
	requests int
	attempts int
}

func (s largeSample) otherLoad() float64 { return s.other.Seconds() / max(s.toSink, s.done).Seconds() }

func setupLarge(b *testing.B) *large {
	b.Helper()
	set, err := loadLargeSettings(os.Getenv)
	if err != nil {
		b.Fatal(err)
	}
	checkBenchRun(b, "LargeStudy", envPrefix+"LARGE_ROUNDS")
	l := &large{set: set, http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}}}
	// Registered before the first TempDir, so it runs after the testing
	// package removed the temporary directories: A's storage (gigabytes)
	// must not outlive the benchmark.
	b.Cleanup(func() {
		if l.a == nil {
			return
		}
		if _, err := os.Stat(l.a.Dir); !os.IsNotExist(err) {
			b.Errorf("Orthanc A's directory %s is still there after the benchmark (stat: %v)", l.a.Dir, err)
			return
		}
		fmt.Printf("# Orthanc A's storage directory (%.1f MB with the study) was removed\n", float64(l.storedBytes)/1e6)
	})
	l.tmp = b.TempDir()
	b.Cleanup(l.http.CloseIdleConnections)
	l.a = testharness.StartOrthanc(b, testharness.OrthancOptions{Name: "bench-large-a"})
	b.Logf("orthanc A %s (pid %d), storage in %s", l.a.URL, l.a.PID(), l.a.Dir)
	l.sink, l.sinkURL = serveSink(b, stowsink.Options{})
	l.load(b)
	// Runs before A stops: the study is deleted from A (and its storage
	// with it) as soon as the benchmark is done.
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := l.a.Do(ctx, http.MethodDelete, "/studies/"+l.studyID, nil, nil); err != nil {
			b.Errorf("delete the study from A: %v", err)
		}
	})
	l.stowline, l.source = buildStowline(b, set.shared, l.tmp)
	return l
}

// load generates the study straight into POST /instances of A (no file
// on disk: each instance streams from the generator through a pipe), and
// checks that A stores every instance byte for byte (its MD5).
func (l *large) load(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var jobs []dicomgen.InstanceSpec
	studyUID, frameUID := dicomgen.NewUID(), dicomgen.NewUID()
	for gi, g := range l.set.Shape {
		seriesUID := dicomgen.NewUID()
		for i := 1; i <= g.Count; i++ {
			jobs = append(jobs, dicomgen.InstanceSpec{
				StudyInstanceUID: studyUID, SeriesInstanceUID: seriesUID, SOPInstanceUID: dicomgen.NewUID(),
				FrameOfReferenceUID: frameUID, PatientID: "BENCH-LARGE", PatientName: "Synthetic^Large",
				StudyID: "1", SeriesDescription: fmt.Sprintf("%dx%d", g.Rows, g.Cols),
				SeriesNumber: gi + 1, InstanceNumber: i, Rows: g.Rows, Columns: g.Cols,
			})
		}
	}
	// The largest instances first, so the long uploads overlap the rest.
	slices.SortStableFunc(jobs, func(x, y dicomgen.InstanceSpec) int {
		return cmp.Compare(y.Rows*y.Columns, x.Rows*x.Columns)
	})
	start := time.Now()
	var mu sync.Mutex
	sums := map[string]string{} // Orthanc instance ID -> MD5 of the generated bytes
	// Two uploads at once: Orthanc parses and stores each on one thread.
	err := parallel(ctx, len(jobs), 2, func(ctx context.Context, i int) error {
		id, sum, err := l.upload(ctx, jobs[i])
		if err != nil {
			return fmt.Errorf("upload instance %d (%dx%d): %w", jobs[i].InstanceNumber, jobs[i].Rows, jobs[i].Columns, err)
		}
		mu.Lock()
		sums[id] = sum
		mu.Unlock()
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	upload := time.Since(start)

	var studies []string
	if err := l.a.Do(ctx, http.MethodGet, "/studies", nil, &studies); err != nil || len(studies) != 1 {
		b.Fatalf("A holds studies %v (err %v), want 1", studies, err)
	}
	l.studyID = studies[0]
	var study struct {
		LastUpdate    string
		MainDicomTags struct{ StudyInstanceUID string }
	}
	if err := l.a.Do(ctx, http.MethodGet, "/studies/"+l.studyID, nil, &study); err != nil {
		b.Fatal(err)
	}
	l.studyUID, l.lastUpdate = study.MainDicomTags.StudyInstanceUID, study.LastUpdate
	var insts []struct {
		ID       string
		FileSize int64
	}
	if err := l.a.Do(ctx, http.MethodGet, "/studies/"+l.studyID+"/instances", nil, &insts); err != nil {
		b.Fatal(err)
	}
	if len(insts) != len(jobs) {
		b.Fatalf("A holds %d instances, %d were uploaded", len(insts), len(jobs))
	}
	for _, in := range insts {
		md5sum, err := l.storedMD5(ctx, in.ID)
		if err != nil {
			b.Fatalf("A's MD5 of instance %s: %v", in.ID, err)
		}
		if md5sum != sums[in.ID] {
			b.Fatalf("A stores instance %s with MD5 %s, the generated bytes have %s", in.ID, md5sum, sums[in.ID])
		}
		l.totalBytes += in.FileSize
		l.largestInstance = max(l.largestInstance, in.FileSize)
		l.ids, l.sizes = append(l.ids, in.ID), append(l.sizes, in.FileSize)
	}
	l.count = len(insts)
	l.storedBytes = dirSize(l.a.Dir)
	b.Logf("study %s: %d instances, %.1f MB (largest %.1f MB); generated and uploaded to A in %v; A's directory holds %.1f MB",
		l.studyID, l.count, float64(l.totalBytes)/1e6, float64(l.largestInstance)/1e6, upload.Round(time.Millisecond), float64(l.storedBytes)/1e6)
}

// upload streams one generated instance into POST /instances and returns
// A's instance ID and the MD5 of the bytes sent.
func (l *large) upload(ctx context.Context, spec dicomgen.InstanceSpec) (id, sum string, err error) {
	pr, pw := io.Pipe()
	h := md5.New()
	go func() { pw.CloseWithError(dicomgen.WriteInstance(io.MultiWriter(pw, h), spec)) }()
	defer pr.Close()
	var out struct{ ID, Status string }
	if err := l.a.Do(ctx, http.MethodPost, "/instances", pr, &out); err != nil {
		return "", "", err
	}
	if out.Status != "Success" {
		return "", "", fmt.Errorf("POST /instances: status %q", out.Status)
	}
	return out.ID, hex.EncodeToString(h.Sum(nil)), nil
}

// storedMD5 is the MD5 Orthanc computed of the instance's file when it
// stored it (plain text, not JSON).
func (l *large) storedMD5(ctx context.Context, id string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.a.URL+"/instances/"+id+"/attachments/dicom/md5", nil)
	if err != nil {
		return "", err
	}
	resp, err := l.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
	}
	return strings.TrimSpace(string(body)), nil
}

// dirSize is the size of the files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// measure runs one transfer, again if other programs were busy (see
// pipeline.measure).
func (l *large) measure(b *testing.B, c *largeCase, round int) largeSample {
	b.Helper()
	var best largeSample
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), l.set.shared.Timeout)
		s, err := c.run(ctx, round)
		cancel()
		if err != nil {
			b.Fatalf("round %d, %s: %v", round+1, c.name, err)
		}
		if attempt == 1 || s.otherLoad() < best.otherLoad() {
			best = s
		}
		limit := l.set.shared.MaxOtherLoad
		if limit <= 0 || best.otherLoad() <= limit || attempt == maxAttempts {
			best.attempts = attempt
			return best
		}
		fmt.Printf("# again    %-32s other programs used %.2f cores (limit %.2f)\n", c.name, s.otherLoad(), limit)
	}
}

// run starts a fresh stowline, publishes the study's event and waits
// until the sink holds the study, sampling stowline's RSS meanwhile.
func (l *large) run(ctx context.Context, fs fwdSetting, round int) (s largeSample, err error) {
	dir, err := os.MkdirTemp(l.tmp, "stowline-")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(dir)
	l.sink.Reset()
	env := forwarderEnv(l.a.URL, l.sinkURL, fs, l.set.shared.StowlineEnv)
	if pd := l.set.shared.ProfileDir; pd != "" {
		base := filepath.Join(pd, fmt.Sprintf("large-%s-round%d", fileName(fs.String()), round))
		env["STOWLINE_PROFILE_CPU"] = base + ".cpu.pprof"
		env["STOWLINE_PROFILE_HEAP"] = base + ".heap.pprof"
		env["STOWLINE_PROFILE_HEAP_PEAK"] = base + ".heappeak.pprof"
	}
	maps.Copy(env, l.set.shared.StowlineEnv)
	proc, err := startStowline(ctx, l.stowline, dir, env)
	if err != nil {
		return s, err
	}
	stopped := false
	defer func() {
		if !stopped {
			err = proc.abort(err, 30)
		}
	}()
	pid := proc.pid()
	ready, err := readMem(pid)
	if err != nil {
		return s, err
	}
	s.readyRSS, s.readyAnon = ready.RSS, ready.Anon
	snap := func() (c [4]time.Duration, err error) {
		if c[0], err = machineBusy(); err != nil {
			return c, err
		}
		if c[1], err = cpuTime(pid); err != nil {
			return c, err
		}
		if c[2], err = cpuTime(l.a.PID()); err != nil {
			return c, err
		}
		c[3], err = cpuTime(os.Getpid())
		return c, err
	}
	before, err := snap()
	if err != nil {
		return s, err
	}

	// Sample the RSS until the transfer is over.
	stopSampling := make(chan struct{})
	sampled := make(chan []memStatus, 1)
	go func() {
		var mems []memStatus
		t := time.NewTicker(largeRSSInterval)
		defer t.Stop()
		for {
			if m, err := readMem(pid); err == nil {
				mems = append(mems, m)
			}
			select {
			case <-stopSampling:
				sampled <- mems
				return
			case <-t.C:
			}
		}
	}()
	defer func() {
		select {
		case <-stopSampling:
		default:
			close(stopSampling)
		}
	}()

	start := time.Now()
	if err := proc.publish(ctx, l.studyID, l.studyUID, l.lastUpdate); err != nil {
		return s, err
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- l.sink.WaitDistinct(ctx, l.count) }()
	select {
	case err := <-waitErr:
		if err != nil {
			return s, err
		}
		s.toSink = l.sink.Stats().Last.Sub(start)
	case ln := <-proc.lines.failed:
		return s, fmt.Errorf("stowline logged %q: %s", ln.Msg, ln.Err)
	case <-proc.exited:
		return s, fmt.Errorf("stowline exited: %v", proc.waitErr)
	}
	line, err := proc.forwarded(ctx)
	if err != nil {
		return s, err
	}
	close(stopSampling)
	mems := <-sampled
	s.done, s.requests = line.at.Sub(start), line.Requests
	after, err := snap()
	if err != nil {
		return s, err
	}
	s.cpuClient, s.cpuA, s.cpuSink = after[1]-before[1], after[2]-before[2], after[3]-before[3]
	s.other = max(0, after[0]-before[0]-s.cpuClient-s.cpuA-s.cpuSink)
	mem, err := readMem(pid)
	if err != nil {
		return s, err
	}
	s.peakRSS = mem.HWM
	rss := make([]int64, len(mems))
	for i, m := range mems {
		rss[i] = m.RSS
		s.sampledRSS, s.sampledAnon = max(s.sampledRSS, m.RSS), max(s.sampledAnon, m.Anon)
	}
	step := max(1, (len(rss)+23)/24)
	for i := 0; i < len(rss); i += step {
		s.rssTrace = append(s.rssTrace, slices.Max(rss[i:min(i+step, len(rss))])>>20)
	}
	stopped = true
	if err := proc.stop(); err != nil {
		return s, err
	}
	st, distinct := l.sink.Stats(), l.sink.Distinct()
	if line.Instances != l.count || distinct != l.count || st.Instances != int64(l.count) || st.Bytes != l.totalBytes {
		return s, fmt.Errorf("stowline logged %d instances; the sink got %d (%d distinct), %d bytes; the study has %d, %d bytes",
			line.Instances, st.Instances, distinct, st.Bytes, l.count, l.totalBytes)
	}
	return s, nil
}

// runRead reads every instance file from A with parallel GETs and
// discards it: the rate A serves this study, the ceiling of any forwarder
// reading through its REST API.
func (l *large) runRead(ctx context.Context, workers int) (largeSample, error) {
	var s largeSample
	self := os.Getpid()
	snap := func() (m, a, c time.Duration, err error) {
		if m, err = machineBusy(); err != nil {
			return
		}
		if a, err = cpuTime(l.a.PID()); err != nil {
			return
		}
		c, err = cpuTime(self)
		return
	}
	m0, a0, c0, err := snap()
	if err != nil {
		return s, err
	}
	start := time.Now()
	err = parallel(ctx, l.count, workers, func(ctx context.Context, i int) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.a.URL+"/instances/"+l.ids[i]+"/file", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept-Encoding", "identity")
		resp, err := l.http.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		buf := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(buf)
		n, err := io.CopyBuffer(writerOnly{io.Discard}, resp.Body, *buf)
		if err == nil && (resp.StatusCode != http.StatusOK || n != l.sizes[i]) {
			err = fmt.Errorf("GET /instances/%s/file: HTTP %d, %d bytes, want %d", l.ids[i], resp.StatusCode, n, l.sizes[i])
		}
		return err
	})
	s.toSink = time.Since(start)
	s.done = s.toSink
	if err != nil {
		return s, err
	}
	m1, a1, c1, err := snap()
	if err != nil {
		return s, err
	}
	s.cpuA, s.cpuClient = a1-a0, c1-c0
	s.other = max(0, m1-m0-s.cpuA-s.cpuClient)
	return s, nil
}

func (l *large) line(s largeSample) string {
	gb := float64(l.totalBytes) / 1e9
	if s.readyRSS == 0 { // the read reference
		return fmt.Sprintf("%6.2fs %6.1f MB/s  CPU s/GB: reader %.2f A %.2f  other load %.2f cores",
			s.toSink.Seconds(), float64(l.totalBytes)/1e6/s.toSink.Seconds(), s.cpuClient.Seconds()/gb, s.cpuA.Seconds()/gb, s.otherLoad())
	}
	return fmt.Sprintf("%6.2fs (done %6.2fs) %6.1f MB/s  CPU s/GB: stowline %.2f A %.2f sink %.2f  other load %.2f cores  RSS MiB: ready %.0f, sampled max %.0f, VmHWM %.0f (anonymous: ready %.0f, sampled max %.0f)  %d requests  RSS trace %v",
		s.toSink.Seconds(), s.done.Seconds(), float64(l.totalBytes)/1e6/s.toSink.Seconds(),
		s.cpuClient.Seconds()/gb, s.cpuA.Seconds()/gb, s.cpuSink.Seconds()/gb, s.otherLoad(),
		float64(s.readyRSS)/(1<<20), float64(s.sampledRSS)/(1<<20), float64(s.peakRSS)/(1<<20), float64(s.readyAnon)/(1<<20), float64(s.sampledAnon)/(1<<20), s.requests, s.rssTrace)
}

// largeSummary is a case's figures over its rounds: medians, and the
// maximum for memory.
type largeSummary struct {
	toSink, toSinkMin, toSinkMax, done time.Duration
	mbPerS, instPerS                   float64
	cpuClient, cpuA, cpuSink           float64
	readyRSS, sampledRSS, peakRSS      int64
	readyAnon, sampledAnon             int64
	otherLoad                          float64
}

func (l *large) summarize(c *largeCase) largeSummary {
	var s largeSummary
	pick := func(f func(largeSample) float64) float64 { return medianOf(c.samples, f) }
	gb := float64(l.totalBytes) / 1e9
	s.toSink = time.Duration(pick(func(x largeSample) float64 { return float64(x.toSink) }))
	s.done = time.Duration(pick(func(x largeSample) float64 { return float64(x.done) }))
	s.toSinkMin, s.toSinkMax = c.samples[0].toSink, c.samples[0].toSink
	for _, x := range c.samples {
		s.toSinkMin, s.toSinkMax = min(s.toSinkMin, x.toSink), max(s.toSinkMax, x.toSink)
		s.readyRSS = max(s.readyRSS, x.readyRSS)
		s.sampledRSS = max(s.sampledRSS, x.sampledRSS)
		s.peakRSS = max(s.peakRSS, x.peakRSS)
		s.readyAnon = max(s.readyAnon, x.readyAnon)
		s.sampledAnon = max(s.sampledAnon, x.sampledAnon)
	}
	s.mbPerS = float64(l.totalBytes) / 1e6 / s.toSink.Seconds()
	s.instPerS = float64(l.count) / s.toSink.Seconds()
	s.cpuClient = pick(func(x largeSample) float64 { return x.cpuClient.Seconds() }) / gb
	s.cpuA = pick(func(x largeSample) float64 { return x.cpuA.Seconds() }) / gb
	s.cpuSink = pick(func(x largeSample) float64 { return x.cpuSink.Seconds() }) / gb
	s.otherLoad = pick(largeSample.otherLoad)
	return s
}

func metOrMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// printTable prints the summary as a Markdown table; read is the fastest
// A-read reference (nil without one).
func (l *large) printTable(cases []*largeCase, read *largeSummary) {
	if l.set.shared.ProfileDir != "" {
		fmt.Printf("\nPROFILED BUILD (stowline-profiled): figures include profiling overhead; profiles in %s\n", l.set.shared.ProfileDir)
	}
	fmt.Printf("\n%d instances, %.1f MB (largest instance %.1f MB), into the discard sink; medians of %d rounds (min-max of the time in brackets), memory the maximum over the rounds; CPU in seconds per GB forwarded\n\n",
		l.count, float64(l.totalBytes)/1e6, float64(l.largestInstance)/1e6, l.set.Rounds)
	fmt.Println("| case | time to sink, s | instances/s | MB/s | × A-read | client CPU s/GB | A CPU s/GB | sink CPU s/GB | RSS ready MiB | RSS sampled max MiB | peak RSS (VmHWM) MiB | ≤ 64 MiB | anonymous ready / sampled max MiB | other load, cores |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range cases {
		s := l.summarize(c)
		xread, sink, ready, sampled, peak, target, anon := "", "-", "-", "-", "-", "-", "-"
		if read != nil {
			xread = fmt.Sprintf("%.2f", s.mbPerS/read.mbPerS)
		}
		if !c.read {
			sink = fmt.Sprintf("%.2f", s.cpuSink)
			ready, sampled = fmt.Sprintf("%.0f", float64(s.readyRSS)/(1<<20)), fmt.Sprintf("%.0f", float64(s.sampledRSS)/(1<<20))
			peak, target = fmt.Sprintf("%.1f", float64(s.peakRSS)/(1<<20)), metOrMissed(s.peakRSS <= largeRSSLimit)
			anon = fmt.Sprintf("%.0f / %.0f", float64(s.readyAnon)/(1<<20), float64(s.sampledAnon)/(1<<20))
		}
		fmt.Printf("| %s | %.2f (%.2f-%.2f) | %.1f | %.1f | %s | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %.2f |\n",
			c.name, s.toSink.Seconds(), s.toSinkMin.Seconds(), s.toSinkMax.Seconds(), s.instPerS, s.mbPerS, xread,
			s.cpuClient, s.cpuA, sink, ready, sampled, peak, target, anon, s.otherLoad)
	}
	again, total := 0, 0
	for _, c := range cases {
		for _, x := range c.samples {
			again += x.attempts - 1
			total++
		}
	}
	fmt.Printf("\nKept %d transfers; %d more were measured and dropped because other programs used more than %.2f cores meanwhile.\n\n",
		total, again, l.set.shared.MaxOtherLoad)
}

func (l *large) report(b *testing.B, c *largeCase, read *largeSummary) {
	s := l.summarize(c)
	b.ReportMetric(float64(s.toSink.Nanoseconds()), "ns/op")
	b.ReportMetric(s.mbPerS, "MB/s")
	b.ReportMetric(s.instPerS, "inst/s")
	b.ReportMetric(s.cpuClient, "client-cpu-s/GB")
	b.ReportMetric(s.cpuA, "A-cpu-s/GB")
	b.ReportMetric(s.otherLoad, "other-load-cores")
	if c.read {
		return
	}
	if read != nil {
		b.ReportMetric(s.mbPerS/read.mbPerS, "x-A-read")
	}
	b.ReportMetric(s.cpuSink, "sink-cpu-s/GB")
	b.ReportMetric(float64(s.peakRSS)/(1<<20), "peak-RSS-MiB")
	b.ReportMetric(float64(s.sampledRSS)/(1<<20), "sampled-RSS-MiB")
	b.ReportMetric(float64(s.sampledAnon)/(1<<20), "sampled-anon-MiB")
	met := 0.0
	if s.peakRSS <= largeRSSLimit {
		met = 1
	}
	b.ReportMetric(met, "rss-target-met")
}

func (l *large) printHeader() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var sys struct{ Version string }
	_ = l.a.Do(ctx, http.MethodGet, "/system", nil, &sys)
	var shape []string
	for _, g := range l.set.Shape {
		shape = append(shape, fmt.Sprintf("%d x %dx%d px (%.1f MB)", g.Count, g.Rows, g.Cols, float64(g.bytes())/1e6))
	}
	printMachine()
	fmt.Printf("# Orthanc %s; study %s\n# stowline built from %s\n# Orthanc storage under %s\n",
		sys.Version, strings.Join(shape, " + "), l.source, os.TempDir())
}
