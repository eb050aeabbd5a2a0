// Package faultproxy sits in front of a real STOW-RS destination in tests
// and produces the faults a real server won't on demand: an outage (any
// status for every STOW request), a server that never answers, a 202 that
// reports some instances as failed, a slow link, and a destination that
// loses an instance yet answers that it stored it. It counts requests and, from the destination's
// answers, how often each SOP instance was sent. StartConnDropper is a
// server that closes a kept-alive connection just as a request reuses it.
package faultproxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Proxy is a reverse proxy with switchable faults.
type Proxy struct {
	URL string

	mu          sync.Mutex
	status      int    // answer every STOW POST with this status (0: pass)
	body        string // body for status answers
	failNext    int    // report this many instances as failed on the next passed STOW
	failReason  int
	failStatus  int           // status of that answer (0: 202)
	bytesPerSec int           // throttle request bodies (0: no limit)
	hold        chan struct{} // non-nil: STOW requests wait until it is closed
	dropNext    bool          // lose the first part of the next STOW of two or more
	dropped     []string      // SOP Instance UIDs lost so
	held        int
	stowPosts   int
	refused     int
	perUID      map[string]int
	down        bool // drop every request's connection, answerless
	downDrops   int  // requests dropped so
	meter       bodyMeter
}

// Start runs the proxy in front of upstream until the test ends.
func Start(t testing.TB, upstream string) *Proxy {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatalf("faultproxy: %v", err)
	}
	p := &Proxy{perUID: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	// Idle connections close before an Orthanc upstream closes them (1 s,
	// measured on 1.10.1): a POST on one it was closing fails,
	// not retried, as a 502 the upstream never gave.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.IdleConnTimeout = 300 * time.Millisecond
	rp.Transport = transport
	t.Cleanup(transport.CloseIdleConnections)
	rp.ModifyResponse = p.modify
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.dropIfDown(w) {
			return
		}
		if !isSTOW(r) {
			rp.ServeHTTP(w, r)
			return
		}
		p.mu.Lock()
		p.stowPosts++
		hold := p.hold
		if hold != nil {
			p.held++
		}
		p.mu.Unlock()
		if hold != nil {
			// Read the request (so that a client giving up is noticed),
			// never answer it until Release, and then as a gateway that
			// timed out would.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-hold:
			case <-r.Context().Done():
			}
			p.mu.Lock()
			p.held--
			p.mu.Unlock()
			if r.Context().Err() == nil {
				http.Error(w, "faultproxy: held, then released", http.StatusGatewayTimeout)
			}
			return
		}
		p.mu.Lock()
		status, body, rate := p.status, p.body, p.bytesPerSec
		if status != 0 {
			p.refused++
		}
		p.mu.Unlock()
		if status != 0 {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
			return
		}
		if rate > 0 {
			r.Body = &throttled{r: r.Body, rate: rate}
		}
		r.Body = &meteredBody{r: r.Body, m: &p.meter}
		p.mu.Lock()
		drop := p.dropNext
		p.mu.Unlock()
		if drop {
			var err error
			if r, err = p.dropFirstPart(r); err != nil {
				http.Error(w, "faultproxy: "+err.Error(), http.StatusBadGateway)
				return
			}
		}
		// The proxy reads STOW responses: ask for them uncompressed.
		r.Header.Del("Accept-Encoding")
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(p.Release) // before Close, which waits for held requests
	p.URL = srv.URL
	return p
}

func isSTOW(r *http.Request) bool {
	return r.Method == http.MethodPost && len(r.URL.Path) >= len("/studies") && r.URL.Path[len(r.URL.Path)-len("/studies"):] == "/studies"
}

// SetDown(true) makes the destination go away: every request, STOW-RS or
// not, has its connection closed without an answer, as a server that
// crashed or a network that broke would. SetDown(false) ends it.
func (p *Proxy) SetDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
}

// DroppedRequests counts the requests SetDown dropped.
func (p *Proxy) DroppedRequests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.downDrops
}

func (p *Proxy) dropIfDown(w http.ResponseWriter) bool {
	p.mu.Lock()
	down := p.down
	if down {
		p.downDrops++
	}
	p.mu.Unlock()
	if !down {
		return false
	}
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return true
		}
	}
	panic(http.ErrAbortHandler) // closes the connection without an answer
}

// SetStatus makes every STOW request fail with status and body (0: pass).
func (p *Proxy) SetStatus(status int, body string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status, p.body = status, body
}

// Hang holds every STOW request from now on: it reads the request and
// does not answer until Release (then 504), or until the client gives
// up: a destination that takes uploads and never answers.
func (p *Proxy) Hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold == nil {
		p.hold = make(chan struct{})
	}
}

