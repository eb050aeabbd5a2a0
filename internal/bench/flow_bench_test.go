package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/stowsink"
)

// flowShape is a destination shape of BenchmarkFlowControl.
type flowShape struct {
	name string
	// to is where stowline sends: B (near) or the shape's sink.
	to      target
	sink    *stowsink.Sink
	sinkURL string
	gate    *faultproxy.InFlightLimit
}

// flowCase is one STOW_PARALLEL_REQUESTS setting: fixed (floor = ceiling)
// or adaptive (floor 1, ceiling 16, the defaults).
type flowCase struct {
	parallel int
	adaptive bool
}

func (c flowCase) String() string {
	if c.adaptive {
		return fmt.Sprintf("adaptive 1-%d", c.parallel)
	}
	return fmt.Sprintf("fixed %d", c.parallel)
}

// BenchmarkFlowControl measures the adaptive limit of STOW-RS requests in
// flight (internal/flow) against fixed settings, for three destination
// shapes: near (Orthanc B behind the token gate, one store thread a
// request), far (the discard sink, 40 ms before each answer and 25 MB/s
// per request) and throttled (the far sink answering 429 with Retry-After
// 1 s above STOWLINE_BENCH_FLOW_THROTTLE requests in flight). Each case is
// one stowline process forwarding the study, timed until the destination
// holds it; the median of STOWLINE_BENCH_ROUNDS rounds is reported with
// the adaptive case's share of the best fixed one.
//
//	STOWLINE_BENCH_SERIES=10 STOWLINE_BENCH_ROUNDS=3 STOWLINE_BENCH_NATIVE=0 \
//	  go test -run '^$' -bench FlowControl -benchtime 1x -timeout 60m ./internal/bench/
//
// STOWLINE_BENCH_FLOW_FIXED ("1,2,4,8,16") lists the fixed settings,
// STOWLINE_BENCH_FLOW_SHAPES ("near,far,throttled") the shapes,
// STOWLINE_BENCH_FLOW_MAX_INSTANCES (25) every case's STOW_MAX_INSTANCES.
func BenchmarkFlowControl(b *testing.B) {
	// The pipeline's other destinations are not needed.
	for k, v := range map[string]string{"TWO_DESTINATIONS": "-", "TWO_SINKS": "-", "SINK": "-"} {
		if os.Getenv(envPrefix+k) == "" {
			b.Setenv(envPrefix+k, v)
		}
	}
	p := setupPipeline(b)
	e := &envVars{prefix: envPrefix, getenv: os.Getenv}
	fixed := e.ints("FLOW_FIXED", "1,2,4,8,16", 1, 64)
	throttle := e.integer("FLOW_THROTTLE", 6, 1, 64)
	maxInstances := e.integer("FLOW_MAX_INSTANCES", 25, 1, 10000)
	shapeNames := strings.Split(e.get("FLOW_SHAPES"), ",")
	if shapeNames[0] == "" {
		shapeNames = []string{"near", "far", "throttled"}
	}
	if err := e.err("STOWLINE_BENCH_FLOW_FIXED (1,2,4,8,16), _FLOW_THROTTLE (6), _FLOW_SHAPES (near,far,throttled), _FLOW_MAX_INSTANCES (25)"); err != nil {
		b.Fatal(err)
	}
	far := stowsink.Options{Latency: 40 * time.Millisecond, BytesPerSecond: 25 << 20}
	var shapes []*flowShape
	for _, name := range shapeNames {
		s := &flowShape{name: name, to: toSink}
		switch name {
		case "near":
			s.to = toB
		case "far":
			s.sink, s.sinkURL = serveHandler(b, far, nil)
		case "throttled":
			s.sink, s.sinkURL = serveHandler(b, far, func(h http.Handler) http.Handler {
				s.gate = faultproxy.LimitInFlight(h, throttle, time.Second)
				return s.gate
			})
		default:
			b.Fatalf("STOWLINE_BENCH_FLOW_SHAPES: unknown shape %q (near, far, throttled)", name)
		}
		shapes = append(shapes, s)
	}
	var cases []flowCase
	for _, n := range fixed {
		cases = append(cases, flowCase{parallel: n})
	}
	cases = append(cases, flowCase{parallel: 16, adaptive: true})

	printMachine()
	fmt.Printf("# study: %d instances, %.1f MB; stowline FORWARDER_CONCURRENCY=4, STOW_MAX_INSTANCES=%d; throttled: 429 above %d in flight\n",
		p.n(), float64(p.totalBytes)/1e6, maxInstances, throttle)
	results := map[string]map[string][]float64{} // shape, case: MB/s per round
	ctx := b.Context()
	for _, s := range shapes {
		results[s.name] = map[string][]float64{}
		for round := range p.set.Rounds {
			// Alternated, so that drift (B's store growing, the page
			// cache) favours no case: the adaptive one runs last, then
			// first.
			for _, c := range roundOrder(cases, round) {
				// As Pipeline's measure: no case pays for its
				// predecessor's writeback.
				syscall.Sync()
				mbps, note := p.runFlowCase(ctx, s, c, maxInstances, round)
				results[s.name][c.String()] = append(results[s.name][c.String()], mbps)
				fmt.Printf("# %-10s round %d/%d %-14s %7.1f MB/s %s\n", s.name, round+1, p.set.Rounds, c, mbps, note)
			}
		}
	}
	fmt.Printf("\n| shape | %s | adaptive / best fixed |\n|---|", strings.Join(caseNames(cases), " | "))
	fmt.Print(strings.Repeat("---:|", len(cases)+1) + "\n")
	for _, s := range shapes {
		best, adaptive := 0.0, 0.0
		row := "| " + s.name + " |"
		for _, c := range cases {
			m := median(results[s.name][c.String()])
			row += fmt.Sprintf(" %.1f |", m)
			if c.adaptive {
				adaptive = m
			} else {
				best = max(best, m)
			}
		}
		share := 0.0
		if best > 0 {
			share = adaptive / best
		}
		fmt.Printf("%s %.0f%% |\n", row, 100*share)
		b.Run(s.name, func(b *testing.B) { b.ReportMetric(share, "adaptive/best") })
	}
	fmt.Println("\nMB/s: median over rounds of the study's bytes over the time until the destination held it (0: the study did not arrive in time).")
}

