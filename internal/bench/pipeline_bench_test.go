package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkPipeline forwards one generated CT study from Orthanc A to
// Orthanc B with Orthanc's own STOW-RS client, with the stowline binary
// under several settings, to B and a third Orthanc C at once (stowline
// with two destinations), and with two kinds of reference transfers, all
// in the same run against the same servers. B and C sit behind
// token-checking proxies of a real OAuth2 server, as a cloud archive
// does: stowline fetches its tokens (client credentials), Orthanc's own
// client sends one fixed token. The Orthanc release is the first of
// STOWLINE_ORTHANC_RELEASES (testharness), so that
// STOWLINE_ORTHANC_RELEASES=1.12 compares with DICOMweb plugin 1.20.
//
// The rounds run here, each case once per round, in alternating order (so
// drift, such as B's index growing or caches warming, does not favour one
// side); the sub-benchmarks then report each case's medians. Run it with
// -benchtime 1x (see BENCHMARKS.md):
//
//	go test -run '^$' -bench Pipeline -benchtime 1x -timeout 30m ./internal/bench/
func BenchmarkPipeline(b *testing.B) {
	p := setupPipeline(b)
	p.printHeader()
	cases := p.cases()
	if len(cases) == 0 {
		b.Fatal("nothing to measure: every case is switched off")
	}

	// One unmeasured transfer per kind of sender (native, stowline to B,
	// stowline to the sink) warms B's index and storage, the sink and the
	// page cache of the binaries.
	warm := map[caseKind]bool{kindRead: true, kindBStow: true}
	for _, c := range cases {
		if !warm[c.kind] {
			warm[c.kind] = true
			s := p.measure(b, c, 0)
			fmt.Printf("# warm-up  %-30s %s\n", c.name, p.line(s))
		}
	}
	for round := range p.set.Rounds {
		for _, c := range roundOrder(cases, round) {
			s := p.measure(b, c, round)
			c.samples = append(c.samples, s)
			fmt.Printf("# round %d/%d %-30s %s\n", round+1, p.set.Rounds, c.name, p.line(s))
		}
	}

	var read *summary
	native := natives{}
	for _, c := range cases {
		c.sum = p.summarize(c)
		if c.kind == kindNative || c.kind == kindNativeSink {
			native[c.kind.toSink()] = &c.sum
		}
		if c.kind == kindRead && (read == nil || c.sum.instPerS > read.instPerS) {
			read = &c.sum
		}
	}
	p.printTable(cases, native, read)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) { p.report(b, c, native, read, oneDestination(cases, c)) })
	}
}

// oneDestination is, for a two-destination case, the one-destination case
// of the same setting (nil if it was not measured, or c is another kind).
func oneDestination(cases []*benchCase, c *benchCase) *summary {
	one, ok := map[caseKind]caseKind{kindTwo: kindStowline, kindTwoSinks: kindSink, kindVerify: kindStowline,
		kindDeidentify: kindStowline, kindDeidentifySink: kindSink}[c.kind]
	if !ok {
		return nil
	}
	for _, o := range cases {
		if o.kind == one && o.setting == c.setting {
			return &o.sum
		}
	}
	return nil
}

// twoVsOne is the throughput of two destinations at once (instances
// stored per second, over both) against one: 2 when sending to a second
// destination costs no time at all, 1 when it takes as long as the first.
func twoVsOne(two, one summary) float64 { return 2 * one.toB.Seconds() / two.toB.Seconds() }

type caseKind int

const (
	kindNative caseKind = iota
	kindStowline
	kindRead
	kindBStow
	// kindSink is stowline forwarding into the discard STOW-RS sink.
	kindSink
	// kindTwo is stowline forwarding to B and C, two destinations at once.
	kindTwo
	// kindTwoSinks is stowline forwarding to two sinks at once.
	kindTwoSinks
	// kindVerify is stowline forwarding to B with STOW_VERIFY=qido.
	kindVerify
	// kindDeidentify and kindDeidentifySink are stowline forwarding to B
	// and into the sink with STOW_DEIDENTIFY=basic.
	kindDeidentify
	kindDeidentifySink
	// kindNativeSink is Orthanc's own client sending into the sink.
	kindNativeSink
)

// toSink says whether the case sends into sinks rather than Orthanc.
func (k caseKind) toSink() bool {
	return k == kindSink || k == kindTwoSinks || k == kindDeidentifySink || k == kindNativeSink
}

// natives are Orthanc's own client's figures, into the sink (true) and
// into B (false).
type natives map[bool]*summary