// Release ends Hang: the held requests are answered 504 Gateway Timeout,
// the ones after them pass (to the status set by SetStatus, or to the
// destination).
func (p *Proxy) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold != nil {
		close(p.hold)
		p.hold = nil
	}
}

// Held counts the STOW requests Hang is holding now.
func (p *Proxy) Held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// FailNext makes the next STOW response that passes report n of its stored
// instances as failed with reason, with status 202. The destination did
// store them: a re-send is answered as a duplicate.
func (p *Proxy) FailNext(n, reason int) {
	p.FailNextWithStatus(n, reason, http.StatusAccepted)
}

// FailNextWithStatus is FailNext answering with status: with 409 and
// reason 272 it is Google's answer to an instance it already holds with
// other content.
func (p *Proxy) FailNextWithStatus(n, reason, status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failNext, p.failReason, p.failStatus = n, reason, status
}

// Throttle limits request bodies to bytesPerSec (0: no limit).
func (p *Proxy) Throttle(bytesPerSec int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bytesPerSec = bytesPerSec
}

// STOWRequests counts STOW POSTs received, refused ones included.
func (p *Proxy) STOWRequests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stowPosts
}

// Refused counts STOW POSTs answered with the fault status.
func (p *Proxy) Refused() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

// Sends returns how many STOW responses listed each SOP Instance UID as
// stored or failed, that is how often each instance reached the
// destination.
func (p *Proxy) Sends() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.perUID))
	for k, v := range p.perUID {
		out[k] = v
	}
	return out
}

const (
	tagRetrieveURL = "00081190"
	tagFailedSeq   = "00081198"
	tagRefSeq      = "00081199"
	tagFailure     = "00081197"
	tagSOPInstance = "00081155"
)

type dicomJSON map[string]json.RawMessage

type seqAttr struct {
	VR    string           `json:"vr"`
	Value []map[string]any `json:"Value,omitempty"`
}

func (p *Proxy) modify(resp *http.Response) error {
	if !isSTOW(resp.Request) {
		return nil
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	var ds dicomJSON
	if json.Unmarshal(body, &ds) == nil {
		var ref, failed seqAttr
		_ = json.Unmarshal(ds[tagRefSeq], &ref)
		_ = json.Unmarshal(ds[tagFailedSeq], &failed)
		p.mu.Lock()
		for _, items := range [][]map[string]any{ref.Value, failed.Value} {
			for _, it := range items {
				if uid := sopUID(it); uid != "" {
					p.perUID[uid]++
				}
			}
		}
		if uid, _ := resp.Request.Context().Value(droppedKey{}).(string); uid != "" {
			// The lost instance is reported stored, as the server would
			// have had it not lost it.
			ref.VR = "SQ"
			ref.Value = append(ref.Value, map[string]any{tagSOPInstance: map[string]any{"vr": "UI", "Value": []string{uid}}})
			ds[tagRefSeq], _ = json.Marshal(ref)
			body, _ = json.Marshal(ds)
		}
		n, reason, status := p.failNext, p.failReason, p.failStatus
		if n > 0 && len(ref.Value) > 0 {
			p.failNext = 0
		}
		p.mu.Unlock()
		if n > 0 && len(ref.Value) > 0 {
			n = min(n, len(ref.Value))
			for _, it := range ref.Value[:n] {
				delete(it, tagRetrieveURL)
				it[tagFailure] = map[string]any{"vr": "US", "Value": []int{reason}}
				failed.Value = append(failed.Value, it)
			}
			ref.Value = ref.Value[n:]
			failed.VR, ref.VR = "SQ", "SQ"
			ds[tagRefSeq], _ = json.Marshal(ref)
			ds[tagFailedSeq], _ = json.Marshal(failed)
			body, _ = json.Marshal(ds)
			resp.StatusCode, resp.Status = status, fmt.Sprintf("%d %s", status, http.StatusText(status))
			resp.Header.Set("Content-Type", "application/dicom+json")
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return nil
}

func sopUID(item map[string]any) string {
	attr, _ := item[tagSOPInstance].(map[string]any)
	vals, _ := attr["Value"].([]any)
	if len(vals) == 0 {
		return ""
	}
	s, _ := vals[0].(string)
	return s
}

// throttled reads at most rate bytes per second.
type throttled struct {
	r     io.ReadCloser
	rate  int
	start time.Time
	n     int
}

func (t *throttled) Read(b []byte) (int, error) {
	if t.start.IsZero() {
		t.start = time.Now()
	}
	if len(b) > t.rate/10+1 {
		b = b[:t.rate/10+1]
	}
	n, err := t.r.Read(b)
	t.n += n
	if ahead := time.Duration(float64(t.n)/float64(t.rate)*float64(time.Second)) - time.Since(t.start); ahead > 0 {
		time.Sleep(ahead)
	}
	return n, err
}

func (t *throttled) Close() error { return t.r.Close() }
