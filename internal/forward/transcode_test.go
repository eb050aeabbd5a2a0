package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/tracing"
	"github.com/stowline/stowline/orthancapi"
)

const (
	tsImplicit = "1.2.840.10008.1.2"
	tsExplicit = "1.2.840.10008.1.2.1"
	tsBig      = "1.2.840.10008.1.2.2"
	tsJPEG     = "1.2.840.10008.1.2.4.50"
	tsJ2K      = "1.2.840.10008.1.2.4.90"
	tsDeflFr   = "1.2.840.10008.1.2.8.1"
)

// fakeFile is a stand-in DICOM file: preamble, "DICM", then its SOP
// Instance UID and transfer syntax as text.
func fakeFile(uid, ts string) []byte {
	return append(append(make([]byte, dicmOffset), "DICM"...), uid+"|"+ts...)
}

// syntaxSource is an Orthanc that converts like Debian's Orthanc 1.10.1:
// JPEG 2000 fails with a 500, Deflated Image Frame Compression gives an
// empty answer.
type syntaxSource struct {
	instances []orthancapi.Instance
	syntax    map[string]string // Orthanc ID: transfer syntax
	// fail are SOP Instance UIDs whose conversion fails with a 500, as
	// Orthanc answers when it cannot decode the source; fault are those
	// whose conversion meets a 500 of another kind (a database fault).
	fail, fault map[string]bool
	// cut are those whose converted answer breaks off after 40 bytes,
	// as net/http reports a body shorter than its Content-Length (Orthanc
	// restarted, a proxy's time-out).
	cut map[string]bool
	// stall are those whose converted answer stops after 40 bytes and
	// waits, as an Orthanc stalled mid-body, until its request's context
	// ends (net/http's body then fails).
	stall map[string]bool
	// unrecorded are those whose syntax Orthanc did not record (no
	// TransferSyntax in their metadata).
	unrecorded map[string]bool
	// refuse are those whose conversion Orthanc refuses with this
	// status; junk those it answers with a page that is no DICOM file
	// (a proxy's error page with 200).
	refuse    map[string]int
	junk      map[string]bool
	mu        sync.Mutex
	converted int
}

func newSyntaxSource(syntaxes ...string) *syntaxSource {
	s := &syntaxSource{syntax: map[string]string{}}
	for i, ts := range syntaxes {
		id := fmt.Sprintf("%08x-00000000-00000000-00000000-00000000", i)
		uid := fmt.Sprintf("1.2.3.%d", i+1)
		s.instances = append(s.instances, orthancapi.Instance{ID: id, SOPInstanceUID: uid, FileSize: int64(len(fakeFile(uid, ts)))})
		s.syntax[id] = ts
	}
	return s
}

func (s *syntaxSource) uid(id string) string {
	for _, in := range s.instances {
		if in.ID == id {
			return in.SOPInstanceUID
		}
	}
	return ""
}

func (s *syntaxSource) StudyInstances(context.Context, string) ([]orthancapi.Instance, error) {
	return s.instances, nil
}

