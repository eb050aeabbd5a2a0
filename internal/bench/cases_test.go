package bench

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stowline/stowline/internal/dicomweb"
)

// sample is one measured transfer.
type sample struct {
	// toB is the time until B held every instance (polled every
	// pollInterval): the headline figure, measured the same way for every
	// case that writes to B.
	toB time.Duration
	// done is when the sender itself said it was done: the synchronous
	// POST returned (native), "study forwarded" was logged (stowline), the
	// last request was answered (references).
	done time.Duration
	// CPU time used during the transfer by Orthanc A, Orthanc B and the
	// client: the stowline process, or this benchmark process for the
	// references (none for native: its client runs inside A).
	cpuA, cpuB, cpuClient time.Duration
	// other is the CPU time the rest of the machine used meanwhile
	// (everything but A, B, the client and this benchmark): other
	// programs competing for the same cores.
	other time.Duration
	// cpuSink is the CPU time of the discard sink (this process) during a
	// transfer into it.
	cpuSink time.Duration
	// firstRequest is when the first STOW-RS request reached the sink
	// (after the event went through JetStream and the study's instances
	// were listed), stream the time from then until the sink held the
	// study: sink cases only.
	firstRequest, stream time.Duration
	// peakRSS is stowline's VmHWM after the transfer, readyRSS its VmRSS
	// when it was ready and idle.
	peakRSS, readyRSS int64
	// requests is the number of STOW-RS requests stowline logged.
	requests int
	// sinkRequests is the number of requests the (first) sink answered,
	// sinkPeak the most it served at once: sink cases only, native too.
	sinkRequests, sinkPeak int
	// verify is the time stowline logged for its QIDO-RS verification
	// (STOW_VERIFY=qido): part of done.
	verify time.Duration
	// attempts is how many times the transfer was measured (see
	// pipeline.measure).
	attempts int
}

// afterSenderGrace is how long B may take to show the last instance after
// the sender said it was done (it never should).
const afterSenderGrace = 5 * time.Second

type cpuSnap struct{ a, b, client, self, machine time.Duration }

// snapCPU reads the CPU time of A, B, the client (pid 0: none), this
// process and the whole machine.
func (p *pipeline) snapCPU(client int) (cpuSnap, error) {
	var s cpuSnap
	var err error
	if s.machine, err = machineBusy(); err != nil {
		return s, err
	}
	if s.self, err = cpuTime(os.Getpid()); err != nil {
		return s, err
	}
	if s.a, err = cpuTime(p.a.PID()); err != nil {
		return s, err
	}
	if s.b, err = cpuTime(p.b.PID()); err != nil {
		return s, err
	}
	if p.c != nil {
		// B's figure is that of both destinations.
		c, err := cpuTime(p.c.PID())
		if err != nil {
			return s, err
		}
		s.b += c
	}
	if client != 0 {
		s.client, err = cpuTime(client)
	}
	return s, err
}

func (s *sample) setCPU(before, after cpuSnap, clientIsSelf bool) {
	s.cpuA, s.cpuB, s.cpuClient = after.a-before.a, after.b-before.b, after.client-before.client
	ours := s.cpuA + s.cpuB + s.cpuClient
	if !clientIsSelf {
		ours += after.self - before.self
	}
	s.other = max(0, after.machine-before.machine-ours)
}

