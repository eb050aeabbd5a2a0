package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/testharness"
)

const explicitVRLE = "1.2.840.10008.1.2.1"

// lossySyntaxes are the samples' syntaxes that stowline refuses to pass
// off as lossless.
var lossySyntaxes = map[string]bool{"1.2.840.10008.1.2.4.50": true, "1.2.840.10008.1.2.4.51": true, "1.2.840.10008.1.2.4.91": true}

// TestTransferSyntaxConversion sends the shared samples (implicit VR, big
// endian, deflated, JPEG baseline, extended, lossless, JPEG-LS, JPEG 2000,
// RLE, a bare data set) to two destinations that store only Explicit VR
// Little Endian and refuse the rest per instance with 0xC122, as Azure
// does implicit VR: "azure" has STOW_TRANSFER_SYNTAXES set, "plain" not.
// On both Orthanc releases: transcoding is Orthanc's. Neither runs the
// GDCM plugin, so the JPEG 2000 Lossless instance is refused with the
// reason that names the plugin: with Debian's GDCM plugin 1.5, Orthanc
// 1.10 crashed in about one run in five of this test, restricted to JPEG
// 2000, throttled to one thread and with a truly lossless file alike
// (docs/transfer-syntaxes.md).
func TestTransferSyntaxConversion(t *testing.T) {
	testharness.ForEachRelease(t, testTransferSyntaxConversion)
}

func testTransferSyntaxConversion(t *testing.T, rel testharness.Release) {
	s := newSiteWith(t, siteOptions{release: rel, destinations: []string{"azure", "plain"}, nats: true})
	azure, plain := s.destination(t, "azure"), s.destination(t, "plain")
	for _, d := range []*siteDest{azure, plain} {
		g := startSyntaxGate(t, d.proxy.URL)
		s.env[d.varName("DICOMWEB_URL")] = g.URL + "/dicom-web"
	}
	s.env[azure.varName("STOW_TRANSFER_SYNTAXES")] = explicitVRLE
	s.env["FORWARDER_MAX_DELIVERIES"] = "2"
	s.start(t)
	store, err := deadletter.Open(t.Context(), s.js)
	if err != nil {
		t.Fatal(err)
	}

	// A JPEG 2000 Lossless Only instance: the lossy-allowed sample
	// relabelled (same length, so the file stays well-formed) under a
	// SOP Instance UID of its own. Orthanc decodes it only with GDCM, so
	// it is refused.
	j2k, j2kUID := relabelledJ2K(t)
	// Each study's files are sent together, the relabelled one right
	// after its original: a study whose files were spread over the
	// upload became stable twice on a loaded machine (more than
	// StableAge between its first and last file), and its instances were
	// forwarded, and counted, twice.
	samples := testharness.Samples(t)
	slices.SortStableFunc(samples, func(a, b testharness.Sample) int {
		return strings.Compare(a.StudyInstanceUID, b.StudyInstanceUID)
	})
	var files []string
	syntax := map[string]string{} // SOP Instance UID: source syntax
	for _, smp := range samples {
		if smp.OrthancAccepts {
			files = append(files, smp.Path)
			syntax[smp.SOPInstanceUID] = smp.TransferSyntaxUID
			if smp.TransferSyntaxUID == "1.2.840.10008.1.2.4.91" && !slices.Contains(files, j2k) {
				files = append(files, j2k)
			}
		}
	}
	if res := s.sources["main"].Upload(t, files...); len(res.Failed) > 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
	s.sources["main"].WaitStable(t, time.Minute)
	s.waitDone(t, time.Minute, "azure", "plain")

	// azure: every instance Orthanc converts arrives in Explicit VR LE
	// under its own SOP Instance UID; lossy ones, and those Orthanc cannot
	// decode, are dead-lettered with the reason.
	held := heldSyntaxes(t, azure)
	refused := refusedInstances(t, store, "azure")
	if _, ok := held[j2kUID]; ok || !strings.Contains(refused[j2kUID], "could not convert the instance from JPEG 2000 (Lossless Only)") ||
		!strings.Contains(refused[j2kUID], "GDCM") {
		t.Errorf("azure: the JPEG 2000 Lossless instance held %v, refused with %q", ok, refused[j2kUID])
	}
	for uid, ts := range syntax {
		got, ok := held[uid]
		switch {
		case lossySyntaxes[ts]:
			if ok || !strings.Contains(refused[uid], "lossy") || !strings.Contains(refused[uid], "DESTINATION_AZURE_STOW_TRANSFER_SYNTAXES") {
				t.Errorf("azure: lossy %s (%s) held %v, refused with %q", uid, ts, ok, refused[uid])
			}
		case ok:
			if got != explicitVRLE {
				t.Errorf("azure: %s (%s) arrived in %s", uid, ts, got)
			}
		default:
			t.Errorf("azure: %s (%s) is missing; refused with %q", uid, ts, refused[uid])
		}
	}
	convertible := 0
	for _, ts := range syntax {
		if ts != explicitVRLE && !lossySyntaxes[ts] {
			convertible++
		}
	}
	fwd := "http://" + s.fwdAddr + "/metrics"
	if got := metricValue(t, fwd, `stowline_forwarder_conversions_total{destination="azure",result="converted"}`); got != float64(convertible) || convertible < 8 {
		t.Errorf("azure: %v conversions, want %d (of %d instances)", got, convertible, len(syntax))
	}
	if got := metricValue(t, fwd, `stowline_forwarder_conversions_total{destination="azure",result="failed"}`); got != 1 {
		t.Errorf("azure: %v failed conversions, want 1 (JPEG 2000 without GDCM)", got)
	}
	if got := metricValue(t, fwd, `stowline_forwarder_conversions_total{destination="azure",result="lossy"}`); got != 3 {
		t.Errorf("azure: %v lossy instances refused, want 3", got)
	}
	// plain: explicit VR LE arrives, the rest is refused with a reason
	// that names the fix, and the hint is logged once.
	held = heldSyntaxes(t, plain)
	refused = refusedInstances(t, store, "plain")
	for uid, ts := range syntax {
		if ts == explicitVRLE {
			if _, ok := held[uid]; !ok {
				t.Errorf("plain: %s is missing", uid)
			}
			continue
		}
		if !strings.Contains(refused[uid], "set DESTINATION_PLAIN_STOW_TRANSFER_SYNTAXES") {
			t.Errorf("plain: %s (%s) refused with %q, want the fix named", uid, ts, refused[uid])
		}
	}
	if n := strings.Count(s.logText(), `"variable":"DESTINATION_PLAIN_STOW_TRANSFER_SYNTAXES"`); n != 1 {
		t.Errorf("the hint to set DESTINATION_PLAIN_STOW_TRANSFER_SYNTAXES was logged %d times, want once", n)
	}
	if strings.Contains(s.logText(), `"variable":"DESTINATION_AZURE_STOW_TRANSFER_SYNTAXES"`) {
		t.Error("the hint was logged for azure, which has a list")
	}
}

