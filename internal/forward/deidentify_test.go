package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

// readingDestination reads every part as a STOW-RS client would and
// answers each stored, except failUID refused with 0xC000.
type readingDestination struct {
	got     map[string][]byte
	failUID string
}

func (d *readingDestination) Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error) {
	res := &dicomweb.Result{StatusCode: 200}
	for _, p := range parts {
		rc, err := p.Open(ctx)
		if err != nil {
			return nil, fmt.Errorf("open part: %w", err)
		}
		b, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil {
			return nil, fmt.Errorf("stow: part %s: %w", p.SOPInstanceUID, err)
		}
		d.got[p.SOPInstanceUID] = b
		if p.SOPInstanceUID == d.failUID {
			res.Failed = append(res.Failed, dicomweb.FailedInstance{SOPInstanceUID: p.SOPInstanceUID, FailureReason: 0xC000})
			continue
		}
		res.Stored = append(res.Stored, dicomweb.Instance{SOPInstanceUID: p.SOPInstanceUID})
	}
	return res, nil
}

func filePart(uid string, b []byte) dicomweb.Part {
	return dicomweb.Part{SOPInstanceUID: uid, Size: int64(len(b)), Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}}
}

// TestDeidentifiedDestination: parts go out rewritten under their keyed
// UIDs, the answer comes back in the originals' UIDs, and an instance
// the rewrite refuses fails alone, for good, with the reason.
func TestDeidentifiedDestination(t *testing.T) {
	k, d := testDeidentifier(t)
	var parts []dicomweb.Part
	for _, uid := range []string{"1.2.3.1", "1.2.3.2"} {
		var b bytes.Buffer
		if err := dicomgen.WriteInstance(&b, dicomgen.InstanceSpec{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.0", SOPInstanceUID: uid, Rows: 8, Columns: 8}); err != nil {
			t.Fatal(err)
		}
		parts = append(parts, filePart(uid, b.Bytes()))
	}
	inner := &readingDestination{got: map[string][]byte{}, failUID: k.UID("1.2.3.2")}
	reg := prometheus.NewRegistry()
	dst, err := Deidentified(inner, d, DeidentifyOptions{Setting: "DESTINATION_AI_STOW_DEIDENTIFY", DestinationName: "ai", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	res, err := dst.Store(t.Context(), parts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stored) != 1 || res.Stored[0].SOPInstanceUID != "1.2.3.1" || len(res.Failed) != 1 || res.Failed[0].SOPInstanceUID != "1.2.3.2" {
		t.Errorf("answer not in the original UIDs: %+v", res)
	}
	for _, uid := range []string{"1.2.3.1", "1.2.3.2"} {
		b := inner.got[k.UID(uid)]
		if !bytes.Contains(b, []byte(k.UID(uid))) || bytes.Contains(b, []byte(uid+"\x00")) || bytes.Contains(b, []byte("1.2.3\x00")) {
			t.Errorf("%s: the destination did not get the rewritten copy", uid)
		}
	}
	if f := StudyPseudonym(dst); f == nil || f("1.2.3") != k.UID("1.2.3") {
		t.Error("StudyPseudonym does not give the keyed Study Instance UID")
	}

	// A destination that needs every size up front gets the copies' sizes.
	sized := &sizeCheckingDestination{t: t}
	exact, err := Deidentified(sized, d, DeidentifyOptions{Setting: "X", ExactLength: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exact.Store(t.Context(), parts); err != nil || sized.parts != 2 {
		t.Errorf("exact sizes: %v, %d parts", err, sized.parts)
	}

	_, err = dst.Store(t.Context(), []dicomweb.Part{filePart("1.2.3.9", []byte("not DICOM at all"))})
	var ce *conversionError
	if !errors.As(err, &ce) || ce.SOPInstanceUID != "1.2.3.9" || Classify(err) != Permanent ||
		!errors.Is(err, deident.ErrNotDICOM) || !strings.Contains(err.Error(), "DESTINATION_AI_STOW_DEIDENTIFY") {
		t.Errorf("a refused instance: %v (class %v)", err, Classify(err))
	}
	for result, want := range map[string]float64{"written": 2, "refused": 1} {
		if got := testutil.ToFloat64(dst.(*deidentified).copies.WithLabelValues(result)); got != want {
			t.Errorf("stowline_forwarder_deidentified_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}

// TestDeidentifiedMeasureGivesUpAStalledSource: for a destination that
// needs every size up front (ExactLength), measuring a copy whose source
// stops serving mid-body fails the request as a time-out of the source
// once no byte came for the stall time-out (dicomweb.StallTimeout;
// shortened here), not as a refusal of the instance. The count read
// without a time limit: Store held its request place until shutdown.
func TestDeidentifiedMeasureGivesUpAStalledSource(t *testing.T) {
	_, d := testDeidentifier(t)
	var b bytes.Buffer
	if err := dicomgen.WriteInstance(&b, dicomgen.InstanceSpec{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.0", SOPInstanceUID: "1.2.3.1", Rows: 8, Columns: 8}); err != nil {
		t.Fatal(err)
	}
	half := b.Bytes()[:b.Len()/2]
	stalled := dicomweb.Part{SOPInstanceUID: "1.2.3.1", Size: int64(b.Len()), Open: func(ctx context.Context) (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(bytes.NewReader(half), stalledBody{ctx})), nil
	}}
	sized := &sizeCheckingDestination{t: t}
	dst, err := Deidentified(sized, d, DeidentifyOptions{Setting: "X", ExactLength: true})
	if err != nil {
		t.Fatal(err)
	}
	dst.(*deidentified).measureStall = 200 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		_, err := dst.Store(t.Context(), []dicomweb.Part{stalled})
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Store still measures a stalled source after 30 s")
	}
	if !errors.Is(err, context.DeadlineExceeded) || Classify(err) != Transient || errors.As(err, new(*conversionError)) {
		t.Errorf("Store: %v (class %v); want a transient time-out, not a refusal", err, Classify(err))
	}
	if sized.parts != 0 {
		t.Errorf("%d parts reached the destination, want 0", sized.parts)
	}
}

// TestDeidentifiedCountsEachCopyOnce: stowline_forwarder_deidentified_total
// counts each instance of a delivery once, also for a destination that
// needs every length before the request (ExactLength), where each copy
// is written once to measure it and again as it is sent.
func TestDeidentifiedCountsEachCopyOnce(t *testing.T) {
	_, d := testDeidentifier(t)
	instance := func(uid, modality string) dicomweb.Part {
		var b bytes.Buffer
		if err := dicomgen.WriteInstance(&b, dicomgen.InstanceSpec{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.0",
			SOPInstanceUID: uid, Modality: modality, Rows: 8, Columns: 8}); err != nil {
			t.Fatal(err)
		}
		return filePart(uid, b.Bytes())
	}
	good := []dicomweb.Part{instance("1.2.3.1", "CT"), instance("1.2.3.2", "CT"), instance("1.2.3.3", "CT")}
	for _, tc := range []struct {
		name  string
		exact bool
		parts []dicomweb.Part
		want  map[string]float64
	}{
		{"streamed", false, good, map[string]float64{"written": 3}},
		{"exact length", true, good, map[string]float64{"written": 3}},
		// A secondary capture is refused while it is measured: counted
		// once, and nothing is sent.
		{"exact length, burned in", true, []dicomweb.Part{instance("1.2.3.7", "OT")}, map[string]float64{"burned_in": 1}},
		{"exact length, not DICOM", true, []dicomweb.Part{filePart("1.2.3.9", []byte("not DICOM at all"))}, map[string]float64{"refused": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst, err := Deidentified(&readingDestination{got: map[string][]byte{}}, d,
				DeidentifyOptions{Setting: "X", ExactLength: tc.exact, DestinationName: "ai", Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			_, err = dst.Store(t.Context(), tc.parts)
			if want := tc.want["written"] > 0; (err == nil) != want {
				t.Fatalf("Store: %v", err)
			}
			for _, result := range []string{"written", "burned_in", "refused"} {
				if got := testutil.ToFloat64(dst.(*deidentified).copies.WithLabelValues(result)); got != tc.want[result] {
					t.Errorf("stowline_forwarder_deidentified_total{result=%q} = %v, want %v", result, got, tc.want[result])
				}
			}
		})
	}
}

// requestBytes answers every part stored and keeps the bytes each
// request's parts read to.
type requestBytes struct{ requests []int64 }

func (d *requestBytes) Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error) {
	res := &dicomweb.Result{StatusCode: 200}
	var n int64
	for _, p := range parts {
		rc, err := p.Open(ctx)
		if err != nil {
			return nil, err
		}
		m, err := io.Copy(io.Discard, rc)
		_ = rc.Close()
		if err != nil {
			return nil, err
		}
		n += m
		res.Stored = append(res.Stored, dicomweb.Instance{SOPInstanceUID: p.SOPInstanceUID})
	}
	d.requests = append(d.requests, n)
	return res, nil
}

// TestDeidentifiedRequestsWithinMaxBytes: the copies a de-identifying
// destination sends are larger than the files read, and requests were
// cut by the files: with STOW_MAX_BYTES at the destination's limit they
// passed it (a 413, the study dead-lettered at once).
func TestDeidentifiedRequestsWithinMaxBytes(t *testing.T) {
	_, d := testDeidentifier(t)
	src := &memSource{data: map[string][]byte{}}
	var size int64
	for i := range 8 {
		uid := fmt.Sprintf("1.2.3.%d", i+1)
		var b bytes.Buffer
		if err := dicomgen.WriteInstance(&b, dicomgen.InstanceSpec{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.0", SOPInstanceUID: uid, Rows: 64, Columns: 64}); err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i)
		src.instances = append(src.instances, orthancapi.Instance{ID: id, SOPInstanceUID: uid, SeriesInstanceUID: "1.2.3.0", FileSize: int64(b.Len())})
		src.data[id] = b.Bytes()
		size = max(size, int64(b.Len()))
	}
	rec := &requestBytes{}
	dst, err := Deidentified(rec, d, DeidentifyOptions{Setting: "X"})
	if err != nil {
		t.Fatal(err)
	}
	f := newForwarder(t, src, "http://127.0.0.1:1", nil, func(o *Options) { o.Destination = dst; o.MaxInstances = 8 })
	// Two files fit a request, framing aside.
	budget := 2 * size
	f.opts.MaxBytes = budget + dicomweb.MaxFraming(f.requestSize(len(src.instances)))
	if _, err := f.transfer(t.Context(), &Attempt{Event: testEvent()}); err != nil {
		t.Fatal(err)
	}
	for i, n := range rec.requests {
		if n > budget {
			t.Errorf("request %d: %d bytes of copies, over the %d STOW_MAX_BYTES leaves them", i, n, budget)
		}
	}
}

// panickingReads is a source whose files panic as they are read: the
// de-identifier's rewrite reads them in a goroutine of its own.
type panickingReads struct{ *memSource }

func (panickingReads) OpenInstanceFile(context.Context, string) (io.ReadCloser, int64, error) {
	return io.NopCloser(panickingReader{}), 1024, nil
}

type panickingReader struct{}

func (panickingReader) Read([]byte) (int, error) { panic("a parser bug") }

// A panic while de-identifying ended the process, with every study in
// flight; it is the study's crash failure instead (dead-lettered at once,
// with the panic).
func TestDeidentifiedPanicIsACrash(t *testing.T) {
	_, d := testDeidentifier(t)
	k := &sink{}
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	client, err := dicomweb.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := Deidentified(client, d, DeidentifyOptions{Setting: "X"})
	if err != nil {
		t.Fatal(err)
	}
	src := panickingReads{newMemSource(2)}
	f := newForwarder(t, nil, srv.URL, nil, func(o *Options) {
		o.SourceFor = func(string) (Source, error) { return src, nil }
		o.Destination = dst
	})
	_, err = f.transfer(t.Context(), &Attempt{Event: testEvent()})
	if Classify(err) != Crash || !strings.Contains(err.Error(), "a parser bug") {
		t.Fatalf("err %v (class %s), want a crash naming the panic", err, Classify(err))
	}
}

// sizeCheckingDestination checks that every part's Size is the length of
// what it opens to.
type sizeCheckingDestination struct {
	t     *testing.T
	parts int
}

func (d *sizeCheckingDestination) Store(ctx context.Context, parts []dicomweb.Part) (*dicomweb.Result, error) {
	for _, p := range parts {
		rc, err := p.Open(ctx)
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil || p.Size != int64(len(b)) {
			d.t.Errorf("part %s: Size %d, copy %d bytes (%v)", p.SOPInstanceUID, p.Size, len(b), err)
		}
		d.parts++
	}
	return &dicomweb.Result{}, nil
}

// keyedListing is a de-identifying destination's QIDO-RS listing: it
// answers only for the study's pseudonym, with the keyed SOP Instance
// UIDs it holds.
type keyedListing struct {
	study  string
	listed []string
	asked  []string
}

func (v *keyedListing) StudyInstanceUIDs(_ context.Context, study string, _ dicomweb.Expected) ([]string, error) {
	v.asked = append(v.asked, study)
	if study != v.study {
		return nil, nil
	}
	return v.listed, nil
}

// TestVerifyDeidentified: STOW_VERIFY=qido with STOW_DEIDENTIFY=basic
// asks for the study's pseudonym, never the original UID, and matches
// the keyed UIDs listed to the instances sent.
func TestVerifyDeidentified(t *testing.T) {
	k, d := testDeidentifier(t)
	dst, err := Deidentified(&readingDestination{got: map[string][]byte{}}, d, DeidentifyOptions{Setting: "X"})
	if err != nil {
		t.Fatal(err)
	}
	sent := []dicomweb.Part{{SOPInstanceUID: "1.2.3.1"}, {SOPInstanceUID: "1.2.3.2"}, {SOPInstanceUID: "1.2.3.3"}}
	for _, tt := range []struct {
		name    string
		listed  []string
		missing []string
	}{
		{name: "all listed", listed: []string{k.UID("1.2.3.3"), k.UID("1.2.3.1"), k.UID("1.2.3.2")}},
		{name: "one not listed", listed: []string{k.UID("1.2.3.1"), k.UID("1.2.3.3")}, missing: []string{"1.2.3.2"}},
		{name: "originals listed do not count", listed: []string{"1.2.3.1", "1.2.3.2", "1.2.3.3"}, missing: []string{"1.2.3.1", "1.2.3.2", "1.2.3.3"}},
		{name: "other keyed UIDs do not count", listed: []string{k.UID("1.2.3.9"), k.UID("1.2.3.1")}, missing: []string{"1.2.3.2", "1.2.3.3"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := &keyedListing{study: k.UID("1.2.3"), listed: tt.listed}
			reg := prometheus.NewRegistry()
			f := newForwarder(t, &memSource{}, "http://127.0.0.1:1", nil, func(o *Options) {
				o.Destination, o.Verifier, o.Registerer = dst, v, reg
			})
			missing, err := f.verify(t.Context(), "1.2.3", sent, &Report{}, f.log)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range missing {
				got = append(got, p.SOPInstanceUID)
			}
			if !slices.Equal(got, tt.missing) {
				t.Errorf("missing %v, want %v", got, tt.missing)
			}
			if !slices.Equal(v.asked, []string{k.UID("1.2.3")}) {
				t.Errorf("asked the destination for %v, want only the study's pseudonym", v.asked)
			}
			result := "verified"
			if len(tt.missing) > 0 {
				result = "missing"
			}
			if n := testutil.ToFloat64(f.m.verifications.WithLabelValues(result)); n != 1 {
				t.Errorf("verifications{result=%q} = %v, want 1", result, n)
			}
		})
	}
}

// listingDestination is a destination that can also be asked what it
// holds (QIDO-RS), as *dicomweb.Client is.
type listingDestination struct {
	*readingDestination
	*keyedListing
}

// TestSettleUnsureAsksBehindTheDeidentifier: without STOW_VERIFY, a 409
// that only its status makes a conflict (Google's 0x0110 for an
// instance it holds) is settled by asking the destination behind the
// de-identifier, for the study's pseudonym: the instance it lists is
// held (a conflict), the other failed. Not asked, both were failed and
// retried, though the destination held one with other content.
func TestSettleUnsureAsksBehindTheDeidentifier(t *testing.T) {
	k, d := testDeidentifier(t)
	listing := &keyedListing{study: k.UID("1.2.3"), listed: []string{k.UID("1.2.3.1")}}
	dst, err := Deidentified(listingDestination{&readingDestination{got: map[string][]byte{}}, listing}, d, DeidentifyOptions{Setting: "X"})
	if err != nil {
		t.Fatal(err)
	}
	f := newForwarder(t, &memSource{}, "http://127.0.0.1:1", nil, func(o *Options) {
		o.Destination, o.Verifier = dst, nil
	})
	unsure := []conflicted{
		{part: dicomweb.Part{SOPInstanceUID: "1.2.3.1"}, reason: dicomweb.FailureProcessing},
		{part: dicomweb.Part{SOPInstanceUID: "1.2.3.2"}, reason: dicomweb.FailureProcessing},
	}
	held, failed := f.settleUnsure(t.Context(), testEvent(), unsure, slog.New(slog.DiscardHandler))
	if len(held) != 1 || held[0].part.SOPInstanceUID != "1.2.3.1" || len(failed) != 1 || failed[0].part.SOPInstanceUID != "1.2.3.2" {
		t.Errorf("held %v, failed %v; want 1.2.3.1 held, 1.2.3.2 failed", held, failed)
	}
	if !slices.Equal(listing.asked, []string{k.UID("1.2.3")}) {
		t.Errorf("asked the destination for %v, want only the study's pseudonym", listing.asked)
	}
}

// answeringDestination answers every request with a copy of res, or
// with a copy of it inside an HTTPError of status (0: none).
type answeringDestination struct {
	res    dicomweb.Result
	status int
}

func (d answeringDestination) Store(context.Context, []dicomweb.Part) (*dicomweb.Result, error) {
	res := d.res
	res.Stored, res.Failed = slices.Clone(res.Stored), slices.Clone(res.Failed)
	res.OtherFailures, res.Warnings = slices.Clone(res.OtherFailures), slices.Clone(res.Warnings)
	if d.status != 0 {
		return nil, &dicomweb.HTTPError{StatusCode: d.status, Result: &res}
	}
	return &res, nil
}

// TestDeidentifiedAnswerMappedBack: every instance a de-identifying
// destination's answer names under its keyed UID (stored, failed,
// other failures, warnings), in a 200 or in a 409's error, is named
// back by its original UID, which the forwarder's accounting knows.
func TestDeidentifiedAnswerMappedBack(t *testing.T) {
	k, d := testDeidentifier(t)
	keyed := dicomweb.Result{
		StatusCode:    202,
		Stored:        []dicomweb.Instance{{SOPInstanceUID: k.UID("1.2.3.1")}},
		Failed:        []dicomweb.FailedInstance{{SOPInstanceUID: k.UID("1.2.3.2"), FailureReason: 0xC000}},
		OtherFailures: []dicomweb.FailedInstance{{SOPInstanceUID: k.UID("1.2.3.3"), FailureReason: 0xA700}},
		Warnings:      []dicomweb.Warning{{SOPInstanceUID: k.UID("1.2.3.4"), WarningReason: 0xB000}},
	}
	var parts []dicomweb.Part
	for _, uid := range []string{"1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"} {
		parts = append(parts, filePart(uid, nil))
	}
	for _, tt := range []struct {
		name   string
		status int
	}{{"answer", 0}, {"409", http.StatusConflict}} {
		t.Run(tt.name, func(t *testing.T) {
			dst, err := Deidentified(answeringDestination{res: keyed, status: tt.status}, d, DeidentifyOptions{Setting: "X"})
			if err != nil {
				t.Fatal(err)
			}
			res, err := dst.Store(t.Context(), parts)
			if tt.status != 0 {
				var he *dicomweb.HTTPError
				if !errors.As(err, &he) || he.Result == nil {
					t.Fatalf("Store: %v, want the HTTPError with its result", err)
				}
				res = he.Result
			} else if err != nil {
				t.Fatal(err)
			}
			got := []string{res.Stored[0].SOPInstanceUID, res.Failed[0].SOPInstanceUID, res.OtherFailures[0].SOPInstanceUID, res.Warnings[0].SOPInstanceUID}
			if want := []string{"1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"}; !slices.Equal(got, want) {
				t.Errorf("answer names %v, want %v", got, want)
			}
		})
	}
}

// TestRewriteRefusalsArePermanent: what the rewrite refuses for the
// instance's own sake (not DICOM, malformed, an encoding it cannot read,
// a header too large, burned-in text) refuses that instance for good; a
// read error of the source does not.
func TestRewriteRefusalsArePermanent(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{deident.ErrNotDICOM, true},
		{deident.ErrMalformed, true},
		{deident.ErrUnsupportedSyntax, true},
		{deident.ErrTooLarge, true},
		{deident.ErrBurnedIn, true},
		{io.ErrUnexpectedEOF, false},
		{context.DeadlineExceeded, false},
	} {
		if got := refusal(fmt.Errorf("rewrite: %w", tt.err)); got != tt.want {
			t.Errorf("refusal(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

type recordingProber struct{ got []string }

func (p *recordingProber) Probe(_ context.Context, uid string) error {
	p.got = append(p.got, uid)
	return nil
}

// TestProbeDeidentified: the circuit breaker's probe of a de-identifying
// destination names the study's pseudonym, never its original Study
// Instance UID; another destination is probed as it is.
func TestProbeDeidentified(t *testing.T) {
	k, d := testDeidentifier(t)
	dst, err := Deidentified(&readingDestination{got: map[string][]byte{}}, d, DeidentifyOptions{Setting: "X"})
	if err != nil {
		t.Fatal(err)
	}
	const original = "1.2.826.0.1.3680043.8.498.1"
	for _, tt := range []struct {
		name string
		dst  Destination
		want string
	}{
		{"de-identifying", dst, k.UID(original)},
		{"plain", &readingDestination{got: map[string][]byte{}}, original},
	} {
		rec := &recordingProber{}
		f := newForwarder(t, &memSource{}, "http://127.0.0.1:1", nil, func(o *Options) {
			o.Destination = tt.dst
			o.Breaker = BreakerOptions{Failures: 1, ProbeInterval: time.Second, MaxProbeInterval: time.Second, Prober: rec}
		})
		if err := f.breaker.prober.Probe(t.Context(), original); err != nil {
			t.Fatal(err)
		}
		if len(rec.got) != 1 || rec.got[0] != tt.want {
			t.Errorf("%s: probed %v, want %s", tt.name, rec.got, tt.want)
		}
	}
}

// testDeidentifier is the basic profile under a fixed test key.
func testDeidentifier(t *testing.T) (*deident.Keyer, *deident.Deidentifier) {
	t.Helper()
	k, err := deident.NewKeyer([]byte(strings.Repeat("s", 32)), "P-")
	if err != nil {
		t.Fatal(err)
	}
	d, err := deident.New(k, deident.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return k, d
}

// TestDeidentifiedSeriesFromTheStart: every result of
// stowline_forwarder_deidentified_total is exported, at 0, before the
// first copy. docs/metrics.md's alert on it is an increase() over a day,
// which a series that appears only with its first count (at 1) never
// shows: the first burned-in instance after each start went unalerted.
func TestDeidentifiedSeriesFromTheStart(t *testing.T) {
	_, d := testDeidentifier(t)
	reg := prometheus.NewRegistry()
	if _, err := Deidentified(&readingDestination{got: map[string][]byte{}}, d, DeidentifyOptions{Setting: "X", DestinationName: "ai", Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "stowline_forwarder_deidentified_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					got[l.GetValue()] = true
				}
			}
		}
	}
	for _, result := range []string{"written", "burned_in", "refused"} {
		if !got[result] {
			t.Errorf("stowline_forwarder_deidentified_total{result=%q} is not exported before the first copy", result)
		}
	}
}