func (s *syntaxSource) OpenInstanceFile(_ context.Context, id string) (io.ReadCloser, int64, error) {
	b := fakeFile(s.uid(id), s.syntax[id])
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

func (s *syntaxSource) InstanceMetadata(_ context.Context, id string) (orthancapi.InstanceMetadata, error) {
	if s.unrecorded[s.uid(id)] {
		return orthancapi.InstanceMetadata{}, nil
	}
	return orthancapi.InstanceMetadata{TransferSyntaxUID: s.syntax[id]}, nil
}

func (s *syntaxSource) OpenTranscodedInstance(ctx context.Context, id, ts string) (io.ReadCloser, error) {
	s.mu.Lock()
	s.converted++
	s.mu.Unlock()
	switch {
	case s.fail[s.uid(id)]:
		return nil, cannotTranscodeAnswer(id, ts)
	case s.fault[s.uid(id)]:
		return nil, &orthancapi.Error{Method: "POST", Path: "/instances/" + id + "/modify", StatusCode: 500, OrthancMessage: "Database plugin error", OrthancDetails: "database is locked"}
	case s.cut[s.uid(id)]:
		return io.NopCloser(io.MultiReader(bytes.NewReader(fakeFile(s.uid(id), ts)[:40]), iotest.ErrReader(io.ErrUnexpectedEOF))), nil
	case s.stall[s.uid(id)]:
		return io.NopCloser(io.MultiReader(bytes.NewReader(fakeFile(s.uid(id), ts)[:40]), stalledBody{ctx})), nil
	case s.refuse[s.uid(id)] != 0:
		return nil, &orthancapi.Error{Method: "POST", Path: "/instances/" + id + "/modify", StatusCode: s.refuse[s.uid(id)]}
	case s.junk[s.uid(id)]:
		return io.NopCloser(strings.NewReader("<html><body>" + strings.Repeat("upstream answered late ", 20) + "</body></html>")), nil
	}
	switch s.syntax[id] {
	case tsJ2K:
		return nil, cannotTranscodeAnswer(id, ts)
	case tsDeflFr:
		return io.NopCloser(strings.NewReader("")), nil
	}
	return io.NopCloser(bytes.NewReader(fakeFile(s.uid(id), ts))), nil
}

// cannotTranscodeAnswer is Orthanc 1.10's answer to a conversion it
// cannot make (seen with nm-jpeg2000.dcm of the shared samples).
func cannotTranscodeAnswer(id, ts string) error {
	return &orthancapi.Error{Method: "POST", Path: "/instances/" + id + "/modify", StatusCode: 500,
		OrthancMessage: "Internal error", OrthancDetails: "Cannot transcode to transfer syntax: " + ts}
}

// syntaxSink is a STOW-RS destination that stores only Explicit VR Little
// Endian and refuses anything else with 0xC122, as a 202 with both
// sequences.
type syntaxSink struct {
	mu       sync.Mutex
	stored   map[string]string // SOP Instance UID: transfer syntax
	requests int
	// needLength: refuse a request without Content-Length (AWS).
	needLength bool
}

func (k *syntaxSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	k.requests++
	k.mu.Unlock()
	if k.needLength && r.ContentLength <= 0 {
		http.Error(w, "length required", http.StatusLengthRequired)
		return
	}
	_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	mr := multipart.NewReader(r.Body, params["boundary"])
	var stored, failed []string
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		b, _ := io.ReadAll(p)
		uid, ts, _ := strings.Cut(string(b[dicmOffset+4:]), "|")
		item := `{"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00081155":{"vr":"UI","Value":["` + uid + `"]}`
		if ts != tsExplicit {
			failed = append(failed, item+`,"00081197":{"vr":"US","Value":[49442]}}`)
			continue
		}
		k.mu.Lock()
		k.stored[uid] = ts
		k.mu.Unlock()
		stored = append(stored, item+"}")
	}
	w.Header().Set("Content-Type", "application/dicom+json")
	if len(failed) > 0 {
		w.WriteHeader(http.StatusAccepted)
	}
	fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]},"00081198":{"vr":"SQ","Value":[%s]}}`, strings.Join(stored, ","), strings.Join(failed, ","))
}

func TestTransferSyntaxes(t *testing.T) {
	all := []string{tsImplicit, tsExplicit, tsBig, tsJPEG, tsJ2K, tsDeflFr}
	tests := []struct {
		name        string
		syntaxes    []string // the source's instances
		fail        []string // SOP Instance UIDs whose conversion fails
		unrecorded  []string // SOP Instance UIDs whose syntax Orthanc did not record
		list        []string // STOW_TRANSFER_SYNTAXES
		implied     bool     // the list is the forwarder's own
		exactLength bool
		stored      []string // SOP Instance UIDs, all in Explicit VR LE
		refused     map[string]string
		conversions map[string]float64
	}{
		{
			name: "converted to the list", syntaxes: all, list: []string{tsExplicit},
			stored: []string{"1.2.3.1", "1.2.3.2", "1.2.3.3"},
			refused: map[string]string{
				"1.2.3.4": "lossy JPEG Baseline (Process 1, lossy) (1.2.840.10008.1.2.4.50), which the destination's DESTINATION_AZ_STOW_TRANSFER_SYNTAXES does not list",
				"1.2.3.5": "without its GDCM plugin",
				"1.2.3.6": "its answer was empty",
			},
			conversions: map[string]float64{convConverted: 2, convFailed: 2, convLossy: 1},
		},
		{
			name: "counted first for a signed length", syntaxes: all, list: []string{tsExplicit}, exactLength: true,
			stored:      []string{"1.2.3.1", "1.2.3.2", "1.2.3.3"},
			refused:     map[string]string{"1.2.3.4": "lossy", "1.2.3.5": "GDCM", "1.2.3.6": "answer was empty"},
			conversions: map[string]float64{convConverted: 4, convFailed: 2, convLossy: 1},
		},
		{
			name: "a failed conversion amid others: the rest sent again", syntaxes: []string{tsImplicit, tsImplicit, tsImplicit}, fail: []string{"1.2.3.2"},
			list:        []string{tsExplicit},
			stored:      []string{"1.2.3.1", "1.2.3.3"},
			refused:     map[string]string{"1.2.3.2": "could not convert the instance from Implicit VR Little Endian (1.2.840.10008.1.2) to Explicit VR Little Endian (1.2.840.10008.1.2.1)"},
			conversions: map[string]float64{convConverted: 3, convFailed: 1},
		},
		{
			// Orthanc recorded no syntax: the file goes as stored, the
			// destination decides; it is not converted on a guess.
			name: "syntax not recorded: sent as stored", syntaxes: []string{tsExplicit, tsImplicit}, unrecorded: []string{"1.2.3.1"},
			list:        []string{tsExplicit},
			stored:      []string{"1.2.3.1", "1.2.3.2"},
			conversions: map[string]float64{convConverted: 1},
		},
		{
			name: "no list: the reason names the fix", syntaxes: []string{tsImplicit, tsExplicit},
			stored:      []string{"1.2.3.2"},
			refused:     map[string]string{"1.2.3.1": "referenced Transfer Syntax not supported: set DESTINATION_AZ_STOW_TRANSFER_SYNTAXES to the transfer syntaxes the destination accepts"},
			conversions: map[string]float64{convRefused: 1},
		},
		{
			name: "listed but refused: converted and sent again", syntaxes: []string{tsImplicit, tsExplicit}, list: []string{tsExplicit, tsImplicit},
			stored:      []string{"1.2.3.1", "1.2.3.2"},
			conversions: map[string]float64{convConverted: 1},
		},
		{
			// Converted only once refused, the part is counted then too:
			// sent without a length, the destination would refuse it.
			name: "listed but refused, for a signed length: counted once converted", syntaxes: []string{tsImplicit, tsExplicit},
			list: []string{tsExplicit, tsImplicit}, exactLength: true,
			stored:      []string{"1.2.3.1", "1.2.3.2"},
			conversions: map[string]float64{convConverted: 2},
		},
		{
			name: "the target itself refused", syntaxes: []string{tsImplicit}, list: []string{tsImplicit},
			refused:     map[string]string{"1.2.3.1": "the destination refused Implicit VR Little Endian (1.2.840.10008.1.2), which DESTINATION_AZ_STOW_TRANSFER_SYNTAXES lists; remove it"},
			conversions: map[string]float64{convRefused: 1},
		},
		{
			name: "lossy source listed: sent as it is", syntaxes: []string{tsJPEG}, list: []string{tsExplicit, tsJPEG},
			refused:     map[string]string{"1.2.3.1": "the destination refused JPEG Baseline (Process 1, lossy) (1.2.840.10008.1.2.4.50), which DESTINATION_AZ_STOW_TRANSFER_SYNTAXES lists"},
			conversions: map[string]float64{convRefused: 1},
		},
		{
			name: "nothing lossless to convert to: not counted lossy", syntaxes: []string{tsImplicit, tsJPEG}, list: []string{tsJPEG},
			refused: map[string]string{
				"1.2.3.1": "instance is in Implicit VR Little Endian (1.2.840.10008.1.2) and DESTINATION_AZ_STOW_TRANSFER_SYNTAXES lists no lossless transfer syntax",
				"1.2.3.2": "the destination refused JPEG Baseline",
			},
			conversions: map[string]float64{convNoTarget: 1, convRefused: 1},
		},
		{
			// A de-identifying destination without the variable: the
			// list is the forwarder's, the fix is to set the variable.
			// Never converted, whatever the list: the advice must not
			// promise it.
			name: "the forwarder's own list, a lossy syntax in it refused", syntaxes: []string{tsJPEG}, list: []string{tsExplicit, tsJPEG}, implied: true,
			refused:     map[string]string{"1.2.3.1": "the destination refused JPEG Baseline (Process 1, lossy) (1.2.840.10008.1.2.4.50), and stowline does not convert lossy instances, so it cannot be sent there; set DESTINATION_AZ_STOW_TRANSFER_SYNTAXES to the transfer syntaxes the destination accepts without it"},
			conversions: map[string]float64{convRefused: 1},
		},
		{
			// No syntax suggested: the list's target is the one refused.
			name: "the forwarder's own list, its target refused as stored", syntaxes: []string{tsImplicit}, list: []string{tsImplicit, tsJPEG}, implied: true,
			refused:     map[string]string{"1.2.3.1": "the destination refused Implicit VR Little Endian (1.2.840.10008.1.2); set DESTINATION_AZ_STOW_TRANSFER_SYNTAXES to the transfer syntaxes the destination accepts, a lossless one it accepts first: instances are converted to that one"},
			conversions: map[string]float64{convRefused: 1},
		},
		{
			name: "the forwarder's own list, its target refused once converted", syntaxes: []string{tsBig}, list: []string{tsImplicit}, implied: true,
			refused:     map[string]string{"1.2.3.1": "the destination refused the instance converted to Implicit VR Little Endian (1.2.840.10008.1.2); set DESTINATION_AZ_STOW_TRANSFER_SYNTAXES to the transfer syntaxes the destination accepts, a lossless one it accepts first"},
			conversions: map[string]float64{convConverted: 1, convRefused: 1},
		},
		{
			name: "converted and refused again", syntaxes: []string{tsBig}, list: []string{tsImplicit},
			refused:     map[string]string{"1.2.3.1": "the destination refused the instance converted to Implicit VR Little Endian (1.2.840.10008.1.2)"},
			conversions: map[string]float64{convConverted: 1, convRefused: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newSyntaxSource(tt.syntaxes...)
			src.fail, src.unrecorded = map[string]bool{}, map[string]bool{}
			for _, uid := range tt.fail {
				src.fail[uid] = true
			}
			for _, uid := range tt.unrecorded {
				src.unrecorded[uid] = true
			}
			k := &syntaxSink{stored: map[string]string{}, needLength: tt.exactLength}
			srv := httptest.NewServer(k)
			t.Cleanup(srv.Close)
			var opts []dicomweb.Option
			if tt.exactLength {
				opts = append(opts, dicomweb.WithContentLength())
			}
			client, err := dicomweb.New(srv.URL, nil, opts...)
			if err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			var logs bytes.Buffer
			f, err := New(Options{
				DestinationName: "az", SourceFor: func(string) (Source, error) { return src, nil }, Destination: client,
				Concurrency: 1, MaxInstances: 4, MaxBytes: 1 << 20, RequestConcurrency: 2, AckWait: 3 * time.Second,
				RetryDelay: time.Second, RetryMaxDelay: time.Second, InstanceRetries: 0,
				TransferSyntaxes: tt.list, TransferSyntaxesVar: "DESTINATION_AZ_STOW_TRANSFER_SYNTAXES", TransferSyntaxesImplied: tt.implied, ExactLength: tt.exactLength,
				Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Registerer: reg,
				TracerProvider: tp,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for range 2 { // twice: the hint is logged once
				// Under an attempt's span, as handle runs it.
				actx, span := tp.Tracer("test").Start(ctx, "forward study")
				_, err = f.transfer(actx, &Attempt{Event: testEvent()})
				span.End()
			}
			// A request whose body broke off may still be read by its
			// handler: Close waits for the handlers before k is read.
			srv.Close()
			for _, uid := range tt.stored {
				if ts, ok := k.stored[uid]; !ok || ts != tsExplicit {
					t.Errorf("%s: stored %v in %q, want stored in Explicit VR LE", uid, ok, ts)
				}
			}
			if len(k.stored) != len(tt.stored) {
				t.Errorf("stored %v, want %v", k.stored, tt.stored)
			}
			var fe *Error
			if len(tt.refused) == 0 {
				if err != nil {
					t.Fatalf("transfer: %v", err)
				}
			} else if !errors.As(err, &fe) || fe.Class != Partial {
				t.Fatalf("transfer: %v, want a partial failure", err)
			} else {
				// Orthanc's conversion failed, not the destination: the
				// error must not send the operator to the destination.
				if msg := fe.Err.Error(); strings.HasPrefix(msg, "destination refused") || !strings.Contains(msg, "instances cannot be stored") {
					t.Errorf("failure %q: want 'N of M instances cannot be stored', naming no culprit before each instance's reason", msg)
				}
				got := map[string]string{}
				for _, in := range fe.Instances {
					got[in.SOPInstanceUID] = in.Text
				}
				for uid, want := range tt.refused {
					if !strings.Contains(got[uid], want) {
						t.Errorf("%s refused with %q, want %q in it", uid, got[uid], want)
					}
				}
				if len(got) != len(tt.refused) {
					t.Errorf("refused %v, want %d instances", got, len(tt.refused))
				}
			}
			for _, result := range []string{convConverted, convFailed, convLossy, convNoTarget, convRefused} {
				// Two transfers: each counts.
				want := tt.conversions[result]
				if got := testutil.ToFloat64(f.m.conversions.WithLabelValues(result)); got != 2*want {
					t.Errorf("conversions{result=%q} = %v, want %v", result, got, 2*want)
				}
			}
			// No span a conversion (a study of thousands filled the
			// exporter's queue): the reads' spans count them, as the
			// metric does, those counted for a signed length included.
			var converted, failed float64
			for _, sp := range rec.Ended() {
				if sp.Name() == "orthanc convert instance" {
					t.Fatalf("a span %q: want none an instance", sp.Name())
				}
				if sp.Name() != "orthanc read batch" {
					continue
				}
				for _, a := range sp.Attributes() {
					switch a.Key {
					case tracing.Converted:
						converted += float64(a.Value.AsInt64())
					case tracing.ConversionFailed:
						failed += float64(a.Value.AsInt64())
					case tracing.TransferSyntax:
						if a.Value.AsString() != tt.list[0] {
							t.Errorf("read batch converted to %s, want %s", a.Value.AsString(), tt.list[0])
						}
					}
				}
			}
			if converted != 2*tt.conversions[convConverted] || failed != 2*tt.conversions[convFailed] {
				t.Errorf("read batches counted %v conversions, %v failed; want %v, %v", converted, failed, 2*tt.conversions[convConverted], 2*tt.conversions[convFailed])
			}
			if hints := strings.Count(logs.String(), "set DESTINATION_AZ_STOW_TRANSFER_SYNTAXES to the syntaxes it accepts"); (len(tt.list) == 0) != (hints == 1) {
				t.Errorf("%d hints logged, want one without a list and none with one:\n%s", hints, logs.String())
			}
		})
	}
}

func TestLossySyntax(t *testing.T) {
	for ts, want := range map[string]bool{
		tsImplicit: false, tsExplicit: false, tsJ2K: false, "1.2.840.10008.1.2.4.70": false, "1.2.840.10008.1.2.5": false,
		tsJPEG: true, "1.2.840.10008.1.2.4.91": true, "1.2.840.10008.1.2.4.102": true, "1.2.840.10008.1.2.4.100.1": true,
		// Each lossy syntax transfer-syntaxes.md names (JPEG Extended,
		// JPEG-LS near-lossless, JPEG 2000 and HTJ2K that allow loss,
		// HEVC), and their lossless kin.
		"1.2.840.10008.1.2.4.51": true, "1.2.840.10008.1.2.4.81": true, "1.2.840.10008.1.2.4.93": true,
		"1.2.840.10008.1.2.4.203": true, "1.2.840.10008.1.2.4.107": true, "1.2.840.10008.1.2.4.108": true,
		"1.2.840.10008.1.2.4.80": false, "1.2.840.10008.1.2.4.92": false, "1.2.840.10008.1.2.4.201": false,
		"1.2.840.10008.1.2.4.202": false, tsBig: false, "1.2.840.10008.1.2.1.99": false,
		// Retired JPEG: spectral selection and progressive are lossy,
		// process 14 lossless; JPEG XL by kind.
		"1.2.840.10008.1.2.4.53": true, "1.2.840.10008.1.2.4.55": true, "1.2.840.10008.1.2.4.64": true,
		"1.2.840.10008.1.2.4.57": false, "1.2.840.10008.1.2.4.58": false, "1.2.840.10008.1.2.4.66": false,
		"1.2.840.10008.1.2.4.110": false, "1.2.840.10008.1.2.4.111": true, "1.2.840.10008.1.2.4.112": true,
	} {
		if got := lossySyntax(ts); got != want {
			t.Errorf("lossySyntax(%s) = %v, want %v", ts, got, want)
		}
	}
}

// TestConversionErrorAdvice: a failed conversion advises listing the
// instance's syntax, except at a de-identifying destination for the
// syntaxes its rewrite does not read: listed, they are converted still.
//
// A target Orthanc does not write by itself (JPEG 2000 without GDCM,
// JPEG XL) fails every conversion: the advice is to put one it writes
// first, not to list each source syntax.
func TestConversionErrorAdvice(t *testing.T) {
	const bigEndian, jpegXL = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.110"
	const targetFirst = "put a syntax Orthanc writes itself, such as Explicit VR Little Endian (1.2.840.10008.1.2.1), first among the lossless syntaxes of STOW_TRANSFER_SYNTAXES"
	for _, tt := range []struct {
		name       string
		dest       Destination
		from, to   string
		wantList   bool
		wantTarget bool
	}{
		{"plain, big endian", nil, bigEndian, tsExplicit, true, false},
		{"de-identifying, big endian", &deidentified{}, bigEndian, tsExplicit, false, false},
		{"de-identifying, JPIP deflated", &deidentified{}, "1.2.840.10008.1.2.4.95", tsExplicit, false, false},
		{"de-identifying, JPEG XL", &deidentified{}, jpegXL, tsExplicit, true, false},
		{"to JPEG-LS lossless", nil, bigEndian, "1.2.840.10008.1.2.4.80", true, false},
		{"to JPEG 2000 lossless", nil, tsImplicit, tsJ2K, false, true},
		{"to HTJ2K lossless", nil, tsImplicit, "1.2.840.10008.1.2.4.201", false, true},
		{"to JPEG XL lossless", nil, tsImplicit, jpegXL, false, true},
		{"de-identifying, big endian to JPEG 2000", &deidentified{}, bigEndian, tsJ2K, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &Forwarder{opts: Options{Destination: tt.dest}}
			msg := f.conversionError("1.2.3", tt.from, tt.to, errors.New("400")).Error()
			if got := strings.Contains(msg, "or add "+tt.from+" to STOW_TRANSFER_SYNTAXES"); got != tt.wantList {
				t.Errorf("advises listing the syntax: %v, want %v: %s", got, tt.wantList, msg)
			}
			if got := strings.Contains(msg, targetFirst); got != tt.wantTarget {
				t.Errorf("advises another target first: %v, want %v: %s", got, tt.wantTarget, msg)
			}
		})
	}
}

// TestConversionTargetWarned: a list whose first lossless syntax is one
// Orthanc does not write by itself is warned about at start, once, with
// the variable and the syntax; one it writes is not.
func TestConversionTargetWarned(t *testing.T) {
	for _, tt := range []struct {
		name string
		list []string
		warn string // the syntax warned about, "" for none
	}{
		{"Explicit VR first", []string{tsExplicit, tsJ2K}, ""},
		{"lossy then Implicit VR", []string{tsJPEG, tsImplicit, tsJ2K}, ""},
		{"JPEG 2000 first", []string{tsJ2K, tsExplicit}, tsJ2K},
		{"lossy then HTJ2K", []string{tsJPEG, "1.2.840.10008.1.2.4.201", tsExplicit}, "1.2.840.10008.1.2.4.201"},
		{"lossy only", []string{tsJPEG}, ""},
		{"no list", nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			_, err := New(Options{
				DestinationName: "az", SourceFor: func(string) (Source, error) { return newSyntaxSource(), nil }, Destination: sameParts{t: t},
				Concurrency: 1, MaxInstances: 1, MaxBytes: 1, AckWait: time.Second, RetryDelay: time.Second, RetryMaxDelay: time.Second,
				TransferSyntaxes: tt.list, TransferSyntaxesVar: "DESTINATION_AZ_STOW_TRANSFER_SYNTAXES",
				Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Registerer: prometheus.NewRegistry(),
			})
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if tt.warn != "" {
				want = 1
			}
			line := `"variable":"DESTINATION_AZ_STOW_TRANSFER_SYNTAXES","transfer_syntax":"` + tt.warn + `"`
			if got := strings.Count(logs.String(), "which Orthanc does not write by itself"); got != want || (want == 1 && !strings.Contains(logs.String(), line)) {
				t.Errorf("%d warnings, want %d with %s:\n%s", got, want, line, logs.String())
			}
		})
	}
}

// TestRefusedSyntaxFromRequestsAtOnce: a study's requests run at once,
// and each answer refusing a syntax adds converted parts to the same
// plan: every instance is stored converted, and -race finds no unguarded
// access (the plan's map once crashed the process).
func TestRefusedSyntaxFromRequestsAtOnce(t *testing.T) {
	syntaxes := make([]string, 200)
	for i := range syntaxes {
		syntaxes[i] = tsImplicit
	}
	f, k, srv := syntaxForwarder(t, newSyntaxSource(syntaxes...), 1, 16, tsExplicit, tsImplicit)
	if _, err := f.transfer(t.Context(), &Attempt{Event: testEvent()}); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	srv.Close()
	if len(k.stored) != len(syntaxes) {
		t.Errorf("%d instances stored, want %d", len(k.stored), len(syntaxes))
	}
}

// TestConversionFaultIsRetried: a failure of Orthanc that is not about
// the conversion is retried as an Orthanc failure, not taken for an
// instance that cannot be converted (refused for good, dead-lettered):
// a 500 of another kind (a database fault), or an answer that breaks off
// inside its first 132 bytes.
func TestConversionFaultIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(*syntaxSource)
	}{
		{"database fault", func(s *syntaxSource) { s.fault = map[string]bool{"1.2.3.2": true} }},
		{"answer cut", func(s *syntaxSource) { s.cut = map[string]bool{"1.2.3.2": true} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newSyntaxSource(tsImplicit, tsImplicit)
			tc.fault(src)
			f, _, _ := syntaxForwarder(t, src, 4, 2, tsExplicit)
			_, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
			if err == nil || Classify(err) != Transient {
				t.Fatalf("transfer: %v (class %v), want a transient failure", err, Classify(err))
			}
			if got := testutil.ToFloat64(f.m.conversions.WithLabelValues(convFailed)); got != 0 {
				t.Errorf("conversions{result=failed} = %v, want 0", got)
			}
		})
	}
}

// TestConversionRefusedForGood: Orthanc's answer that it cannot convert
// an instance (400: it cannot parse the file; 501) or an answer that is
// no DICOM file refuses that instance for good (class partial, counted
// failed), none of it sent; the other instance is stored.
func TestConversionRefusedForGood(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(*syntaxSource)
		reason string
	}{
		{"400", func(s *syntaxSource) { s.refuse = map[string]int{"1.2.3.2": http.StatusBadRequest} }, "HTTP 400"},
		{"501", func(s *syntaxSource) { s.refuse = map[string]int{"1.2.3.2": http.StatusNotImplemented} }, "HTTP 501"},
		{"not DICOM", func(s *syntaxSource) { s.junk = map[string]bool{"1.2.3.2": true} }, "its answer was not DICOM (no DICM prefix)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newSyntaxSource(tsImplicit, tsImplicit)
			tc.answer(src)
			f, k, srv := syntaxForwarder(t, src, 4, 2, tsExplicit)
			_, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
			srv.Close() // its handlers done: k is read below
			var fe *Error
			if !errors.As(err, &fe) || fe.Class != Partial || len(fe.Instances) != 1 || fe.Instances[0].SOPInstanceUID != "1.2.3.2" ||
				!strings.Contains(fe.Instances[0].Text, "could not convert the instance") || !strings.Contains(fe.Instances[0].Text, tc.reason) {
				t.Fatalf("transfer: %v, want a partial failure refusing 1.2.3.2 for %q", err, tc.reason)
			}
			if got := testutil.ToFloat64(f.m.conversions.WithLabelValues(convFailed)); got != 1 {
				t.Errorf("conversions{result=failed} = %v, want 1", got)
			}
			if _, ok := k.stored["1.2.3.1"]; !ok || len(k.stored) != 1 {
				t.Errorf("stored %v, want 1.2.3.1 alone", k.stored)
			}
		})
	}
}

// syntaxForwarder forwards from src to a syntaxSink, maxInstances a
// request and parallel requests at once, converting to list.
func syntaxForwarder(t *testing.T, src *syntaxSource, maxInstances, parallel int, list ...string) (*Forwarder, *syntaxSink, *httptest.Server) {
	t.Helper()
	k := &syntaxSink{stored: map[string]string{}}
	srv := httptest.NewServer(k)
	t.Cleanup(srv.Close)
	client, err := dicomweb.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Options{
		DestinationName: "az", SourceFor: func(string) (Source, error) { return src, nil }, Destination: client,
		Concurrency: 1, MaxInstances: maxInstances, MaxBytes: 1 << 20, RequestConcurrency: parallel, AckWait: 3 * time.Second,
		RetryDelay: time.Second, RetryMaxDelay: time.Second,
		TransferSyntaxes: list,
		Logger:           slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return f, k, srv
}

// TestMeasureFaultIsTheSources: for a destination that needs every
// request's length (AWS), an Orthanc fault while counting a conversion's
// size fails the study as the source's fault, before any request: it was
// sent at an unknown size, refused before it left, and counted as the
// destination being down (toward its circuit breaker).
func TestMeasureFaultIsTheSources(t *testing.T) {
	src := newSyntaxSource(tsImplicit, tsImplicit)
	src.fault = map[string]bool{"1.2.3.2": true}
	f, k, _ := syntaxForwarder(t, src, 4, 1, tsExplicit)
	f.opts.ExactLength = true
	_, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
	switch {
	case err == nil:
		t.Fatal("transfer succeeded with a source fault")
	case DestinationDown(err):
		t.Errorf("a source fault counts as the destination down: %v", err)
	case Classify(err) != Transient:
		t.Errorf("class %s, want transient: %v", Classify(err), err)
	case !strings.Contains(err.Error(), "1.2.3.2"):
		t.Errorf("the error does not name the instance: %v", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.requests != 0 {
		t.Errorf("%d requests reached the destination, want 0", k.requests)
	}
}

// stalledBody gives no byte until ctx ends.
type stalledBody struct{ ctx context.Context }

func (b stalledBody) Read([]byte) (int, error) {
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

// TestMeasureGivesUpAStalledSource: for a destination that needs every
// request's length (AWS), a conversion the source stops serving mid-body
// fails the study as the source's fault once no byte came for the stall
// time-out (dicomweb.StallTimeout; shortened here). The count read
// without a time limit: the study waited until shutdown, kept in
// progress, so JetStream never delivered it again.
func TestMeasureGivesUpAStalledSource(t *testing.T) {
	src := newSyntaxSource(tsImplicit, tsImplicit)
	src.stall = map[string]bool{"1.2.3.2": true}
	f, k, _ := syntaxForwarder(t, src, 4, 1, tsExplicit)
	f.opts.ExactLength = true
	f.measureStall = 200 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		_, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the study still waits on a stalled source after 30 s")
	}
	switch {
	case err == nil:
		t.Fatal("transfer succeeded with a stalled source")
	case DestinationDown(err):
		t.Errorf("a stalled source counts as the destination down: %v", err)
	case Classify(err) != Transient:
		t.Errorf("class %s, want transient: %v", Classify(err), err)
	case !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1.2.3.2"):
		t.Errorf("want a time-out naming the instance: %v", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.requests != 0 {
		t.Errorf("%d requests reached the destination, want 0", k.requests)
	}
}

// TestAWSProfileSyntaxes: with the aws profile's list, the syntaxes
// HealthImaging documents are sent as Orthanc stores them (RLE, HTJ2K
// lossless, Implicit VR), not converted, and an instance in a syntax it
// does not list is converted to Explicit VR Little Endian.
func TestAWSProfileSyntaxes(t *testing.T) {
	const tsRLE, tsHTJ2K, tsJPEGXL = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.110"
	list := (&config.Destination{StowProfile: config.ProfileAWS}).Profile().TransferSyntaxes()
	tests := []struct {
		syntax, sent string
		converted    bool
	}{
		{tsRLE, tsRLE, false},
		{tsHTJ2K, tsHTJ2K, false},
		{tsImplicit, tsImplicit, false},
		{tsJPEGXL, tsExplicit, true},
	}
	for _, tt := range tests {
		t.Run(syntaxName(tt.syntax), func(t *testing.T) {
			src := newSyntaxSource(tt.syntax)
			f, _, _ := syntaxForwarder(t, src, 4, 1, list...)
			p, parts, refused, err := f.planSyntaxes(t.Context(), src, src.instances)
			if err != nil || len(refused) != 0 || len(parts) != 1 {
				t.Fatalf("planSyntaxes: %d parts, refused %v, %v; want one part", len(parts), refused, err)
			}
			rc, err := parts[0].Open(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			_ = rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			if _, sent, _ := strings.Cut(string(b[dicmOffset+4:]), "|"); sent != tt.sent || p.wasConverted("1.2.3.1") != tt.converted {
				t.Errorf("sent in %s, converted %v; want %s, %v", sent, p.wasConverted("1.2.3.1"), tt.sent, tt.converted)
			}
		})
	}
}