// ratioTo is the native case c compares with: nil if none.
func (n natives) ratioTo(k caseKind) *summary {
	switch k {
	case kindStowline, kindVerify, kindDeidentify, kindRead, kindBStow:
		return n[false]
	case kindSink, kindDeidentifySink:
		return n[true]
	}
	return nil
}

// stowline says whether the case runs the stowline binary.
func (k caseKind) stowline() bool {
	return k == kindStowline || k == kindSink || k == kindTwo || k == kindTwoSinks || k == kindVerify ||
		k == kindDeidentify || k == kindDeidentifySink
}

// deidentify says whether the case sends de-identified copies.
func (k caseKind) deidentify() bool { return k == kindDeidentify || k == kindDeidentifySink }

type benchCase struct {
	name string
	kind caseKind
	// setting is stowline's, for the stowline kinds.
	setting fwdSetting
	run     func(ctx context.Context, round int) (sample, error)
	samples []sample
	sum     summary
}

func (p *pipeline) cases() []*benchCase {
	var cs []*benchCase
	if p.set.Native {
		cs = append(cs, &benchCase{name: "native-orthanc-stow", kind: kindNative, run: p.runNative})
		if len(p.set.Sink) > 0 {
			cs = append(cs, &benchCase{name: "native-orthanc-stow-to-sink", kind: kindNativeSink, run: p.runNativeSink})
		}
	}
	for _, fs := range p.set.Stowline {
		cs = append(cs, &benchCase{name: "stowline/" + fs.String(), kind: kindStowline, setting: fs,
			run: func(ctx context.Context, round int) (sample, error) { return p.runStowline(ctx, round, fs, toB) }})
	}
	for _, fs := range p.set.Verify {
		cs = append(cs, &benchCase{name: "stowline-verify/" + fs.String(), kind: kindVerify, setting: fs,
			run: func(ctx context.Context, round int) (sample, error) {
				return p.runStowline(ctx, round, fs, toBVerified)
			}})
	}
	for _, fs := range p.set.Deidentify {
		cs = append(cs, &benchCase{name: "stowline-deidentify/" + fs.String(), kind: kindDeidentify, setting: fs,
			run: func(ctx context.Context, round int) (sample, error) {
				return p.runStowline(ctx, round, fs, toBDeidentified)
			}},
			&benchCase{name: "stowline-deidentify-to-sink/" + fs.String(), kind: kindDeidentifySink, setting: fs,
				run: func(ctx context.Context, round int) (sample, error) {
					return p.runStowline(ctx, round, fs, toSinkDeidentified)
				}})
	}
	for _, fs := range p.set.TwoDestinations {
		cs = append(cs, &benchCase{name: "stowline-two-destinations/" + fs.String(), kind: kindTwo, setting: fs,
			run: func(ctx context.Context, round int) (sample, error) { return p.runStowline(ctx, round, fs, toBAndC) }})
	}
	for _, fs := range p.set.TwoSinks {
		cs = append(cs, &benchCase{name: "stowline-to-two-sinks/" + fs.String(), kind: kindTwoSinks, setting: fs,
			run: func(ctx context.Context, round int) (sample, error) { return p.runStowline(ctx, round, fs, toTwoSinks) }})
	}
	for _, fs := range p.set.Sink {
		cs = append(cs, &benchCase{name: "stowline-to-sink/" + fs.String(), kind: kindSink, setting: fs,
			run: func(ctx context.Context, round int) (sample, error) { return p.runStowline(ctx, round, fs, toSink) }})
	}
	for _, w := range p.set.ReadWorkers {
		cs = append(cs, &benchCase{name: fmt.Sprintf("ref-A-read/workers=%d", w), kind: kindRead,
			run: func(ctx context.Context, _ int) (sample, error) { return p.runRead(ctx, w) }})
	}
	for _, bs := range p.set.BStow {
		cs = append(cs, &benchCase{name: "ref-B-stow-from-files/" + bs.String(), kind: kindBStow,
			run: func(ctx context.Context, round int) (sample, error) { return p.runBStow(ctx, round, bs) }})
	}
	return cs
}

// measure runs one transfer of c, failing the benchmark on any error. If
// other programs used more than MaxOtherLoad cores meanwhile, it measures
// again (up to maxAttempts) and keeps the least disturbed attempt.
func (p *pipeline) measure(b *testing.B, c *benchCase, round int) sample {
	b.Helper()
	var best sample
	for attempt := 1; ; attempt++ {
		s := p.measureOnce(b, c, round)
		if attempt == 1 || s.otherLoad() < best.otherLoad() {
			best = s
		}
		if p.set.MaxOtherLoad <= 0 || best.otherLoad() <= p.set.MaxOtherLoad || attempt == maxAttempts {
			best.attempts = attempt
			return best
		}
		fmt.Printf("# again    %-30s other programs used %.2f cores (limit %.2f)\n", c.name, s.otherLoad(), p.set.MaxOtherLoad)
	}
}

