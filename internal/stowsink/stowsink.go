// Package stowsink is a discard STOW-RS server for benchmarks and tests.
// It does the work a real server must do to answer (parse the
// multipart/related body, read each instance's SOP Class and Instance UID)
// and none of the storing, so a transfer into it measures the sender and
// its source, not the destination. Optional latency and a per-request
// bandwidth cap make it behave like a distant cloud service.
package stowsink

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// Options shape the sink's answers.
type Options struct {
	// Latency is waited once per request before answering: a WAN round
	// trip plus the service's processing time.
	Latency time.Duration
	// BytesPerSecond caps how fast each request body is read (0: no cap):
	// a per-connection bandwidth limit, as a cloud service over a WAN has.
	BytesPerSecond int
}

// Stats are totals since the sink started (or was reset).
type Stats struct {
	Requests, Instances, Bytes int64
	// MostAtOnce is the most requests served at once: how many STOW-RS
	// requests a client really had open (with a per-request rate cap,
	// what decides a far destination's throughput).
	MostAtOnce int64
	// First is when the first request arrived, Last when the last
	// request's instances were recorded (zero before any).
	First, Last time.Time
}

// Sink is an http.Handler answering POST .../studies like a STOW-RS server.
type Sink struct {
	opts      Options
	requests  atomic.Int64
	instances atomic.Int64
	bytes     atomic.Int64

	mu          sync.Mutex
	open, most  int64 // requests being served, the most at once
	first, last time.Time
	seen        map[string]int // SOP Instance UID -> times stored
	notify      chan struct{}  // closed and replaced whenever instances arrive
}

// New returns a sink.
func New(opts Options) *Sink {
	return &Sink{opts: opts, seen: map[string]int{}, notify: make(chan struct{})}
}

// Stats returns the totals so far.
func (s *Sink) Stats() Stats {
	s.mu.Lock()
	first, last, most := s.first, s.last, s.most
	s.mu.Unlock()
	return Stats{Requests: s.requests.Load(), Instances: s.instances.Load(), Bytes: s.bytes.Load(), MostAtOnce: most, First: first, Last: last}
}

// Distinct is how many different SOP instances the sink has stored.
func (s *Sink) Distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// Holds reports whether the sink has stored the SOP instance uid.
func (s *Sink) Holds(uid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[uid] > 0
}

// Reset forgets everything stored (between benchmark rounds).
func (s *Sink) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = map[string]int{}
	s.first, s.last = time.Time{}, time.Time{}
	s.most = s.open // those still open count for the next round
	s.requests.Store(0)
	s.instances.Store(0)
	s.bytes.Store(0)
}

// WaitDistinct blocks until the sink holds at least n distinct instances
// or ctx ends.
func (s *Sink) WaitDistinct(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		have, ch := len(s.seen), s.notify
		s.mu.Unlock()
		if have >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("stowsink: %d of %d instances: %w", have, n, ctx.Err())
		}
	}
}

// readBufferSize is the read buffer of a request body.
const readBufferSize = 256 << 10

type storedInstance struct{ classUID, instanceUID string }

func (s *Sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/studies") {
		http.Error(w, "stowsink: only POST .../studies", http.StatusNotFound)
		return
	}
	s.requests.Add(1)
	s.mu.Lock()
	if s.first.IsZero() {
		s.first = time.Now()
	}
	s.open++
	s.most = max(s.most, s.open)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.open--
		s.mu.Unlock()
	}()
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/related" || params["boundary"] == "" ||
		!strings.EqualFold(params["type"], "application/dicom") {
		http.Error(w, "stowsink: want multipart/related; type=\"application/dicom\" with a boundary", http.StatusUnsupportedMediaType)
		return
	}
	var body io.Reader = r.Body
	if s.opts.BytesPerSecond > 0 {
		body = &throttled{r: body, rate: s.opts.BytesPerSecond, start: time.Now()}
	}
	// multipart.NewReader keeps a *bufio.Reader of at least 4 KiB as it
	// is: a large one lets it scan for the boundary, and read the socket,
	// 256 KiB at a time instead of 4 KiB, so the sink is not what limits
	// a benchmark (BENCHMARKS.md, BenchmarkLoopback).
	stored, err := s.readParts(multipart.NewReader(bufio.NewReaderSize(body, readBufferSize), params["boundary"]))
	if err != nil {
		http.Error(w, "stowsink: "+err.Error(), http.StatusBadRequest)
		return
	}
	if s.opts.Latency > 0 {
		select {
		case <-time.After(s.opts.Latency):
		case <-r.Context().Done():
			return
		}
	}
	s.record(stored)
	w.Header().Set("Content-Type", "application/dicom+json")
	_ = json.NewEncoder(w).Encode(response(stored))
}

