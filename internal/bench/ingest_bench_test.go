package bench

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/web"
)

// BenchmarkIngest measures, in one run against one nats-server (embedded
// in this process, listening on TCP, file storage, the real event stream):
//
//   - raw JetStream publishing: Publishers goroutines each doing a
//     synchronous publish (wait for the ack) of an event with a unique
//     Nats-Msg-Id, over one shared NATS connection, which is what the
//     ingest does (and, for reference, over one connection each);
//   - the real ingest program (built from ./cmd/ingest, run as a separate
//     process) under Publishers concurrent keep-alive HTTP clients posting
//     valid unique events with the bearer token; with several ingest
//     processes, the clients spread their requests round-robin, as a load
//     balancer would.
//
// Every run sends the same number of events to an emptied stream and then
// checks that the stream holds exactly that many. The rounds run here, each
// case once per round in alternating order; the sub-benchmarks report the
// medians. Run it with -benchtime 1x:
//
//	go test -run '^$' -bench Ingest -benchtime 1x -timeout 30m ./internal/bench/
func BenchmarkIngest(b *testing.B) {
	r := setupIngest(b)
	r.printHeader()
	cases := r.cases()

	// One unmeasured run per case warms the connections, both heaps and
	// the store directory.
	warm := max(r.set.Messages/10, 1000)
	for _, c := range cases {
		s := r.measureOnce(b, c, warm)
		fmt.Printf("# warm-up  %-34s %s\n", c.name, r.line(s))
	}
	for round := range r.set.Rounds {
		for _, c := range roundOrder(cases, round) {
			s := r.measure(b, c)
			c.samples = append(c.samples, s)
			fmt.Printf("# round %d/%d %-34s %s\n", round+1, r.set.Rounds, c.name, r.line(s))
		}
	}
	var raw *ingSummary
	for _, c := range cases {
		c.sum = summarizeIngest(c.samples)
		if c.kind == ingRaw {
			raw = &c.sum
		}
	}
	r.printTable(cases, raw)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) { reportIngest(b, c, raw) })
	}
}

// benchSource is the events' source name, as an Orthanc's Lua script
// would send it.
const benchSource = "bench-ingest"

// ingestRig is the shared setup of one BenchmarkIngest run.
type ingestRig struct {
	set ingestSettings
	tmp string

	srv    *natsjs.EmbeddedServer
	js     jetstream.JetStream
	stream jetstream.Stream
	// perConn are the raw reference's own connections, one per publisher.
	perConn []jetstream.JetStream

	ingests []*ingestProc
	source  string
	http    *http.Client

	// seq numbers the events: every event of the run is a different study,
	// so no publish is ever a duplicate.
	seq atomic.Uint64
	// peakReset says whether VmHWM can be reset between runs.
	peakReset bool
}