func (p *pipeline) measureOnce(b *testing.B, c *benchCase, round int) sample {
	b.Helper()
	// Write back what the previous transfer left dirty in the page cache
	// (B's files, the deletes), so that no transfer pays for its
	// predecessor's writeback.
	syscall.Sync()
	ctx, cancel := context.WithTimeout(context.Background(), p.set.Timeout)
	defer cancel()
	s, err := c.run(ctx, round)
	if err != nil {
		b.Fatalf("round %d, %s: %v", round+1, c.name, err)
	}
	return s
}

// summary is a case's figures over its rounds: medians, and the peak for
// memory.
type summary struct {
	toB, toBMin, toBMax, done time.Duration
	instPerS, mbPerS          float64
	// CPU seconds per GB (1e9 bytes) forwarded.
	cpuA, cpuB, cpuClient, cpuSink float64
	// firstRequest and stream are the sink cases' split of the time
	// (see sample); streamMBps is the study's size over stream.
	firstRequest, stream time.Duration
	streamMBps           float64
	peakRSS, readyRSS    int64
	requests             int
	// sinkRequests is the median number of requests the sink answered,
	// sinkPeak the most it served at once in any round (sink cases).
	sinkRequests, sinkPeak int
	// verify is the median QIDO-RS verification time (kindVerify).
	verify time.Duration
	// otherLoad is the CPU the rest of the machine used during the
	// transfers, in cores (0: the machine was otherwise idle).
	otherLoad float64
}

// otherLoad is the sample's competing load in cores.
func (x sample) otherLoad() float64 {
	return x.other.Seconds() / max(x.toB, x.done).Seconds()
}

func (p *pipeline) summarize(c *benchCase) summary {
	var s summary
	pick := func(f func(sample) float64) float64 { return medianOf(c.samples, f) }
	gb := float64(p.totalBytes) / 1e9
	s.toB = time.Duration(pick(func(x sample) float64 { return float64(x.toB) }))
	s.done = time.Duration(pick(func(x sample) float64 { return float64(x.done) }))
	s.toBMin, s.toBMax = c.samples[0].toB, c.samples[0].toB
	for _, x := range c.samples {
		s.toBMin, s.toBMax = min(s.toBMin, x.toB), max(s.toBMax, x.toB)
		s.peakRSS = max(s.peakRSS, x.peakRSS)
		s.sinkPeak = max(s.sinkPeak, x.sinkPeak)
	}
	s.instPerS = float64(p.n()) / s.toB.Seconds()
	s.mbPerS = float64(p.totalBytes) / 1e6 / s.toB.Seconds()
	s.cpuA = pick(func(x sample) float64 { return x.cpuA.Seconds() }) / gb
	s.cpuB = pick(func(x sample) float64 { return x.cpuB.Seconds() }) / gb
	s.cpuClient = pick(func(x sample) float64 { return x.cpuClient.Seconds() }) / gb
	s.cpuSink = pick(func(x sample) float64 { return x.cpuSink.Seconds() }) / gb
	s.firstRequest = time.Duration(pick(func(x sample) float64 { return float64(x.firstRequest) }))
	s.stream = time.Duration(pick(func(x sample) float64 { return float64(x.stream) }))
	if s.stream > 0 {
		s.streamMBps = float64(p.totalBytes) / 1e6 / s.stream.Seconds()
	}
	s.readyRSS = int64(pick(func(x sample) float64 { return float64(x.readyRSS) }))
	s.requests = int(pick(func(x sample) float64 { return float64(x.requests) }))
	s.sinkRequests = int(pick(func(x sample) float64 { return float64(x.sinkRequests) }))
	s.verify = time.Duration(pick(func(x sample) float64 { return float64(x.verify) }))
	s.otherLoad = pick(sample.otherLoad)
	return s
}