// relabelledJ2K writes the JPEG 2000 sample as JPEG 2000 Lossless Only
// (1.2.840.10008.1.2.4.90 instead of .91) with its SOP Instance UID's
// last digit changed, and returns the file and that UID.
func relabelledJ2K(t *testing.T) (string, string) {
	t.Helper()
	for _, smp := range testharness.Samples(t) {
		if smp.TransferSyntaxUID != "1.2.840.10008.1.2.4.91" {
			continue
		}
		b, err := os.ReadFile(smp.Path)
		if err != nil {
			t.Fatal(err)
		}
		uid := smp.SOPInstanceUID
		last := uid[len(uid)-1]
		newUID := uid[:len(uid)-1] + string('0'+(last-'0'+1)%10)
		b = bytes.ReplaceAll(b, []byte("1.2.840.10008.1.2.4.91"), []byte("1.2.840.10008.1.2.4.90"))
		b = bytes.ReplaceAll(b, []byte(uid), []byte(newUID))
		path := filepath.Join(t.TempDir(), "j2k-lossless.dcm")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path, newUID
	}
	t.Fatal("no JPEG 2000 sample")
	return "", ""
}

// heldSyntaxes returns the transfer syntax of every instance the
// destination's Orthanc holds, by SOP Instance UID.
func heldSyntaxes(t *testing.T, d *siteDest) map[string]string {
	t.Helper()
	var instances []struct {
		ID            string
		MainDicomTags map[string]string
	}
	d.orthanc.GetJSON(t, "/instances?expand", &instances)
	out := map[string]string{}
	for _, in := range instances {
		var meta map[string]string
		d.orthanc.GetJSON(t, "/instances/"+in.ID+"/metadata?expand", &meta)
		out[in.MainDicomTags["SOPInstanceUID"]] = meta["TransferSyntax"]
	}
	return out
}