func setupIngest(b *testing.B) *ingestRig {
	b.Helper()
	set, err := loadIngestSettings(os.Getenv)
	if err != nil {
		b.Fatal(err)
	}
	checkBenchRun(b, "Ingest", ingestPrefix+"ROUNDS")
	r := &ingestRig{set: set, tmp: b.TempDir()}

	// Port -1: a free TCP port, so the ingest processes can connect.
	r.srv, err = natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{
		StoreDir: filepath.Join(r.tmp, "nats"), ServerName: "bench-ingest", Port: -1,
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.srv.Shutdown)
	connect := func() (jetstream.JetStream, error) {
		nc, err := nats.Connect(r.srv.ClientURL(), nats.Name("bench-ingest"))
		if err != nil {
			return nil, fmt.Errorf("connect to NATS: %w", err)
		}
		b.Cleanup(nc.Close)
		return jetstream.New(nc)
	}
	if r.js, err = connect(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if r.stream, err = natsjs.DefaultTopology().EnsureEvents(ctx, r.js); err != nil {
		b.Fatal(err)
	}
	if set.RawPerConn {
		for range set.Publishers {
			js, err := connect()
			if err != nil {
				b.Fatal(err)
			}
			r.perConn = append(r.perConn, js)
		}
	}

	bin := r.buildIngest(b)
	// A fresh bound for the start-up: the build may have taken a while.
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	replicas := 0
	for _, n := range set.Replicas {
		replicas = max(replicas, n)
	}
	for i := range replicas {
		env := maps.Clone(set.Env)
		if env == nil {
			env = map[string]string{}
		}
		if set.ProfileDir != "" {
			env["STOWLINE_PROFILE_CPU"] = filepath.Join(set.ProfileDir, fmt.Sprintf("ingest-%d.cpu.pprof", i+1))
			env["STOWLINE_PROFILE_HEAP"] = filepath.Join(set.ProfileDir, fmt.Sprintf("ingest-%d.allocs.pprof", i+1))
		}
		p, err := startIngest(ctx, bin, filepath.Join(r.tmp, fmt.Sprintf("ingest-%d", i+1)), r.srv.ClientURL(), env)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if err := p.stop(); err != nil {
				b.Error(err)
			}
		})
		r.ingests = append(r.ingests, p)
	}
	if len(r.ingests) > 0 {
		r.peakReset = resetPeakRSS(r.ingests[0].pid())
	}
	// Keep-alive: every sender reuses its connection(s), so a run
	// measures requests, not TCP handshakes.
	r.http = &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: set.Publishers,
		DisableCompression:  true,
	}}
	b.Cleanup(r.http.CloseIdleConnections)
	return r
}

// buildIngest compiles the ingest the ingest cases run: the real
// ./cmd/ingest, or the profiling variant when a profile directory is set.
func (r *ingestRig) buildIngest(b *testing.B) string {
	b.Helper()
	root, err := moduleRoot(r.set.Source)
	if err != nil {
		b.Fatalf("ingest source: %v (set %sSOURCE to a module root)", err, ingestPrefix)
	}
	var flags []string
	pkg, out := "./cmd/ingest", filepath.Join(r.tmp, "ingest")
	if r.set.ProfileDir != "" {
		pkg, out = "./internal/bench/cmd/ingest-profiled", filepath.Join(r.tmp, "ingest-profiled")
		if err := os.MkdirAll(r.set.ProfileDir, 0o755); err != nil {
			b.Fatal(err)
		}
		flags = profiledOverlay(b, root, r.tmp, "ingest-profiled")
	}
	goBuild(b, root, "the ingest", pkg, out, flags...)
	r.source = describeSource(root)
	return out
}

type ingKind int

const (
	// ingRaw is the reference the ingest is compared with.
	ingRaw ingKind = iota
	ingRawPerConn
	ingIngest
)

type ingCase struct {
	name     string
	kind     ingKind
	replicas int
	samples  []ingSample
	sum      ingSummary
}

func (r *ingestRig) cases() []*ingCase {
	cs := []*ingCase{{name: "raw-jetstream/shared-conn", kind: ingRaw}}
	if r.set.RawPerConn {
		cs = append(cs, &ingCase{name: "raw-jetstream/conn-per-publisher", kind: ingRawPerConn})
	}
	for _, n := range r.set.Replicas {
		cs = append(cs, &ingCase{name: fmt.Sprintf("ingest/replicas=%d", n), kind: ingIngest, replicas: n})
	}
	return cs
}

// ingSample is one measured run of n events.
type ingSample struct {
	n       int
	elapsed time.Duration
	// Latency of one publish (until the ack) or one webhook request
	// (until the answer's body is read), as the sender sees it.
	p50, p99, max time.Duration
	// cpuIngest is the CPU time of the ingest processes the case uses;
	// cpuIdle that of the others (they should be idle); cpuSelf this
	// process's (the nats-server and the senders); other the rest of the
	// machine's.
	cpuIngest, cpuIdle, cpuSelf, other time.Duration
	// busy is the CPU time the whole machine used: near elapsed times the
	// number of cores, the run was bound by the CPU.
	busy time.Duration
	// peakRSS is the largest VmHWM of the ingest processes used.
	peakRSS  int64
	attempts int
}

func (s ingSample) rate() float64 { return float64(s.n) / s.elapsed.Seconds() }