func caseNames(cases []flowCase) []string {
	var out []string
	for _, c := range cases {
		out = append(out, c.String())
	}
	return out
}

// runFlowCase forwards the study once with setting c to shape s and
// returns the throughput in MB/s (0 when it failed, with a note).
func (p *pipeline) runFlowCase(ctx context.Context, s *flowShape, c flowCase, maxInstances, round int) (float64, string) {
	p.sink, p.sinkURL = s.sink, s.sinkURL
	if p.set.StowlineEnv == nil {
		p.set.StowlineEnv = map[string]string{}
	}
	p.set.StowlineEnv["STOW_PARALLEL_MIN"] = strconv.Itoa(c.parallel)
	if c.adaptive {
		p.set.StowlineEnv["STOW_PARALLEL_MIN"] = "1"
	}
	var refusedBefore int64
	if s.gate != nil {
		refusedBefore = s.gate.Refused()
	}
	tctx, cancel := context.WithTimeout(ctx, p.set.Timeout)
	defer cancel()
	smp, err := p.runStowline(tctx, round, fwdSetting{Concurrency: 4, MaxInstances: maxInstances, Parallel: c.parallel}, s.to)
	note := fmt.Sprintf("(%d requests)", smp.requests)
	if s.gate != nil {
		note = fmt.Sprintf("(%d requests, %d refused with 429)", smp.requests, s.gate.Refused()-refusedBefore)
	}
	if err != nil {
		// Leave the destination empty for the next case.
		if s.to == toSink {
			s.sink.Reset()
		} else {
			_ = p.checkAndEmptyB(ctx, round)
		}
		return 0, note + " failed: " + err.Error()
	}
	return float64(p.totalBytes) / 1e6 / smp.toB.Seconds(), note
}

// serveHandler serves a discard sink with opts, wrapped by wrap if set,
// until the benchmark ends, and returns it with its DICOMweb base URL.
func serveHandler(b *testing.B, opts stowsink.Options, wrap func(http.Handler) http.Handler) (*stowsink.Sink, string) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	sink := stowsink.New(opts)
	var h http.Handler = sink
	if wrap != nil {
		h = wrap(sink)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Minute}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	return sink, "http://" + ln.Addr().String() + "/dicom-web"
}