// refusedInstances returns the per-instance reasons of a destination's
// dead letters, by SOP Instance UID.
func refusedInstances(t *testing.T, store *deadletter.Store, destination string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, l := range letters(t, store, destination) {
		for _, in := range l.Failures {
			out[in.SOPInstanceUID] = in.Text
		}
		if len(l.Failures) == 0 {
			t.Errorf("%s: dead letter without instances: %s: %s", destination, l.Class, l.Reason)
		}
	}
	return out
}

// startSyntaxGate runs a STOW-RS front for upstream (a DICOMweb Orthanc,
// or a fault proxy before it) that passes on only the parts in Explicit
// VR Little Endian and answers the others as refused with Failure Reason
// 0xC122 (transfer syntax not supported): 202 when some were stored, 409
// when none. Everything else goes through unchanged.
func startSyntaxGate(t *testing.T, upstream string) *httptest.Server {
	t.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex // one STOW at a time keeps the gate simple
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/studies") {
			proxy.ServeHTTP(w, r)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		status, body, err := gateSTOW(upstream+r.URL.Path, r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func gateSTOW(upstream string, r *http.Request) (int, []byte, error) {
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return 0, nil, err
	}
	var pass bytes.Buffer
	mw := multipart.NewWriter(&pass)
	var refused []any
	passed := 0
	mr := multipart.NewReader(r.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, nil, err
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return 0, nil, err
		}
		info, err := testharness.ReadInfo(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			return 0, nil, fmt.Errorf("part: %w", err)
		}
		if info.TransferSyntaxUID != explicitVRLE {
			refused = append(refused, map[string]any{
				"00081150": map[string]any{"vr": "UI", "Value": []string{info.SOPClassUID}},
				"00081155": map[string]any{"vr": "UI", "Value": []string{info.SOPInstanceUID}},
				"00081197": map[string]any{"vr": "US", "Value": []int{0xC122}},
			})
			continue
		}
		pw, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
		if err != nil {
			return 0, nil, err
		}
		_, _ = pw.Write(b)
		passed++
	}
	_ = mw.Close()
	answer := map[string]any{}
	status := http.StatusOK
	if passed > 0 {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, upstream, &pass)
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+mw.Boundary())
		req.Header.Set("Accept", "application/dicom+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || len(refused) == 0 {
			return resp.StatusCode, body, nil
		}
		if err := json.Unmarshal(body, &answer); err != nil {
			return 0, nil, err
		}
	}
	if len(refused) > 0 {
		status = http.StatusAccepted
		if passed == 0 {
			status = http.StatusConflict
		}
		seq, _ := answer["00081198"].(map[string]any)
		if seq == nil {
			seq = map[string]any{"vr": "SQ", "Value": []any{}}
		}
		items, _ := seq["Value"].([]any)
		seq["Value"] = append(items, refused...)
		answer["00081198"] = seq
	}
	body, err := json.Marshal(answer)
	return status, body, err
}

// waitDone waits until every stable study of the sources has ended,
// forwarded or dead-lettered, at each named destination, and their
// consumers have nothing left. Needs siteOptions.nats.
func (s *site) waitDone(t *testing.T, timeout time.Duration, destinations ...string) {
	t.Helper()
	fwd := "http://" + s.fwdAddr + "/metrics"
	testharness.WaitFor(t, "every study forwarded or dead-lettered", timeout, func() bool {
		n := float64(len(s.stableStudies(t)))
		for _, d := range destinations {
			done := metricValue(t, fwd, `stowline_forwarder_studies_total{destination="`+d+`",result="forwarded"}`) +
				metricValue(t, fwd, `stowline_forwarder_studies_total{destination="`+d+`",result="dead_lettered"}`)
			if done < n || s.consumerBusy(t.Context(), d) != "" {
				return false
			}
		}
		return n > 0
	})
}