func (s ingSample) otherLoad() float64 { return s.other.Seconds() / s.elapsed.Seconds() }

func (s ingSample) busyCores() float64 { return s.busy.Seconds() / s.elapsed.Seconds() }

// measure runs c once with the configured number of events; if other
// programs used more than MaxOtherLoad cores meanwhile it measures again
// (up to maxAttempts) and keeps the least disturbed attempt.
func (r *ingestRig) measure(b *testing.B, c *ingCase) ingSample {
	b.Helper()
	var best ingSample
	for attempt := 1; ; attempt++ {
		s := r.measureOnce(b, c, r.set.Messages)
		if attempt == 1 || s.otherLoad() < best.otherLoad() {
			best = s
		}
		if r.set.MaxOtherLoad <= 0 || best.otherLoad() <= r.set.MaxOtherLoad || attempt == maxAttempts {
			best.attempts = attempt
			return best
		}
		fmt.Printf("# again    %-34s other programs used %.2f cores (limit %.2f)\n", c.name, s.otherLoad(), r.set.MaxOtherLoad)
	}
}

func (r *ingestRig) measureOnce(b *testing.B, c *ingCase, n int) ingSample {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), r.set.Timeout)
	defer cancel()
	s, err := r.run(ctx, c, n)
	if err != nil {
		b.Fatalf("%s: %v", c.name, err)
	}
	return s
}

// run empties the stream, sends n events the case's way and checks that
// the stream then holds exactly n.
func (r *ingestRig) run(ctx context.Context, c *ingCase, n int) (ingSample, error) {
	s := ingSample{n: n}
	if err := r.stream.Purge(ctx); err != nil {
		return s, fmt.Errorf("purge the stream: %w", err)
	}
	// Write back what the previous run left dirty (its messages, the
	// purge), so that no run pays for its predecessor's writeback.
	syscall.Sync()

	var procs []*ingestProc
	var send func(ctx context.Context, w, i int) error
	switch c.kind {
	case ingRaw, ingRawPerConn:
		msgs := r.rawMessages(n)
		send = func(ctx context.Context, w, i int) error {
			js := r.js
			if c.kind == ingRawPerConn {
				js = r.perConn[w]
			}
			return rawPublish(ctx, js, msgs[i])
		}
	case ingIngest:
		procs = r.ingests[:c.replicas]
		bodies := r.webhookBodies(n)
		send = func(ctx context.Context, _, i int) error {
			// Round-robin over the replicas, request by request.
			return r.post(ctx, procs[i%len(procs)].url, bodies[i])
		}
	}
	for _, p := range procs {
		resetPeakRSS(p.pid())
	}

	before, err := r.snapCPU(procs)
	if err != nil {
		return s, err
	}
	elapsed, lat, err := drive(ctx, n, r.set.Publishers, send)
	if err != nil {
		return s, err
	}
	after, err := r.snapCPU(procs)
	if err != nil {
		return s, err
	}
	s.elapsed = elapsed
	s.cpuIngest, s.cpuSelf = after.ingest-before.ingest, after.self-before.self
	// The ingest processes the case does not use are this benchmark's too.
	s.cpuIdle = after.all - before.all - s.cpuIngest
	s.busy = after.machine - before.machine
	s.other = max(0, s.busy-s.cpuSelf-(after.all-before.all))
	slices.Sort(lat)
	s.p50, s.p99, s.max = percentile(lat, 50), percentile(lat, 99), lat[len(lat)-1]
	for _, p := range procs {
		m, err := readMem(p.pid())
		if err != nil {
			return s, err
		}
		s.peakRSS = max(s.peakRSS, m.HWM)
	}

	info, err := r.stream.Info(ctx)
	if err != nil {
		return s, fmt.Errorf("stream info: %w", err)
	}
	if info.State.Msgs != uint64(n) {
		return s, fmt.Errorf("the stream holds %d events after %d were acknowledged", info.State.Msgs, n)
	}
	return s, nil
}

