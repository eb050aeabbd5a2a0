package bench

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testidp"
	"golang.org/x/oauth2/clientcredentials"
)

// destName is the DicomWeb "Servers" entry of A that points at B,
// sinkName the one that points at the (first) sink.
const (
	destName = "B"
	sinkName = "SINK"
)

// pollInterval is how often B's instance count is read while a transfer
// runs; it bounds the timing error of "until B holds the whole study".
const pollInterval = 20 * time.Millisecond

// pipeline is the shared setup of one benchmark run: two Orthanc servers
// (three with two-destination cases), each destination behind a
// token-checking proxy of a real OAuth2 server, the study loaded into A,
// and the stowline binary.
type pipeline struct {
	set  settings
	a, b *testharness.Orthanc
	// c is the second destination of the two-destination cases; nil
	// without them.
	c   *testharness.Orthanc
	tmp string

	// idp issues the tokens gateB and gateC check, as a cloud archive's
	// identity provider and API front end would: every STOW-RS request
	// of stowline and of Orthanc's own client goes through a gate.
	idp          *testidp.IdP
	gateB, gateC *testidp.Gate

	studyID, studyUID, lastUpdate string
	instances                     []instance
	totalBytes                    int64

	// sink is the discard STOW-RS server of the sink cases, served by
	// this process at sinkURL (a DICOMweb base URL); nil without them.
	sink    *stowsink.Sink
	sinkURL string
	// sink2 is the second sink of the two-sink cases; nil without them.
	sink2    *stowsink.Sink
	sink2URL string

	// keyFile holds the de-identification key of the STOW_DEIDENTIFY
	// cases (DEIDENTIFY_KEY_FILE), keyer its pseudonyms; empty and nil
	// without them.
	keyFile string
	keyer   *deident.Keyer

	// stowline is the binary the stowline cases run; source says what it
	// was built from.
	stowline, source string
	// http reaches A and B for the benchmark's own calls (no timeout:
	// contexts bound them).
	http *http.Client
}

// instance is one instance of the study, as A stores it.
type instance struct {
	ID, SOPInstanceUID string
	Size               int64
	// MD5 is of A's GET /instances/{id}/file, equal to the generated file.
	MD5 string
	// Path is the generated file.
	Path string
}

func (p *pipeline) n() int { return len(p.instances) }