// waitB returns the watcher's figure once the sender is done, allowing
// afterSenderGrace for B to show the last instance.
func waitB(ctx context.Context, w <-chan timed) (time.Duration, error) {
	select {
	case t := <-w:
		return t.d, t.err
	case <-time.After(afterSenderGrace):
		return 0, fmt.Errorf("the sender was done but B did not hold the whole study %v later", afterSenderGrace)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// runNative has Orthanc A send the study with its own DICOMweb STOW-RS
// client, synchronously, to B.
func (p *pipeline) runNative(ctx context.Context, round int) (sample, error) {
	return p.runNativeTo(ctx, round, false)
}

// runNativeSink is runNative into the (gated) sink.
func (p *pipeline) runNativeSink(ctx context.Context, round int) (sample, error) {
	return p.runNativeTo(ctx, round, true)
}

func (p *pipeline) runNativeTo(ctx context.Context, round int, toSink bool) (sample, error) {
	var s sample
	before, err := p.snapCPU(0)
	if err != nil {
		return s, err
	}
	body := fmt.Sprintf(`{"Resources":[%q],"Synchronous":true}`, p.studyID)
	server, label := destName, "native"
	if toSink {
		server, label = sinkName, "native-sink"
		p.sink.Reset()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		p.a.URL+"/dicom-web/servers/"+server+"/stow", strings.NewReader(body))
	if err != nil {
		return s, err
	}
	req.Header.Set("Content-Type", "application/json")
	stopPerf, err := p.perf(fmt.Sprintf("%s-round%d", label, round), 0)
	if err != nil {
		return s, err
	}
	defer stopPerf()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	w := p.watchB(wctx, start)
	if toSink {
		w = p.watchSink(wctx, start, p.sink)
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return s, fmt.Errorf("native STOW-RS: %w", err)
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	s.done = time.Since(start)
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("native STOW-RS: HTTP %d: %s", resp.StatusCode, answer)
	}
	if s.toB, err = waitB(ctx, w); err != nil {
		return s, fmt.Errorf("native STOW-RS answered %s but: %w", strings.TrimSpace(string(answer)), err)
	}
	if err := stopPerf(); err != nil {
		return s, err
	}
	after, err := p.snapCPU(0)
	if err != nil {
		return s, err
	}
	s.setCPU(before, after, false)
	if toSink {
		// This process served the sink (and its gate) meanwhile.
		s.cpuSink = after.self - before.self
		st := p.sink.Stats()
		s.firstRequest, s.stream = st.First.Sub(start), st.Last.Sub(st.First)
		s.sinkRequests, s.sinkPeak = int(st.Requests), int(st.MostAtOnce)
		return s, p.checkAndResetSink(p.sink)
	}
	return s, p.checkAndEmptyB(ctx, round)
}

// target is where a stowline case sends the study.
type target int

const (
	toB target = iota
	// toSink is the discard STOW-RS sink.
	toSink
	// toBAndC is B and C as two destinations of one stowline.
	toBAndC
	// toTwoSinks is two sinks as two destinations of one stowline.
	toTwoSinks
	// toBVerified is B with STOW_VERIFY=qido.
	toBVerified
	// toBDeidentified and toSinkDeidentified are B and the sink with
	// STOW_DEIDENTIFY=basic.
	toBDeidentified
	toSinkDeidentified
)

// deidentified says whether the target receives de-identified copies.
func (t target) deidentified() bool { return t == toBDeidentified || t == toSinkDeidentified }

// runStowline starts the stowline binary, publishes the study's event to
// its webhook and measures until the target holds the study.
func (p *pipeline) runStowline(ctx context.Context, round int, fs fwdSetting, to target) (s sample, err error) {
	dir, err := os.MkdirTemp(p.tmp, "stowline-")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(dir)
	label := fileName(fs.String())
	var env map[string]string
	switch to {
	case toB:
		env = p.stowlineEnv(fs, p.gateB.URL+"/dicom-web", "")
	case toBVerified:
		env, label = p.stowlineEnv(fs, p.gateB.URL+"/dicom-web", ""), "verify-"+label
		env["STOW_VERIFY"] = "qido"
	case toBDeidentified:
		env, label = p.stowlineEnv(fs, p.gateB.URL+"/dicom-web", ""), "deid-"+label
	case toSinkDeidentified:
		env, label = p.stowlineEnv(fs, p.sinkURL, ""), "deid-sink-"+label
		p.sink.Reset()
	case toSink:
		env, label = p.stowlineEnv(fs, p.sinkURL, ""), "sink-"+label
		p.sink.Reset()
	case toBAndC:
		env, label = p.twoDestinationEnv(fs, p.gateB.URL+"/dicom-web", p.gateC.URL+"/dicom-web"), "two-"+label
	case toTwoSinks:
		env, label = p.twoDestinationEnv(fs, p.sinkURL, p.sink2URL), "two-sinks-"+label
		p.sink.Reset()
		p.sink2.Reset()
	}
	if to.deidentified() {
		env["STOW_DEIDENTIFY"] = "basic"
		env["DEIDENTIFY_KEY_FILE"] = p.keyFile
		env["STOW_DEIDENTIFY_PATIENT_PREFIX"] = deidentPatientPrefix
	}
	if p.set.ProfileDir != "" {
		base := filepath.Join(p.set.ProfileDir, fmt.Sprintf("%s-round%d", label, round))
		env["STOWLINE_PROFILE_CPU"] = base + ".cpu.pprof"
		env["STOWLINE_PROFILE_TRACE"] = base + ".trace"
		env["STOWLINE_PROFILE_HEAP"] = base + ".heap.pprof"
	}
	// The extra variables win, so that e.g. STOWLINE_PROFILE_TRACE= turns
	// the execution trace (and its overhead) off.
	maps.Copy(env, p.set.StowlineEnv)
	proc, err := startStowline(ctx, p.stowline, dir, env)
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
	s.readyRSS = ready.RSS
	before, err := p.snapCPU(pid)
	if err != nil {
		return s, err
	}
	stopPerf, err := p.perf(fmt.Sprintf("stowline-%s-round%d", label, round), pid)
	if err != nil {
		return s, err
	}
	defer stopPerf()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var w <-chan timed
	switch to {
	case toSink, toSinkDeidentified:
		w = p.watchSink(wctx, start, p.sink)
	case toTwoSinks:
		w = p.watchSink(wctx, start, p.sink, p.sink2)
	case toB, toBVerified, toBDeidentified:
		w = p.watchB(wctx, start)
	case toBAndC:
		w = p.watchHeld(wctx, start, p.b, p.c)
	}
	if err := proc.publish(ctx, p.studyID, p.studyUID, p.lastUpdate); err != nil {
		return s, err
	}
	select {
	case t := <-w:
		if s.toB, err = t.d, t.err; err != nil {
			return s, err
		}
	case l := <-proc.lines.failed:
		return s, fmt.Errorf("stowline logged %q: %s", l.Msg, l.Err)
	case <-proc.exited:
		return s, fmt.Errorf("stowline exited: %v", proc.waitErr)
	}
	// One "study forwarded" line per destination.
	destinations := 1
	if to == toBAndC || to == toTwoSinks {
		destinations = 2
	}
	for range destinations {
		line, err := proc.forwarded(ctx)
		if err != nil {
			return s, err
		}
		s.done, s.requests = line.at.Sub(start), s.requests+line.Requests
		s.verify += time.Duration(line.VerifyMS * float64(time.Millisecond))
		// A de-identified copy may be shorter than the original.
		if line.Instances != p.n() || (line.Bytes < p.totalBytes && !to.deidentified()) {
			return s, fmt.Errorf("stowline logged %d instances, %d bytes; the study has %d, %d", line.Instances, line.Bytes, p.n(), p.totalBytes)
		}
	}
	if err := stopPerf(); err != nil {
		return s, err
	}
	after, err := p.snapCPU(pid)
	if err != nil {
		return s, err
	}
	s.setCPU(before, after, false)
	if to == toSink || to == toTwoSinks || to == toSinkDeidentified {
		// This process did nothing but serve the sinks meanwhile (and read
		// stowline's log): its CPU is the sinks'.
		s.cpuSink = after.self - before.self
		st := p.sink.Stats()
		s.firstRequest, s.stream = st.First.Sub(start), st.Last.Sub(st.First)
		if to == toSink {
			s.sinkRequests, s.sinkPeak = int(st.Requests), int(st.MostAtOnce)
		}
	}
	mem, err := readMem(pid)
	if err != nil {
		return s, err
	}
	s.peakRSS = mem.HWM
	stopped = true
	if err := proc.stop(); err != nil {
		return s, err
	}
	switch to {
	case toSink:
		return s, p.checkAndResetSink(p.sink)
	case toTwoSinks:
		return s, p.checkAndResetSink(p.sink, p.sink2)
	case toBAndC:
		return s, p.checkAndEmpty(ctx, round, p.b, p.c)
	case toSinkDeidentified:
		return s, p.checkAndResetDeidentifiedSink()
	case toBDeidentified:
		return s, p.checkAndEmptyDeidentifiedB(ctx, round)
	}
	return s, p.checkAndEmptyB(ctx, round)
}

// fileName turns a setting such as "conc=4,max=100" into "conc4-max100".
func fileName(s string) string { return strings.NewReplacer("=", "", ",", "-").Replace(s) }

// perf starts a perf recording of A, B and the client when
// STOWLINE_BENCH_PERF_DIR is set. The returned stop function may be called
// more than once.
func (p *pipeline) perf(name string, client int) (stop func() error, err error) {
	if p.set.PerfDir == "" {
		return func() error { return nil }, nil
	}
	stopOnce, err := startPerf(p.set.PerfDir, name, p.a.PID(), p.b.PID(), client)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	var stopErr error
	return func() error {
		once.Do(func() { stopErr = stopOnce() })
		return stopErr
	}, nil
}

// copyBufs are the read buffers of the references, as large as stowline's
// STOW-RS copy buffer (dicomweb.DefaultBufferSize).
var copyBufs = sync.Pool{New: func() any { b := make([]byte, dicomweb.DefaultBufferSize); return &b }}

// writerOnly hides io.Discard's ReadFrom, so copies use copyBufs.
type writerOnly struct{ io.Writer }

// runRead reads every instance file from A with parallel GETs and
// discards it: the rate A can serve, a ceiling for any forwarder that
// reads through A's REST API.
func (p *pipeline) runRead(ctx context.Context, workers int) (sample, error) {
	var s sample
	self := os.Getpid()
	before, err := p.snapCPU(self)
	if err != nil {
		return s, err
	}
	var total atomic.Int64
	start := time.Now()
	err = parallel(ctx, p.n(), workers, func(ctx context.Context, i int) error {
		in := p.instances[i]
		n, err := p.getFile(ctx, p.a, in.ID, writerOnly{io.Discard})
		if err == nil && n != in.Size {
			err = fmt.Errorf("A served %d bytes of instance %s, want %d", n, in.ID, in.Size)
		}
		total.Add(n)
		return err
	})
	s.done = time.Since(start)
	s.toB = s.done
	if err != nil {
		return s, err
	}
	after, err := p.snapCPU(self)
	if err != nil {
		return s, err
	}
	s.setCPU(before, after, true)
	return s, nil
}

// runBStow sends the generated files from local disk (page cache) straight
// to B with internal/dicomweb's client, requests of MaxInstances, Parallel at once:
// the rate B ingests STOW-RS, a ceiling for any forwarder.
func (p *pipeline) runBStow(ctx context.Context, round int, bs bstowSetting) (sample, error) {
	var s sample
	client, err := dicomweb.New(p.b.URL+"/dicom-web", &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: bs.Parallel}})
	if err != nil {
		return s, err
	}
	parts := make([]dicomweb.Part, p.n())
	for i, in := range p.instances {
		parts[i] = dicomweb.Part{SOPInstanceUID: in.SOPInstanceUID, Size: in.Size,
			Open: func(context.Context) (io.ReadCloser, error) { return os.Open(in.Path) }}
	}
	batches := dicomweb.Batches(parts, bs.MaxInstances, 0)
	self := os.Getpid()
	before, err := p.snapCPU(self)
	if err != nil {
		return s, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	w := p.watchB(wctx, start)
	err = parallel(ctx, len(batches), bs.Parallel, func(ctx context.Context, i int) error {
		res, err := client.Store(ctx, batches[i])
		if err != nil {
			return err
		}
		uids := make([]string, len(batches[i]))
		for j, part := range batches[i] {
			uids[j] = part.SOPInstanceUID
		}
		if missing := res.Missing(uids); len(missing) > 0 {
			return fmt.Errorf("B did not confirm %d of %d instances", len(missing), len(uids))
		}
		return nil
	})
	s.done = time.Since(start)
	if err != nil {
		return s, err
	}
	if s.toB, err = waitB(ctx, w); err != nil {
		return s, err
	}
	after, err := p.snapCPU(self)
	if err != nil {
		return s, err
	}
	s.setCPU(before, after, true)
	return s, p.checkAndEmptyB(ctx, round)
}
