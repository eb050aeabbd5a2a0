package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/flow"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/orthancapi"
)

// A destination that answers 429 above n requests in flight: the studies
// of a process, sent together, share one limit that settles near n, and
// every study is stored, none dead-lettered.
func TestRequestLimitSettlesBelowAThrottle(t *testing.T) {
	const n, studies, instances = 4, 6, 120
	// 100 ms a request, well above what a loaded host adds to one (tens
	// of milliseconds under -race): at 20 ms that noise alone doubled a
	// round's time, the limiter shrank it for latency, and a decrease
	// right after a 429's halving ended the run at 1.
	sink := stowsink.New(stowsink.Options{Latency: 100 * time.Millisecond})
	gate := faultproxy.LimitInFlight(sink, n, 0)
	srv := httptest.NewServer(gate)
	t.Cleanup(srv.Close)
	reg := prometheus.NewRegistry()
	src := studySlices{newDICOMSource(t, studies*instances), instances}
	f := newForwarder(t, nil, srv.URL, nil, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.MaxInstances = 2
		o.RequestConcurrency = 16
		o.Registerer = reg
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, studies)
	for i := range studies {
		wg.Go(func() {
			ev := testEvent()
			ev.OrthancStudyID = strconv.Itoa(i)
			rep, err := f.transfer(ctx, &Attempt{Event: ev})
			if err == nil && rep.Instances != instances {
				err = fmt.Errorf("%d of %d instances confirmed", rep.Instances, instances)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("studies not forwarded: %v", err)
	}
	if got := sink.Distinct(); got != studies*instances {
		t.Errorf("%d instances at the sink, want %d", got, studies*instances)
	}
	st := f.Status()
	limit := st.Requests
	requests := sink.Stats().Requests
	t.Logf("limit %d at the end; %d requests stored, %d refused with 429, at most %d at once", limit, requests, gate.Refused(), gate.Most())
	if limit < n/2 || limit > n+1 {
		t.Errorf("limit %d at the end, want between %d and %d", limit, n/2, n+1)
	}
	if r := gate.Refused(); float64(r) > 0.1*float64(requests) {
		t.Errorf("%d requests refused for %d stored, want at most a tenth", r, requests)
	}
	// The status page shows the limit, its ceiling and its last change.
	if st.Ceiling != 16 || st.LimitReason == "" || st.LimitChanged.IsZero() {
		t.Errorf("status %+v: want ceiling 16 and the last change of the limit", st)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "stowline_forwarder_stow_parallel_limit" {
			if got := mf.GetMetric()[0].GetGauge().GetValue(); int(got) != limit {
				t.Errorf("stowline_forwarder_stow_parallel_limit = %v, want %d", got, limit)
			}
		}
	}
}

// studySlices serves study i (its Orthanc ID is "i") as the i-th slice of
// per instances of one source.
type studySlices struct {
	*dicomSource
	per int
}

func (s studySlices) StudyInstances(_ context.Context, id string) ([]orthancapi.Instance, error) {
	i, err := strconv.Atoi(id)
	if err != nil {
		return nil, err
	}
	return s.instances[i*s.per : (i+1)*s.per], nil
}

func TestOverloadClassification(t *testing.T) {
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want flow.Reason
		ra   time.Duration
	}{
		{"429 with Retry-After", t.Context(), &dicomweb.HTTPError{StatusCode: http.StatusTooManyRequests, RetryAfter: 3 * time.Second}, flow.Overload429, 3 * time.Second},
		{"503", t.Context(), fmt.Errorf("store: %w", &dicomweb.HTTPError{StatusCode: http.StatusServiceUnavailable}), flow.Overload503, 0},
		{"503 with Retry-After", t.Context(), &dicomweb.HTTPError{StatusCode: http.StatusServiceUnavailable, RetryAfter: 7 * time.Second}, flow.Overload503, 7 * time.Second},
		{"408", t.Context(), &dicomweb.HTTPError{StatusCode: http.StatusRequestTimeout}, flow.Timeout, 0},
		{"504", t.Context(), &dicomweb.HTTPError{StatusCode: http.StatusGatewayTimeout}, flow.Timeout, 0},
		{"request given up (no byte moved, no answer)", t.Context(), fmt.Errorf("stow: %w: %w", dicomweb.ErrNoAnswer, context.DeadlineExceeded), flow.Timeout, 0},
		{"network time-out", t.Context(), fmt.Errorf("stow: %w: %w", dicomweb.ErrNoAnswer, &net.OpError{Op: "read", Err: timeoutErr{}}), flow.Timeout, 0},
		{"source time-out", t.Context(), fmt.Errorf("stow: part 3: open: %w", &net.OpError{Op: "read", Err: timeoutErr{}}), "", 0},
		{"500", t.Context(), &dicomweb.HTTPError{StatusCode: http.StatusInternalServerError}, "", 0},
		{"400", t.Context(), &dicomweb.HTTPError{StatusCode: http.StatusBadRequest}, "", 0},
		{"cancelled", cancelled, &dicomweb.HTTPError{StatusCode: http.StatusTooManyRequests}, "", 0},
		{"none", t.Context(), nil, "", 0},
	}
	for _, tt := range tests {
		reason, ra, ok := overload(tt.ctx, tt.err)
		if reason != tt.want || ra != tt.ra || ok != (tt.want != "") {
			t.Errorf("%s: overload = %q, %s, %v; want %q, %s", tt.name, reason, ra, ok, tt.want, tt.ra)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// A study is split so that its requests fill the current limit (16, the
// ceiling, at first), shared by the studies sending now.
func TestRequestSizeFollowsTheLimit(t *testing.T) {
	f := newForwarder(t, nil, "http://127.0.0.1:1", nil, func(o *Options) {
		o.MaxInstances = 100
		o.RequestConcurrency = 16
	})
	for _, tt := range []struct{ sending, n, want int }{
		{1, 300, 19}, // 16 requests
		{2, 300, 38}, // 8 each
		{8, 300, 75}, // 2 each
		{16, 300, 100},
		{1, 20, 2},
	} {
		f.sending.Store(int32(tt.sending))
		if got := f.requestSize(tt.n); got != tt.want {
			t.Errorf("requestSize(%d) with %d studies sending, limit %d = %d, want %d", tt.n, tt.sending, f.limit.Limit(), got, tt.want)
		}
	}
}

// A 429 whose STOW-RS answer names its instances (one stored, one
// failed for processing) is sorted per instance, and still tells the limiter: the
// answer's Retry-After was dropped, and the limit counted it a success.
func TestOverloadAnswerNamingInstancesTellsTheLimiter(t *testing.T) {
	var requests atomic.Int32
	var first, second time.Time // written before the answers that order them
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Load() == 0 {
			first = time.Now()
		} else {
			second = time.Now()
		}
		uids := partUIDs(r)
		var stored []string
		failed := ""
		for _, uid := range uids {
			if uid == "1.2.3.2" && requests.Load() == 0 {
				failed = fmt.Sprintf(`,"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[%d]}}]}`, uid, dicomweb.FailureProcessing)
				continue
			}
			stored = append(stored, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]}}`, uid))
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		if requests.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		}
		fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}%s}`, strings.Join(stored, ","), failed)
	}))
	t.Cleanup(srv.Close)
	f := newForwarder(t, newMemSource(2), srv.URL, nil, func(o *Options) {
		o.RequestConcurrency = 1
		o.InstanceRetries, o.InstanceRetryDelay = 1, 10*time.Millisecond
	})
	rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
	if err != nil || rep.Instances != 2 {
		t.Fatalf("%d instances confirmed, err %v; want 2, nil", rep.Instances, err)
	}
	if reason, _ := f.limit.LastChange(); reason != flow.Overload429 && reason != flow.RetryAfter {
		t.Errorf("the limiter's last change %q, want the 429 or its Retry-After", reason)
	}
	if d := second.Sub(first); d < 900*time.Millisecond {
		t.Errorf("the failed instance sent again %v after the 429, before its Retry-After of 1 s", d)
	}
}