// drive sends events 0..n-1 from workers goroutines, each taking the next
// event when its previous one is done, and returns the time until the last
// was done and every event's latency. It stops at the first error.
func drive(ctx context.Context, n, workers int, send func(ctx context.Context, w, i int) error) (time.Duration, []time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	lats := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			lat := make([]time.Duration, 0, n/workers+1)
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					break
				}
				t0 := time.Now()
				if err := send(ctx, w, i); err != nil {
					cancel(fmt.Errorf("event %d: %w", i, err))
					break
				}
				lat = append(lat, time.Since(t0))
			}
			lats[w] = lat
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		return 0, nil, err
	}
	return elapsed, slices.Concat(lats...), nil
}

// percentile is the nearest-rank percentile of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(0, min(len(sorted)-1, i-1))]
}

// benchEvent is a realistic event for study seq: an Orthanc ID (SHA-1 in
// five groups, as Orthanc makes them) and a UID of typical length.
func benchEvent(seq uint64) events.StudyStable {
	sum := sha1.Sum(binary.BigEndian.AppendUint64(nil, seq))
	h := hex.EncodeToString(sum[:])
	return events.StudyStable{
		Type:             events.TypeStudyStable,
		Version:          events.Version,
		Source:           benchSource,
		OrthancStudyID:   h[0:8] + "-" + h[8:16] + "-" + h[16:24] + "-" + h[24:32] + "-" + h[32:40],
		StudyInstanceUID: fmt.Sprintf("1.2.826.0.1.3680043.8.498.1%019d", seq),
		LastUpdate:       "20260518T223000",
	}
}

// rawMessages builds n messages the way natsjs.Publisher does (the stored
// event carries receivedAt, as the ingest's do), before the clock starts.
func (r *ingestRig) rawMessages(n int) []*nats.Msg {
	first := r.seq.Add(uint64(n)) - uint64(n)
	now := time.Now().UTC()
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		ev := benchEvent(first + uint64(i))
		ev.ReceivedAt = now
		data, err := json.Marshal(&ev)
		if err != nil {
			panic(err) // a fixed struct of strings always encodes
		}
		m := &nats.Msg{Subject: natsjs.EventSubject(ev.Source), Data: data, Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, ev.MsgID())
		msgs[i] = m
	}
	return msgs
}

// rawPublish is what natsjs.PublishAs does after encoding: a synchronous
// publish that waits for the stream's ack.
func rawPublish(ctx context.Context, js jetstream.JetStream, m *nats.Msg) error {
	ack, err := js.PublishMsg(ctx, m, jetstream.WithExpectStream(natsjs.EventStream))
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if ack.Duplicate {
		return errors.New("publish: JetStream reports a duplicate of a new event")
	}
	return nil
}

// webhookBodies builds n request bodies as Orthanc's Lua script sends them.
func (r *ingestRig) webhookBodies(n int) [][]byte {
	first := r.seq.Add(uint64(n)) - uint64(n)
	bodies := make([][]byte, n)
	for i := range bodies {
		ev := benchEvent(first + uint64(i))
		data, err := json.Marshal(&ev)
		if err != nil {
			panic(err)
		}
		bodies[i] = data
	}
	return bodies
}

// accepted202 is what every answer must hold: a new event was stored.
var accepted202 = []byte(`"duplicate":false`)

// post sends one event to an ingest and checks that it was stored.
func (r *ingestRig) post(ctx context.Context, base string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+web.WebhookPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+ingestToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	// Read to the end so the connection is reused.
	ans, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("webhook answer: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("webhook answered %d, want 202: %s", resp.StatusCode, ans)
	}
	if !bytes.Contains(ans, accepted202) {
		return fmt.Errorf("webhook answer is not a new stored event: %s", ans)
	}
	return nil
}

// ingCPU is a snapshot of CPU times: the ingest processes a case uses,
// all ingest processes, this process and the whole machine.
type ingCPU struct{ ingest, all, self, machine time.Duration }