// setupPipeline starts A and B, generates and loads the study, and builds
// stowline. A missing Orthanc skips the benchmark, or fails it when CI is
// set (testharness).
func setupPipeline(b *testing.B) *pipeline {
	b.Helper()
	set, err := loadSettings(os.Getenv)
	if err != nil {
		b.Fatal(err)
	}
	checkBenchRun(b, "Pipeline", envPrefix+"ROUNDS")
	p := &pipeline{set: set, tmp: b.TempDir(), http: &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 64,
		DisableCompression:  true,
	}}}
	b.Cleanup(p.http.CloseIdleConnections)

	// Tokens live longer than a run: Orthanc's client is given one fixed
	// token (it has no OAuth2 client of its own); stowline fetches its own.
	p.idp = testidp.Start(b, testidp.WithTokenLifetime(6*time.Hour))
	p.b = testharness.StartOrthanc(b, testharness.OrthancOptions{Name: "bench-dest-b", DicomWeb: true})
	p.gateB = p.idp.Gate(b, p.b.URL)
	if len(set.TwoDestinations) > 0 {
		p.c = testharness.StartOrthanc(b, testharness.OrthancOptions{Name: "bench-dest-c", DicomWeb: true})
		p.gateC = p.idp.Gate(b, p.c.URL)
	}
	token, err := (&clientcredentials.Config{ClientID: p.idp.ClientID, ClientSecret: p.idp.ClientSecret, TokenURL: p.idp.TokenURL}).Token(b.Context())
	if err != nil {
		b.Fatalf("token for Orthanc's own STOW-RS client: %v", err)
	}
	// The sinks sit behind gates as B does, so that Orthanc's own client
	// and stowline pay for a token-checking front end into them too.
	if len(set.Sink) > 0 || len(set.TwoSinks) > 0 || len(set.Deidentify) > 0 {
		p.sink, p.sinkURL = p.serveGatedSink(b, stowsink.Options{Latency: set.SinkLatency, BytesPerSecond: set.SinkRate})
	}
	if len(set.TwoSinks) > 0 {
		p.sink2, p.sink2URL = p.serveGatedSink(b, stowsink.Options{Latency: set.SinkLatency, BytesPerSecond: set.SinkRate})
	}
	servers := map[string]any{destName: map[string]any{
		"Url":         p.gateB.URL + "/dicom-web/",
		"HttpHeaders": map[string]string{"Authorization": "Bearer " + token.AccessToken},
	}}
	if p.sink != nil {
		servers[sinkName] = map[string]any{
			"Url":         p.sinkURL + "/",
			"HttpHeaders": map[string]string{"Authorization": "Bearer " + token.AccessToken},
		}
	}
	p.a = testharness.StartOrthanc(b, testharness.OrthancOptions{
		Name:     "bench-source-a",
		DicomWeb: true,
		Extra:    map[string]any{"DicomWeb": map[string]any{"Servers": servers}},
	})
	b.Logf("orthanc A %s (pid %d), B %s (pid %d) behind %s", p.a.URL, p.a.PID(), p.b.URL, p.b.PID(), p.gateB.URL)

	if len(set.Deidentify) > 0 {
		p.keyFile, p.keyer = writeDeidentifyKey(b, p.tmp)
	}

	p.loadStudy(b)
	p.stowline, p.source = buildStowline(b, set, p.tmp)
	return p
}

// serveGatedSink is serveSink behind a gate of the pipeline's IdP; the
// URL is the gate's.
func (p *pipeline) serveGatedSink(b *testing.B, opts stowsink.Options) (*stowsink.Sink, string) {
	b.Helper()
	sink, u := serveSink(b, opts)
	gate := p.idp.Gate(b, strings.TrimSuffix(u, "/dicom-web"))
	return sink, gate.URL + "/dicom-web"
}

// serveSink serves a discard STOW-RS sink on a loopback port until the
// benchmark ends and returns it with its DICOMweb base URL.
func serveSink(b *testing.B, opts stowsink.Options) (*stowsink.Sink, string) {
	b.Helper()
	return serveHandler(b, opts, nil)
}