// A study that is not sending (listing its instances, read by the routing
// rules) takes no share of the limit: a study sent meanwhile is split for
// the whole limit, 16 requests of 2, not for half of it, 8 of 4. Before,
// a study counted among those sending from the start of its attempt.
func TestStudyNotSendingTakesNoShare(t *testing.T) {
	const instances, want = 32, 16
	tests := []struct {
		name string
		// blocked makes the first study wait at this step, saying so on
		// entered, until release is closed.
		blocked func(f *Forwarder, src *memSource, entered chan<- struct{}, release <-chan struct{})
	}{
		{"routing rules", func(f *Forwarder, _ *memSource, entered chan<- struct{}, release <-chan struct{}) {
			f.opts.Router = blockingRouter{study: "first", entered: entered, release: release}
		}},
		{"listing", func(f *Forwarder, src *memSource, entered chan<- struct{}, release <-chan struct{}) {
			f.opts.SourceFor = func(string) (Source, error) {
				return blockingListing{memSource: src, study: "first", entered: entered, release: release}, nil
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var k sink
			srv := httptest.NewServer(k.handler(nil))
			t.Cleanup(srv.Close)
			src := newMemSource(instances)
			f := newForwarder(t, src, srv.URL, nil, func(o *Options) {
				o.MaxInstances = 4
				o.RequestConcurrency = 16
			})
			entered, release := make(chan struct{}), make(chan struct{})
			tt.blocked(f, src, entered, release)
			first := make(chan error, 1)
			go func() {
				ev := testEvent()
				ev.OrthancStudyID = "first"
				_, err := f.transfer(t.Context(), &Attempt{Event: ev})
				first <- err
			}()
			<-entered
			ev := testEvent()
			ev.OrthancStudyID, ev.StudyInstanceUID = "second", "1.2.4"
			rep, err := f.transfer(t.Context(), &Attempt{Event: ev})
			close(release)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Requests != want {
				t.Errorf("the second study went as %d requests while the first was not sending, want %d (the whole limit)", rep.Requests, want)
			}
			if err := <-first; err != nil {
				t.Errorf("first study: %v", err)
			}
		})
	}
}

// blockingRouter selects every instance, waiting first for release on
// study's.
type blockingRouter struct {
	study   string
	entered chan<- struct{}
	release <-chan struct{}
}

func (r blockingRouter) Select(ctx context.Context, _, studyID string, in []orthancapi.Instance) ([]orthancapi.Instance, error) {
	if studyID == r.study {
		close(r.entered)
		select {
		case <-r.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return in, nil
}

// blockingListing is a memSource whose listing of study waits for
// release.
type blockingListing struct {
	*memSource
	study   string
	entered chan<- struct{}
	release <-chan struct{}
}

func (s blockingListing) StudyInstances(ctx context.Context, id string) ([]orthancapi.Instance, error) {
	if id == s.study {
		close(s.entered)
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.memSource.StudyInstances(ctx, id)
}

// A study's requests wait for a place by its lane: stat first, low last.
func TestRequestPriority(t *testing.T) {
	tests := []struct {
		lane events.Priority
		want flow.Priority
	}{
		{events.PriorityStat, flow.High},
		{events.PriorityRoutine, flow.Normal},
		{"", flow.Normal},
		{events.PriorityLow, flow.Low},
	}
	for _, tt := range tests {
		if got := requestPriority(tt.lane); got != tt.want {
			t.Errorf("requestPriority(%q) = %d, want %d", tt.lane, got, tt.want)
		}
	}
}

// A study's lane reaches the limiter: with one place, held by a low
// study's request while its next waits, a stat study pulled meanwhile has
// all its requests served before the low study's next. In turn, as
// before the lanes had priorities, the two would alternate.
func TestStatRequestsServedBeforeLowOnes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dst := &steppedDestination{arrived: make(chan string), proceed: make(chan struct{})}
		src := laneStudies{newMemSource(6)}
		f := newForwarder(t, nil, "http://127.0.0.1:1", nil, func(o *Options) {
			o.SourceFor = func(string) (Source, error) { return src, nil }
			o.Destination = dst
			o.MaxInstances = 1
			o.RequestConcurrency = 1
		})
		var wg sync.WaitGroup
		handle := func(study string, seq uint64, lane events.Priority) {
			ev := testEvent()
			ev.OrthancStudyID = study + "-4f66fb14-03f4081b-f9341db2-53925988"
			data, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			m := &laneMsg{data: data, meta: &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: seq}, NumDelivered: 1, Timestamp: time.Now()}}
			wg.Go(func() {
				f.handle(t.Context(), m, lane)
				if got := m.settled(); got != "ack" {
					t.Errorf("study %s settled by %q, want an ack", study, got)
				}
			})
		}
		handle(lowStudy, 1, events.PriorityLow)
		order := []string{<-dst.arrived}
		synctest.Wait() // the low study's next request waits for the place
		handle("00000002", 2, events.PriorityStat)
		synctest.Wait() // so does the stat study's first
		dst.proceed <- struct{}{}
		for range 5 {
			order = append(order, <-dst.arrived)
			synctest.Wait() // every study waiting for the place has asked for it
			dst.proceed <- struct{}{}
		}
		wg.Wait()
		want := []string{"low", "stat", "stat", "low", "low", "low"}
		if !slices.Equal(order, want) {
			t.Errorf("requests served for %v, want %v", order, want)
		}
	})
}