// readParts reads every part's SOP UIDs and discards the rest of it.
func (s *Sink) readParts(mr *multipart.Reader) ([]storedInstance, error) {
	var stored []storedInstance
	br := bufio.NewReaderSize(nil, 64<<10)
	for {
		part, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			return stored, nil
		}
		if err != nil {
			return nil, fmt.Errorf("part %d: %w", len(stored)+1, err)
		}
		counted := &countingReader{r: part}
		br.Reset(counted)
		info, err := testharness.ReadInfo(br)
		if err != nil {
			return nil, fmt.Errorf("part %d: %w", len(stored)+1, err)
		}
		if _, err := io.Copy(io.Discard, br); err != nil {
			return nil, fmt.Errorf("part %d: %w", len(stored)+1, err)
		}
		s.bytes.Add(counted.n)
		stored = append(stored, storedInstance{info.SOPClassUID, info.SOPInstanceUID})
	}
}

func (s *Sink) record(stored []storedInstance) {
	s.instances.Add(int64(len(stored)))
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, in := range stored {
		s.seen[in.instanceUID]++
	}
	s.last = time.Now()
	close(s.notify)
	s.notify = make(chan struct{})
}

// WriteAnswer writes a STOW-RS answer of DICOM JSON items (objects as
// text): stored in the ReferencedSOPSequence, failed in the
// FailedSOPSequence; 409 when none is stored, 202 when some failed, else
// 200. For test destinations that answer per instance.
func WriteAnswer(w http.ResponseWriter, stored, failed []string) {
	var fields []string
	if len(stored) > 0 {
		fields = append(fields, `"00081199":{"vr":"SQ","Value":[`+strings.Join(stored, ",")+`]}`)
	}
	if len(failed) > 0 {
		fields = append(fields, `"00081198":{"vr":"SQ","Value":[`+strings.Join(failed, ",")+`]}`)
	}
	w.Header().Set("Content-Type", "application/dicom+json")
	switch {
	case len(stored) == 0:
		w.WriteHeader(http.StatusConflict)
	case len(failed) > 0:
		w.WriteHeader(http.StatusAccepted)
	}
	_, _ = io.WriteString(w, "{"+strings.Join(fields, ",")+"}")
}

// WriteNotFoundJSON answers 404 with a JSON body, as AWS HealthImaging
// answers a route it does not serve: for test destinations that serve
// only its documented routes.
func WriteNotFoundJSON(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	_, _ = io.WriteString(w, `{"message":"Not Found"}`)
}

// WriteInstancePage writes the QIDO-RS answer of a destination holding
// the instances held (SOP Instance UIDs, in its order) to r: the page r's
// limit and offset ask, of pageCap items at most, as a server capping its
// pages does. For test destinations that list what they hold.
func WriteInstancePage(w http.ResponseWriter, r *http.Request, held []string, pageCap int) {
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	offset, _ := strconv.Atoi(r.URL.Query().Get("offset"))
	limit = min(limit, pageCap)
	var items []string
	for _, uid := range held[min(offset, len(held)):min(offset+limit, len(held))] {
		items = append(items, fmt.Sprintf(`{"00080018":{"vr":"UI","Value":[%q]}}`, uid))
	}
	w.Header().Set("Content-Type", "application/dicom+json")
	_, _ = io.WriteString(w, "["+strings.Join(items, ",")+"]")
}

// response is the DICOM JSON a STOW-RS server answers: the
// ReferencedSOPSequence (0008,1199) with each instance's class and UID.
func response(stored []storedInstance) map[string]any {
	items := make([]map[string]any, len(stored))
	for i, in := range stored {
		items[i] = map[string]any{
			"00081150": map[string]any{"vr": "UI", "Value": []string{in.classUID}},
			"00081155": map[string]any{"vr": "UI", "Value": []string{in.instanceUID}},
		}
	}
	return map[string]any{"00081199": map[string]any{"vr": "SQ", "Value": items}}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// throttled reads no faster than rate bytes per second on average.
type throttled struct {
	r     io.Reader
	rate  int
	start time.Time
	n     int64
}

func (t *throttled) Read(p []byte) (int, error) {
	if len(p) > t.rate/10+1 {
		p = p[:t.rate/10+1] // at most 100 ms worth per read, so the pace is smooth
	}
	n, err := t.r.Read(p)
	t.n += int64(n)
	due := t.start.Add(time.Duration(float64(t.n) / float64(t.rate) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
	return n, err
}