// loadStudy generates the study, uploads it to A (POST /instances keeps
// every byte) and records what A stores.
func (p *pipeline) loadStudy(b *testing.B) {
	b.Helper()
	start := time.Now()
	files, err := dicomgen.WriteStudy(filepath.Join(p.tmp, "study"), dicomgen.StudySpec{
		PatientID: benchPatientID, PatientName: benchPatientName,
		Series: p.set.Series, InstancesPerSeries: p.set.PerSeries, Rows: p.set.Rows, Columns: p.set.Cols,
	})
	if err != nil {
		b.Fatal(err)
	}
	bySOP := make(map[string]string, len(files))
	for _, f := range files {
		info, err := testharness.ReadFileInfo(f)
		if err != nil {
			b.Fatal(err)
		}
		bySOP[info.SOPInstanceUID] = f
	}
	gen := time.Since(start)

	start = time.Now()
	uploadAll(b, p.a, files)
	upload := time.Since(start)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var studies []string
	p.must(b, p.a.Do(ctx, http.MethodGet, "/studies", nil, &studies))
	if len(studies) != 1 {
		b.Fatalf("A holds %d studies, want 1", len(studies))
	}
	p.studyID = studies[0]
	var study struct {
		LastUpdate    string
		MainDicomTags struct{ StudyInstanceUID string }
	}
	p.must(b, p.a.Do(ctx, http.MethodGet, "/studies/"+p.studyID, nil, &study))
	p.studyUID, p.lastUpdate = study.MainDicomTags.StudyInstanceUID, study.LastUpdate
	var insts []struct {
		ID            string
		FileSize      int64
		MainDicomTags struct{ SOPInstanceUID string }
	}
	p.must(b, p.a.Do(ctx, http.MethodGet, "/studies/"+p.studyID+"/instances", nil, &insts))
	if len(insts) != len(files) {
		b.Fatalf("A holds %d instances, %d were uploaded", len(insts), len(files))
	}
	p.instances = make([]instance, len(insts))
	for i, in := range insts {
		path, ok := bySOP[in.MainDicomTags.SOPInstanceUID]
		if !ok {
			b.Fatalf("A holds SOP instance %s that was not generated", in.MainDicomTags.SOPInstanceUID)
		}
		p.instances[i] = instance{ID: in.ID, SOPInstanceUID: in.MainDicomTags.SOPInstanceUID, Size: in.FileSize, Path: path}
		p.totalBytes += in.FileSize
	}
	// A must serve exactly the generated bytes: the byte-identity checks
	// at B compare against these sums.
	err = parallel(ctx, len(p.instances), 4, func(ctx context.Context, i int) error {
		in := &p.instances[i]
		sum, err := p.fileMD5(ctx, p.a, in.ID)
		if err != nil {
			return err
		}
		local, err := testharness.FileMD5(in.Path)
		if err != nil {
			return err
		}
		if sum != local {
			return fmt.Errorf("A serves instance %s with md5 %s, the generated file has %s", in.ID, sum, local)
		}
		in.MD5 = sum
		return nil
	})
	p.must(b, err)
	b.Logf("study %s: %d instances, %.1f MB (%dx%d px); generated in %v, uploaded to A in %v",
		p.studyID, p.n(), float64(p.totalBytes)/1e6, p.set.Rows, p.set.Cols,
		gen.Round(time.Millisecond), upload.Round(time.Millisecond))
}

// buildStowline compiles the stowline binary into tmp: the real
// ./cmd/stowline, or the profiling variant when a profile directory is set.
// It returns the binary and what it was built from.
func buildStowline(b *testing.B, set settings, tmp string) (bin, source string) {
	b.Helper()
	root, err := moduleRoot(set.Source)
	if err != nil {
		b.Fatalf("stowline source: %v (set %sSOURCE to a module root, or run from the bench directory as go test does)", err, envPrefix)
	}
	var flags []string
	pkg, out := "./cmd/stowline", filepath.Join(tmp, "stowline")
	if set.ProfileDir != "" {
		pkg, out = "./internal/bench/cmd/stowline-profiled", filepath.Join(tmp, "stowline-profiled")
		if err := os.MkdirAll(set.ProfileDir, 0o755); err != nil {
			b.Fatal(err)
		}
		flags = profiledOverlay(b, root, tmp, "stowline-profiled")
	}
	goBuild(b, root, "stowline", pkg, out, flags...)
	return out, describeSource(root)
}

func (p *pipeline) must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// fileMD5 is the MD5 of GET /instances/{id}/file.
func (p *pipeline) fileMD5(ctx context.Context, o *testharness.Orthanc, id string) (string, error) {
	h := md5.New()
	if _, err := p.getFile(ctx, o, id, h); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// getFile copies GET /instances/{id}/file into w, uncompressed.
func (p *pipeline) getFile(ctx context.Context, o *testharness.Orthanc, id string, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.URL+"/instances/"+id+"/file", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := p.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s/instances/%s/file: HTTP %d", o.Name, id, resp.StatusCode)
	}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	return io.CopyBuffer(w, resp.Body, *buf)
}

// count returns how many instances o holds.
func count(ctx context.Context, o *testharness.Orthanc) (int, error) {
	var st struct{ CountInstances int }
	err := o.Do(ctx, http.MethodGet, "/statistics", nil, &st)
	return st.CountInstances, err
}

// watchB polls B until it holds the whole study and then sends the time
// elapsed since start; it sends an error if ctx ends first.
func (p *pipeline) watchB(ctx context.Context, start time.Time) <-chan timed {
	return p.watchHeld(ctx, start, p.b)
}