// laneStudies serves the study whose Orthanc ID starts with lowStudy as
// the first 4 instances of a memSource, any other as the rest.
type laneStudies struct{ *memSource }

const lowStudy = "00000001"

func (s laneStudies) StudyInstances(_ context.Context, id string) ([]orthancapi.Instance, error) {
	if strings.HasPrefix(id, lowStudy) {
		return s.instances[:4], nil
	}
	return s.instances[4:], nil
}

// steppedDestination says on arrived which study (of laneStudies) each
// request is for, and stores it once told on proceed.
type steppedDestination struct {
	arrived chan string
	proceed chan struct{}
}

func (d *steppedDestination) Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error) {
	study := "stat"
	if n, _ := strconv.Atoi(strings.TrimPrefix(parts[0].SOPInstanceUID, "1.2.3.")); n <= 4 {
		study = "low"
	}
	select {
	case d.arrived <- study:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case <-d.proceed:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res := &dicomweb.Result{StatusCode: http.StatusOK, BytesSent: 1024 * int64(len(parts))}
	for _, p := range parts {
		res.Stored = append(res.Stored, dicomweb.Instance{SOPInstanceUID: p.SOPInstanceUID})
	}
	return res, nil
}

// laneMsg is a delivery handed to Forwarder.handle without JetStream; it
// keeps how it was settled.
type laneMsg struct {
	jetstream.Msg
	data []byte
	meta *jetstream.MsgMetadata
	mu   sync.Mutex
	how  string
}

func (m *laneMsg) Metadata() (*jetstream.MsgMetadata, error) { return m.meta, nil }
func (m *laneMsg) Data() []byte                              { return m.data }
func (m *laneMsg) Headers() nats.Header                      { return nil }
func (m *laneMsg) Subject() string                           { return "stowline.study.stable.a" }
func (m *laneMsg) InProgress() error                         { return nil }
func (m *laneMsg) DoubleAck(context.Context) error           { return m.settle("ack") }
func (m *laneMsg) Ack() error                                { return m.settle("ack") }
func (m *laneMsg) Nak() error                                { return m.settle("nak") }
func (m *laneMsg) NakWithDelay(time.Duration) error          { return m.settle("nak") }
func (m *laneMsg) Term() error                               { return m.settle("term") }
func (m *laneMsg) TermWithReason(string) error               { return m.settle("term") }

func (m *laneMsg) settle(how string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.how = how
	return nil
}

func (m *laneMsg) settled() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.how
}