func (r *ingestRig) snapCPU(procs []*ingestProc) (ingCPU, error) {
	var s ingCPU
	var err error
	if s.machine, err = machineBusy(); err != nil {
		return s, err
	}
	if s.self, err = cpuTime(os.Getpid()); err != nil {
		return s, err
	}
	for _, p := range r.ingests {
		t, err := cpuTime(p.pid())
		if err != nil {
			return s, err
		}
		s.all += t
		if slices.Contains(procs, p) {
			s.ingest += t
		}
	}
	return s, nil
}

// ingSummary is a case's figures over its rounds: medians, the largest
// maximum latency and the peak memory.
type ingSummary struct {
	rate, rateMin, rateMax float64
	p50, p99, max          time.Duration
	// CPU seconds per run and microseconds per event.
	cpuIngest, usIngest, usSelf float64
	peakRSS                     int64
	busy, otherLoad             float64
	attempts                    int
}

func summarizeIngest(samples []ingSample) ingSummary {
	var s ingSummary
	pick := func(f func(ingSample) float64) float64 { return medianOf(samples, f) }
	s.rate = pick(ingSample.rate)
	s.rateMin, s.rateMax = samples[0].rate(), samples[0].rate()
	for _, x := range samples {
		s.rateMin, s.rateMax = min(s.rateMin, x.rate()), max(s.rateMax, x.rate())
		s.max = max(s.max, x.max)
		s.peakRSS = max(s.peakRSS, x.peakRSS)
		s.attempts += x.attempts
	}
	s.p50 = time.Duration(pick(func(x ingSample) float64 { return float64(x.p50) }))
	s.p99 = time.Duration(pick(func(x ingSample) float64 { return float64(x.p99) }))
	s.cpuIngest = pick(func(x ingSample) float64 { return x.cpuIngest.Seconds() })
	s.usIngest = pick(func(x ingSample) float64 { return float64(x.cpuIngest.Microseconds()) / float64(x.n) })
	s.usSelf = pick(func(x ingSample) float64 { return float64(x.cpuSelf.Microseconds()) / float64(x.n) })
	s.busy = pick(ingSample.busyCores)
	s.otherLoad = pick(ingSample.otherLoad)
	return s
}

// ingestTarget is the target (BENCHMARKS.md): the ingest reaches at
// least this fraction of the raw JetStream publish rate.
const ingestTarget = 0.5

func reportIngest(b *testing.B, c *ingCase, raw *ingSummary) {
	s := c.sum
	// ns/op is the time per event (the inverse of the rate), so benchstat
	// compares runs sensibly.
	b.ReportMetric(1e9/s.rate, "ns/op")
	b.ReportMetric(s.rate, "msgs/s")
	b.ReportMetric(float64(s.p50.Microseconds())/1e3, "p50-ms")
	b.ReportMetric(float64(s.p99.Microseconds())/1e3, "p99-ms")
	b.ReportMetric(float64(s.max.Microseconds())/1e3, "max-ms")
	b.ReportMetric(s.usSelf, "bench-proc-cpu-us/msg")
	if c.kind == ingIngest {
		b.ReportMetric(s.cpuIngest, "ingest-cpu-s")
		b.ReportMetric(s.usIngest, "ingest-cpu-us/msg")
		b.ReportMetric(float64(s.peakRSS)/(1<<20), "peak-RSS-MiB")
	}
	if raw != nil && c.kind != ingRaw {
		b.ReportMetric(s.rate/raw.rate, "x-raw")
	}
	b.ReportMetric(s.busy, "machine-busy-cores")
	b.ReportMetric(s.otherLoad, "other-load-cores")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1e3) }

func (r *ingestRig) line(s ingSample) string {
	out := fmt.Sprintf("%6d events %6.2fs %8.0f msgs/s  latency ms p50 %s p99 %s max %s  CPU s: bench process %.2f",
		s.n, s.elapsed.Seconds(), s.rate(), ms(s.p50), ms(s.p99), ms(s.max), s.cpuSelf.Seconds())
	if s.peakRSS > 0 {
		out += fmt.Sprintf(" ingest %.2f (%.0f µs/event) peak RSS %.0f MiB",
			s.cpuIngest.Seconds(), float64(s.cpuIngest.Microseconds())/float64(s.n), float64(s.peakRSS)/(1<<20))
	}
	if s.cpuIdle >= 20*time.Millisecond {
		out += fmt.Sprintf(" unused ingests %.2f", s.cpuIdle.Seconds())
	}
	return out + fmt.Sprintf("  machine busy %.2f cores, other load %.2f cores", s.busyCores(), s.otherLoad())
}