// watchHeld is watchB for every one of dests.
func (p *pipeline) watchHeld(ctx context.Context, start time.Time, dests ...*testharness.Orthanc) <-chan timed {
	ch := make(chan timed, 1)
	go func() {
		t := time.NewTicker(pollInterval)
		defer t.Stop()
		for _, o := range dests {
			for {
				n, err := count(ctx, o)
				if err == nil && n >= p.n() {
					break
				}
				select {
				case <-ctx.Done():
					ch <- timed{err: fmt.Errorf("%s holds %d of %d instances when the transfer timed out (last poll error: %v)", o.Name, n, p.n(), err)}
					return
				case <-t.C:
				}
			}
		}
		ch <- timed{d: time.Since(start)}
	}()
	return ch
}

// watchSink waits until the sinks hold the whole study and then sends the
// time from start until the last of them recorded its last instance; it
// sends an error if ctx ends first.
func (p *pipeline) watchSink(ctx context.Context, start time.Time, sinks ...*stowsink.Sink) <-chan timed {
	ch := make(chan timed, 1)
	go func() {
		var last time.Time
		for _, sink := range sinks {
			if err := sink.WaitDistinct(ctx, p.n()); err != nil {
				ch <- timed{err: err}
				return
			}
			if l := sink.Stats().Last; l.After(last) {
				last = l
			}
		}
		ch <- timed{d: last.Sub(start)}
	}()
	return ch
}

// checkAndResetSink verifies that each sink got every instance exactly
// once, with the study's bytes, and empties it.
func (p *pipeline) checkAndResetSink(sinks ...*stowsink.Sink) error {
	for _, sink := range sinks {
		st, distinct := sink.Stats(), sink.Distinct()
		sink.Reset()
		if distinct != p.n() || st.Instances != int64(p.n()) || st.Bytes != p.totalBytes {
			return fmt.Errorf("a sink got %d instances (%d distinct), %d bytes; the study has %d, %d bytes",
				st.Instances, distinct, st.Bytes, p.n(), p.totalBytes)
		}
	}
	return nil
}

type timed struct {
	d   time.Duration
	err error
}

// checkAndEmptyB verifies that B holds exactly the study, byte-identical on
// a sample of instances (a different sample each round), then deletes it so
// the next transfer starts from an empty B.
func (p *pipeline) checkAndEmptyB(ctx context.Context, round int) error {
	return p.checkAndEmpty(ctx, round, p.b)
}

// checkAndEmpty is checkAndEmptyB for each of dests.
func (p *pipeline) checkAndEmpty(ctx context.Context, round int, dests ...*testharness.Orthanc) error {
	for _, o := range dests {
		n, err := count(ctx, o)
		if err != nil {
			return err
		}
		if n != p.n() {
			return fmt.Errorf("%s holds %d instances, want %d", o.Name, n, p.n())
		}
		const samples = 10
		for j := range min(samples, p.n()) {
			in := p.instances[(j*p.n()/samples+round*7)%p.n()]
			sum, err := p.fileMD5(ctx, o, in.ID)
			if err != nil {
				return fmt.Errorf("%s: %w", o.Name, err)
			}
			if sum != in.MD5 {
				return fmt.Errorf("%s's copy of SOP instance %s differs: md5 %s, A has %s", o.Name, in.SOPInstanceUID, sum, in.MD5)
			}
		}
		if err := o.Do(ctx, http.MethodDelete, "/studies/"+p.studyID, nil, nil); err != nil {
			return fmt.Errorf("empty %s: %w", o.Name, err)
		}
		if n, err := count(ctx, o); err != nil || n != 0 {
			return fmt.Errorf("%s holds %d instances after the delete (err %v)", o.Name, n, err)
		}
	}
	return nil
}

// parallel runs fn(0..n-1) on workers goroutines and returns the first
// error; it stops handing out work after an error.
func parallel(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// freeAddr returns a free loopback address for stowline's listeners.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
