package main

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

// The AI vendor's rules: MR studies only, and no reports, key objects or
// presentation states of them.
const (
	aiMatch         = `'MR' in study.modalities`
	aiInstanceMatch = `!(instance.modality in ['SR', 'KO', 'PR'])`
)

// Two destinations with different rules, each behind a token gate of its
// own IdP: the archive takes everything, ai (aiMatch, aiInstanceMatch)
// the images of MR studies. A modality sends studies of several kinds
// with storescu, the shared samples and generated ones; each destination
// receives exactly the instances its rules select, byte for byte, ai never
// receives an excluded one, and ai counts the studies it skipped. The
// rules read what the source Orthanc indexed (series modalities, instance
// metadata), so this runs on every release.
func TestRoutingEndToEnd(t *testing.T) {
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		t.Parallel()
		testRouting(t, rel)
	})
}

func testRouting(t *testing.T, rel testharness.Release) {
	testharness.RequireBinary(t, "storescu")
	s := newSiteWith(t, siteOptions{release: rel, destinations: []string{"archive", "ai"}, oauth: true, nats: true})
	archive, ai := s.destination(t, "archive"), s.destination(t, "ai")
	s.env[ai.varName("MATCH")] = aiMatch
	s.env[ai.varName("INSTANCE_MATCH")] = aiInstanceMatch
	s.start(t)
	src := s.sources["main"]

	// What ai takes: the images of the MR studies. Everything else is
	// the archive's alone.
	mr := generateSeries(t, "",
		dicomgen.SeriesSpec{Modality: "MR", Description: "t1 axial", Instances: 3},
		dicomgen.SeriesSpec{Modality: "MR", Description: "t2 sagittal", Instances: 2},
		dicomgen.SeriesSpec{Modality: "SR", Description: "report", Instances: 2},
		dicomgen.SeriesSpec{Modality: "KO", Description: "key images", Instances: 1},
		dicomgen.SeriesSpec{Modality: "PR", Description: "annotations", Instances: 1})
	mrImages := sopUIDs(t, mr[:5]...)
	ct := generateSeries(t, "", dicomgen.SeriesSpec{Modality: "CT", Instances: 3})
	// The shared samples by kind (MANIFEST.tsv): two MR studies of one
	// image each, and five studies ai must skip: an SR document, NM
	// (three instances), CT (two series), two US studies.
	dir := testharness.SamplesDir(t)
	mrSamples := samplePaths(t, dir, "mr-jpegls-lossless.dcm", "mr-overlay-private-icon.dcm")
	others := samplePaths(t, dir, "sr-comprehensive-nested.dcm", "nm-jpeg-extended.dcm", "nm-jpeg-lossless.dcm",
		"nm-jpeg2000.dcm", "study-ct-s4-i*.dcm", "study-ct-s5-i*.dcm", "us-palette-rle.dcm", "us-rgb-explicit-be.dcm")
	const studies, skipped = 1 + 1 + 2 + 5, 1 + 5 // MR, CT, MR samples, other samples; ai skips CT and the others

	send(t, src, append(append(append(mr, ct...), mrSamples...), others...)...)
	s.waitRecorded(t, studies, 2*time.Minute, "archive", "ai")

	all := src.InstanceMD5s(t)
	if n := len(mr) + len(ct) + len(mrSamples) + len(others); len(all) != n {
		t.Fatalf("source holds %d instances, want the %d sent", len(all), n)
	}
	archive.checkHolds(t, all)
	ai.checkHolds(t, subset(all, mrImages, sopUIDs(t, mrSamples...)))
	for _, d := range []*siteDest{archive, ai} {
		for uid, n := range d.proxy.Sends() {
			if n != 1 {
				t.Errorf("instance %s reached %s %d times", uid, d.name, n)
			}
		}
		if d.gate.Accepted() == 0 || d.idp.TokensIssued() == 0 {
			t.Errorf("%s: gate accepted %d requests, IdP issued %d tokens", d.name, d.gate.Accepted(), d.idp.TokensIssued())
		}
	}

	// Settled: the queue the ingest reports is empty for every
	// destination.
	ingest := "http://" + s.ingestAddr + "/metrics"
	for _, d := range []string{"archive", "ai"} {
		for _, sample := range []string{`stowline_queue_pending_events`, `stowline_queue_ack_pending_events`} {
			sample += `{destination="` + d + `"}`
			if got := metricValue(t, ingest, sample); got != 0 {
				t.Errorf("%s = %v once every destination has settled, want 0", sample, got)
			}
		}
	}
	fwd := "http://" + s.fwdAddr + "/metrics"
	results := []struct {
		sample string
		want   float64
	}{
		{`stowline_forwarder_studies_total{destination="ai",result="not_selected"}`, skipped},
		{`stowline_forwarder_studies_total{destination="ai",result="forwarded"}`, studies - skipped},
		{`stowline_forwarder_studies_total{destination="archive",result="forwarded"}`, studies},
		{`stowline_forwarder_studies_total{destination="archive",result="not_selected"}`, 0},
		{`stowline_forwarder_studies_total{result="dead_lettered"}`, 0},
	}
	// The forwarder counts a study's result after its ledger write and
	// ack, so the last count can lag waitRecorded.
	waitUntil(30*time.Second, func() bool {
		for _, c := range results {
			if got, _ := testharness.Metric(t, fwd, c.sample); got != c.want {
				return false
			}
		}
		return true
	})
	for _, c := range results {
		if got, _ := testharness.Metric(t, fwd, c.sample); got != c.want {
			t.Errorf("%s = %v, want %v", c.sample, got, c.want)
		}
	}
}

// samplePaths returns the shared sample files matching the patterns,
// each of which must match.
func samplePaths(t *testing.T, dir string, patterns ...string) []string {
	t.Helper()
	var out []string
	for _, p := range patterns {
		m, err := filepath.Glob(filepath.Join(dir, p))
		if err != nil || len(m) == 0 {
			t.Fatalf("no sample file %s in %s (err %v)", p, dir, err)
		}
		out = append(out, m...)
	}
	return out
}