// report prints c's figures in the benchmark format (benchstat reads it).
// ns/op is the median time until B (or the sink) held the whole study.
// x-native compares with Orthanc's own client, x-A-read with the fastest
// raw read of A (read: nil without a read reference).
func (p *pipeline) report(b *testing.B, c *benchCase, native natives, read, one *summary) {
	s := c.sum
	b.ReportMetric(float64(s.toB.Nanoseconds()), "ns/op")
	b.ReportMetric(s.instPerS, "inst/s")
	b.ReportMetric(s.mbPerS, "MB/s")
	b.ReportMetric(s.done.Seconds(), "sender-done-s")
	b.ReportMetric(s.cpuA, "A-cpu-s/GB")
	if c.kind != kindRead && !c.kind.toSink() {
		b.ReportMetric(s.cpuB, "B-cpu-s/GB")
	}
	if c.kind != kindNative && c.kind != kindNativeSink {
		b.ReportMetric(s.cpuClient, "client-cpu-s/GB")
	}
	if c.kind.stowline() {
		b.ReportMetric(float64(s.peakRSS)/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(float64(s.requests), "requests")
	}
	if c.kind.toSink() {
		b.ReportMetric(s.cpuSink, "sink-cpu-s/GB")
		b.ReportMetric(s.firstRequest.Seconds(), "first-request-s")
		b.ReportMetric(s.streamMBps, "stream-MB/s")
		if s.sinkRequests > 0 {
			b.ReportMetric(float64(s.sinkRequests), "sink-requests")
			b.ReportMetric(float64(s.sinkPeak), "sink-peak-in-flight")
		}
	}
	if n := native.ratioTo(c.kind); n != nil {
		b.ReportMetric(s.instPerS/n.instPerS, "x-native")
	}
	switch {
	case one != nil && c.kind.deidentify():
		b.ReportMetric(s.toB.Seconds()/one.toB.Seconds(), "x-plain-time")
		b.ReportMetric(s.cpuClient/one.cpuClient, "x-plain-client-cpu")
	case one != nil && c.kind == kindVerify:
		b.ReportMetric(float64(s.verify.Microseconds())/1000, "verify-ms")
		b.ReportMetric(100*s.verify.Seconds()/one.done.Seconds(), "verify-%-of-plain")
		b.ReportMetric(s.done.Seconds()/one.done.Seconds(), "x-plain-done")
	case one != nil:
		b.ReportMetric(twoVsOne(s, *one), "x-one-destination")
	}
	if read != nil && c.kind != kindRead {
		b.ReportMetric(s.instPerS/read.instPerS, "x-A-read")
	}
	b.ReportMetric(s.otherLoad, "other-load-cores")
}

// line is one sample in a progress line.
func (p *pipeline) line(s sample) string {
	out := fmt.Sprintf("%6.2fs (sender done %6.2fs) %6.1f inst/s %6.1f MB/s  CPU s: A %5.2f  B %5.2f  client %5.2f  other load %.2f cores",
		s.toB.Seconds(), s.done.Seconds(), float64(p.n())/s.toB.Seconds(), float64(p.totalBytes)/1e6/s.toB.Seconds(),
		s.cpuA.Seconds(), s.cpuB.Seconds(), s.cpuClient.Seconds(), s.otherLoad())
	if s.peakRSS > 0 {
		out += fmt.Sprintf("  RSS ready %.0f MiB peak %.0f MiB  %d requests", float64(s.readyRSS)/(1<<20), float64(s.peakRSS)/(1<<20), s.requests)
	}
	if s.stream > 0 {
		out += fmt.Sprintf("  sink: CPU %.2f s, first request %.3fs, stream %.3fs", s.cpuSink.Seconds(), s.firstRequest.Seconds(), s.stream.Seconds())
		if s.sinkRequests > 0 {
			out += fmt.Sprintf(", %d requests, at most %d at once", s.sinkRequests, s.sinkPeak)
		}
	}
	return out
}

// printTable prints the summary as the Markdown table BENCHMARKS.md holds.
func (p *pipeline) printTable(cases []*benchCase, native natives, read *summary) {
	if p.set.ProfileDir != "" {
		fmt.Printf("\nPROFILED BUILD (stowline-profiled): stowline figures include profiling overhead; profiles in %s\n", p.set.ProfileDir)
	}
	fmt.Printf("\n%d instances, %.1f MB, medians of %d rounds (min-max of the time in brackets); CPU in seconds per GB forwarded\n\n",
		p.n(), float64(p.totalBytes)/1e6, p.set.Rounds)
	fmt.Println("| case | time to B or sink, s | instances/s | MB/s | × native | × A-read | sender done, s | client CPU s/GB | A CPU s/GB | B (and C) CPU s/GB | sink CPU s/GB | peak RSS MiB | other load, cores |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range cases {
		s := c.sum
		ratio, xread, client, cpuB, cpuSink, rss := "", "", "-", "-", "-", "-"
		if n := native.ratioTo(c.kind); n != nil {
			ratio = fmt.Sprintf("%.2f", s.instPerS/n.instPerS)
		}
		if read != nil {
			xread = fmt.Sprintf("%.2f", s.instPerS/read.instPerS)
		}
		if c.kind != kindNative && c.kind != kindNativeSink {
			client = fmt.Sprintf("%.2f", s.cpuClient)
		}
		if c.kind != kindRead && !c.kind.toSink() {
			cpuB = fmt.Sprintf("%.2f", s.cpuB)
		}
		if c.kind.toSink() {
			cpuSink = fmt.Sprintf("%.2f", s.cpuSink)
		}
		if c.kind.stowline() {
			rss = fmt.Sprintf("%.0f", float64(s.peakRSS)/(1<<20))
		}
		fmt.Printf("| %s | %.3f (%.3f-%.3f) | %.1f | %.1f | %s | %s | %.3f | %s | %.2f | %s | %s | %s | %.2f |\n",
			c.name, s.toB.Seconds(), s.toBMin.Seconds(), s.toBMax.Seconds(), s.instPerS, s.mbPerS,
			ratio, xread, s.done.Seconds(), client, s.cpuA, cpuB, cpuSink, rss, s.otherLoad)
	}
	for _, c := range cases {
		one := oneDestination(cases, c)
		if one == nil {
			continue
		}
		s := c.sum
		if c.kind.deidentify() {
			fmt.Printf("\n%s: de-identified, the study was held after %.3f s against %.3f s plain (%.2f × the time); stowline used %.2f CPU-s/GB against %.2f (%.2f ×), A %.2f against %.2f.\n",
				c.name, s.toB.Seconds(), one.toB.Seconds(), s.toB.Seconds()/one.toB.Seconds(),
				s.cpuClient, one.cpuClient, s.cpuClient/one.cpuClient, s.cpuA, one.cpuA)
			continue
		}
		if c.kind == kindVerify {
			fmt.Printf("\n%s: the QIDO-RS verification took %.1f ms (median), %.2f%% of the plain forward's %.3f s until \"study forwarded\"; with it the study was forwarded after %.3f s (%.3f × plain).\n",
				c.name, float64(s.verify.Microseconds())/1000, 100*s.verify.Seconds()/one.done.Seconds(), one.done.Seconds(), s.done.Seconds(), s.done.Seconds()/one.done.Seconds())
			continue
		}
		fmt.Printf("\n%s: both destinations held the study after %.3f s, against %.3f s for one alone: %.1f instances stored per second over both, %.2f × one destination's %.1f (2 would mean the second destination costs no time).\n",
			c.name, s.toB.Seconds(), one.toB.Seconds(), 2*s.instPerS, twoVsOne(s, *one), one.instPerS)
	}
	for _, c := range cases {
		if c.kind != kindSink && c.kind != kindNativeSink {
			continue
		}
		s := c.sum
		if c.kind == kindNativeSink {
			fmt.Printf("\n%s: %d STOW-RS requests (median), at most %d at once.\n", c.name, s.sinkRequests, s.sinkPeak)
			continue
		}
		fmt.Printf("\n%s: the first STOW-RS request reached the sink %.3f s after the webhook POST (event through JetStream, instances listed); from then the study streamed in %.3f s, %.1f MB/s",
			c.name, s.firstRequest.Seconds(), s.stream.Seconds(), s.streamMBps)
		if read != nil {
			fmt.Printf(" (%.2f × the fastest A read)", s.streamMBps/read.mbPerS)
		}
		fmt.Printf("; %d STOW-RS requests (median), at most %d at once.\n", s.sinkRequests, s.sinkPeak)
	}
	again, total := 0, 0
	for _, c := range cases {
		for _, x := range c.samples {
			again += x.attempts - 1
			total++
		}
	}
	fmt.Printf("\nKept %d transfers; %d more were measured and dropped because other programs used more than %.2f cores meanwhile.\n\n",
		total, again, p.set.MaxOtherLoad)
}

// printHeader prints the machine and versions the figures belong to.
func (p *pipeline) printHeader() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var sys struct{ Version string }
	var plugin struct{ Version string }
	_ = p.a.Do(ctx, http.MethodGet, "/system", nil, &sys)
	_ = p.a.Do(ctx, http.MethodGet, "/plugins/dicom-web", nil, &plugin)
	printMachine()
	fmt.Printf("# Orthanc %s, DICOMweb plugin %s; study %d x %d instances of %dx%d px, %.1f MB\n",
		sys.Version, plugin.Version, p.set.Series, p.set.PerSeries, p.set.Rows, p.set.Cols, float64(p.totalBytes)/1e6)
	fmt.Printf("# stowline built from %s\n# Orthanc storage and the study under %s\n", p.source, os.TempDir())
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