// printTable prints the summary as a Markdown table for BENCHMARKS.md, and
// the verdict on the target.
func (r *ingestRig) printTable(cases []*ingCase, raw *ingSummary) {
	if r.set.ProfileDir != "" {
		fmt.Printf("\nPROFILED BUILD (ingest-profiled): ingest figures include profiling overhead; profiles in %s\n", r.set.ProfileDir)
	}
	peak := "peak RSS of the run (VmHWM reset before each run)"
	if !r.peakReset {
		peak = "peak RSS since the process started (VmHWM could not be reset)"
	}
	fmt.Printf("\n%d events a run, %d senders, medians of %d rounds (min-max of the rate in brackets); "+
		"latency as the sender sees it (p99: median of the rounds' p99, max: over all rounds); "+
		"bench process = nats-server + senders; RSS: %s\n\n",
		r.set.Messages, r.set.Publishers, r.set.Rounds, peak)
	fmt.Println("| case | events/s | × raw | p50 ms | p99 ms | max ms | ingest CPU s | ingest CPU µs/event | bench process CPU µs/event | ingest peak RSS MiB | machine busy, cores | other load, cores |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range cases {
		s := c.sum
		ratio, cpu, us, rss := "", "-", "-", "-"
		if raw != nil && c.kind != ingRaw {
			ratio = fmt.Sprintf("%.2f", s.rate/raw.rate)
		}
		if c.kind == ingIngest {
			cpu, us, rss = fmt.Sprintf("%.2f", s.cpuIngest), fmt.Sprintf("%.0f", s.usIngest), fmt.Sprintf("%.0f", float64(s.peakRSS)/(1<<20))
		}
		fmt.Printf("| %s | %.0f (%.0f-%.0f) | %s | %s | %s | %s | %s | %s | %.0f | %s | %.2f of %d | %.2f |\n",
			c.name, s.rate, s.rateMin, s.rateMax, ratio, ms(s.p50), ms(s.p99), ms(s.max), cpu, us, s.usSelf, rss, s.busy, runtime.NumCPU(), s.otherLoad)
	}
	again, total := 0, 0
	for _, c := range cases {
		total += len(c.samples)
		again += c.sum.attempts - len(c.samples)
	}
	fmt.Printf("\nKept %d runs; %d more were measured and dropped because other programs used more than %.2f cores meanwhile.\n",
		total, again, r.set.MaxOtherLoad)
	if raw != nil {
		for _, c := range cases {
			if c.kind != ingIngest {
				continue
			}
			verdict := "missed"
			if c.sum.rate >= ingestTarget*raw.rate {
				verdict = "met"
			}
			fmt.Printf("%s: %.0f events/s = %.2f × raw (target ≥ %.2f: %s), p99 %s ms\n",
				c.name, c.sum.rate, c.sum.rate/raw.rate, ingestTarget, verdict, ms(c.sum.p99))
		}
	}
	fmt.Println()
}

// printHeader prints the machine and versions the figures belong to.
func (r *ingestRig) printHeader() {
	body, _ := json.Marshal(benchEvent(0))
	printMachine()
	fmt.Printf("# nats-server %s (embedded in the benchmark process, TCP %s, file storage under %s), nats.go %s\n",
		server.VERSION, r.srv.ClientURL(), os.TempDir(), nats.Version)
	env := ingestSettingsEnv()
	maps.Copy(env, r.set.Env)
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(env)) {
		kv = append(kv, k+"="+env[k])
	}
	fmt.Printf("# ingest built from %s; %d ingest process(es) with %s\n", r.source, len(r.ingests), strings.Join(kv, " "))
	fmt.Printf("# %d senders, %d events a run, %d rounds; webhook body %d bytes\n",
		r.set.Publishers, r.set.Messages, r.set.Rounds, len(body))
}
