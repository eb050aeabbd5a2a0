package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/faultproxy"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testidp"
)

// siteIngestToken is the bearer token the sources' Lua script sends.
const siteIngestToken = "site-ingest-token-0123456789"

// site is a single-host deployment under test: source Orthanc servers
// running the project's Lua script, the real program (run), and one or
// more destinations, each a real Orthanc (DICOMweb plugin) behind a fault
// proxy that counts how often each instance arrives and, with OAuth2, a
// token gate of an IdP of its own:
//
//	stowline --STOW-RS--> fault proxy --> [token gate -->] destination Orthanc
//
// Tests adjust env before start, and may start, stop and start again.
type site struct {
	sources map[string]*testharness.Orthanc
	// dests are the destinations in DESTINATIONS order; dest and proxy
	// are the first one's, for tests of one destination.
	dests      []*siteDest
	dest       *testharness.Orthanc
	proxy      *faultproxy.Proxy
	env        map[string]string
	ingestAddr string
	fwdAddr    string
	// js reaches the site's JetStream when it runs a NATS server of its
	// own (siteOptions.nats); nil with the embedded one.
	js jetstream.JetStream

	mu   sync.Mutex
	logs *testharness.LogBuffer
}

// siteDest is one destination of a site.
type siteDest struct {
	name    string
	orthanc *testharness.Orthanc
	proxy   *faultproxy.Proxy
	// idp and gate are nil without OAuth2; secret is the client's.
	idp    *testidp.IdP
	gate   *testidp.Gate
	secret string
	// prefix of its variables: "" for the default destination,
	// "DESTINATION_AI_" for ai.
	prefix string
}

// varName is the name of the destination's variable whose default
// destination's name is key (DICOMWEB_URL, OAUTH_TOKEN_URL...).
func (d *siteDest) varName(key string) string {
	return config.NamedDestination{Name: d.name, Var: d.prefix}.VarName(key)
}

// siteOptions configures newSiteWith.
type siteOptions struct {
	release testharness.Release
	// stableAge is the sources' StableAge in seconds (default 1).
	stableAge int
	// sources are the source names (default "main").
	sources []string
	// destinations are named in DESTINATIONS; none: the one destination
	// "default" of DICOMWEB_URL.
	destinations []string
	// oauth puts each destination behind a token gate of its own IdP,
	// issuing tokens of tokenLifetime (default the IdP's).
	oauth         bool
	tokenLifetime time.Duration
	// nats runs a NATS server of the test's on TCP (NATS_URL) instead of
	// the embedded one, so that the test and the forwarder's commands
	// (replay, backfill) reach JetStream, and it outlives stowline.
	nats bool
}

// newSite starts the destination and one source Orthanc per name, each
// on release rel and posting its events with that source name. It does
// not start stowline.
func newSite(t *testing.T, rel testharness.Release, stableAge int, names ...string) *site {
	t.Helper()
	return newSiteWith(t, siteOptions{release: rel, stableAge: stableAge, sources: names})
}

// newSiteWith starts the servers of a site as opts says; not stowline.
func newSiteWith(t *testing.T, opts siteOptions) *site {
	t.Helper()
	testharness.RequireBinary(t, "Orthanc")
	if opts.stableAge == 0 {
		opts.stableAge = 1
	}
	if len(opts.sources) == 0 {
		opts.sources = []string{"main"}
	}
	s := &site{sources: map[string]*testharness.Orthanc{}}
	s.env = map[string]string{
		"INGEST_TOKEN":            siteIngestToken,
		"FORWARDER_RETRY_DELAY":   "1s",
		"RECONCILE_POLL_INTERVAL": "200ms",
		"RECONCILE_LEASE_TTL":     "2s",
		"LOG_LEVEL":               "debug",
	}
	names := opts.destinations
	if len(names) == 0 {
		names = []string{natsjs.DefaultDestination}
	} else {
		s.env["DESTINATIONS"] = strings.Join(names, ",")
	}
	for _, name := range names {
		d := &siteDest{name: name}
		if len(opts.destinations) > 0 {
			d.prefix = config.DestinationVarPrefix(name)
		}
		d.orthanc = testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "dest-" + name, DicomWeb: true})
		upstream := d.orthanc.URL
		if opts.oauth {
			clientID := "stowline-" + name
			d.secret = "secret-of-" + name + "-0123456789"
			idpOpts := []testidp.Option{testidp.WithClient(clientID, d.secret)}
			if opts.tokenLifetime > 0 {
				idpOpts = append(idpOpts, testidp.WithTokenLifetime(opts.tokenLifetime))
			}
			d.idp = testidp.Start(t, idpOpts...)
			d.gate = d.idp.Gate(t, d.orthanc.URL)
			upstream = d.gate.URL
			s.env[d.varName("OAUTH_TOKEN_URL")] = d.idp.TokenURL
			s.env[d.varName("OAUTH_CLIENT_ID")] = clientID
			s.env[d.varName("OAUTH_CLIENT_SECRET")] = d.secret
		}
		d.proxy = faultproxy.Start(t, upstream)
		s.env[d.varName("DICOMWEB_URL")] = d.proxy.URL + "/dicom-web"
		// A destination back from an outage is probed within seconds,
		// as failed studies are retried within seconds.
		s.env[d.varName("STOW_BREAKER_PROBE_INTERVAL")] = "1s"
		s.env[d.varName("STOW_BREAKER_MAX_PROBE_INTERVAL")] = "2s"
		s.dests = append(s.dests, d)
	}
	s.dest, s.proxy = s.dests[0].orthanc, s.dests[0].proxy

	if opts.nats {
		s.startNATS(t)
	} else {
		s.env["NATS_STORE_DIR"] = t.TempDir()
	}
	// Picked after the servers above bind theirs: a port FreeAddr
	// released could otherwise be handed to one of them.
	s.ingestAddr, s.fwdAddr = testharness.FreeAddr(t), testharness.FreeAddr(t)
	s.env["INGEST_ADDR"], s.env["FORWARDER_ADDR"] = s.ingestAddr, s.fwdAddr

	lua, err := filepath.Abs("../../lua/stowline.lua")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range opts.sources {
		s.sources[name] = testharness.StartOrthanc(t, testharness.OrthancOptions{
			Name:       "orthanc-" + name,
			Release:    opts.release,
			LuaScripts: []string{lua},
			StableAge:  opts.stableAge,
			Extra: map[string]any{"Stowline": map[string]any{
				"IngestUrl":   "http://" + s.ingestAddr + "/webhooks/orthanc",
				"IngestToken": "${STOWLINE_TEST_TOKEN}",
				"Source":      name,
			}},
			Env: []string{"STOWLINE_TEST_TOKEN=" + siteIngestToken},
		})
	}
	if len(opts.sources) == 1 {
		s.env["ORTHANC_URL"] = s.sources[opts.sources[0]].URL
		s.env["ORTHANC_SOURCE_NAME"] = opts.sources[0]
	} else {
		s.env["ORTHANC_SOURCES"] = strings.Join(opts.sources, ",")
		for _, name := range opts.sources {
			s.env["ORTHANC_"+strings.ToUpper(name)+"_URL"] = s.sources[name].URL
		}
	}
	return s
}

// startNATS runs the site's NATS server on a free TCP port until the
// test ends, and connects the test to it.
func (s *site) startNATS(t *testing.T) {
	t.Helper()
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "site", Port: -1}, nil)
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if s.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	s.env["NATS_URL"] = srv.ClientURL()
}

// destination returns the site's destination of that name.
func (s *site) destination(t *testing.T, name string) *siteDest {
	t.Helper()
	for _, d := range s.dests {
		if d.name == name {
			return d
		}
	}
	t.Fatalf("no destination %q", name)
	return nil
}

// start runs stowline until the returned stop is called or the test ends,
// and waits until it is ready and, with the reconciler on, has a cursor
// for every source.
func (s *site) start(t *testing.T) (stop func()) {
	t.Helper()
	p := testharness.StartProgram(t, "stowline", run, s.env)
	logs := p.Logs
	s.mu.Lock()
	s.logs = logs
	s.mu.Unlock()
	stop = func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stowline: %v", err)
		}
	}
	testharness.WaitHTTP(t, "http://"+s.ingestAddr+"/readyz", 30*time.Second)
	testharness.WaitHTTP(t, "http://"+s.fwdAddr+"/readyz", 30*time.Second)
	if s.env["RECONCILE_ENABLED"] != "false" {
		for name := range s.sources {
			// The cursor is stored before either line is logged.
			waitLog(t, logs, `"msg":"reconciler `, `cursor`, `"source":"`+name+`"`)
		}
	}
	return stop
}

// logText is what the stowline started last has logged.
func (s *site) logText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

// command runs a forwarder subcommand (app.RunReplay, app.RunBackfill...)
// with the site's configuration and returns its standard output.
func (s *site) command(t *testing.T, cmd func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error, args ...string) string {
	t.Helper()
	var stdout, stderr strings.Builder
	if err := cmd(t.Context(), args, func(k string) string { return s.env[k] }, &stdout, &stderr); err != nil {
		t.Fatalf("%q: %v\n%s\n%s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// waitLog waits for a log line that holds all of parts.
func waitLog(t *testing.T, logs *testharness.LogBuffer, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !testharness.HasLogLine(logs.String(), parts...) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with all of %q", parts)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// generate writes a study of n small instances (a new StudyInstanceUID
// unless uid is set).
func generate(t *testing.T, uid string, n int) []string {
	t.Helper()
	return generateSeries(t, uid, dicomgen.SeriesSpec{Instances: n})
}

// generateSeries writes a study of the given series (a new
// StudyInstanceUID unless uid is set).
func generateSeries(t *testing.T, uid string, series ...dicomgen.SeriesSpec) []string {
	t.Helper()
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: uid, PatientID: "SITE", PatientName: "Synthetic^Site",
		SeriesList: series, Rows: 16, Columns: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// sopUIDs returns the SOP Instance UIDs of DICOM files.
func sopUIDs(t *testing.T, files ...string) []string {
	t.Helper()
	out := make([]string, len(files))
	for i, f := range files {
		info, err := testharness.ReadFileInfo(f)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = info.SOPInstanceUID
	}
	return out
}

// send stores files in the source with storescu, as a modality would;
// every file must be accepted.
func send(t *testing.T, src *testharness.Orthanc, files ...string) {
	t.Helper()
	if res := src.StoreSCU(t, files...); len(res.Failed) > 0 {
		t.Fatalf("storescu: %d files refused: %v", len(res.Failed), res.Failed)
	}
}

// waitHolds waits until the destination's Orthanc holds every one of
// uids, and returns how long that took.
func (d *siteDest) waitHolds(t *testing.T, uids []string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		have := d.uids(t)
		missing := 0
		for _, u := range uids {
			if !have[u] {
				missing++
			}
		}
		if missing == 0 {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("destination %s lacks %d of %d instances after %s", d.name, missing, len(uids), timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// uids returns the SOP Instance UIDs the destination's Orthanc holds.
func (d *siteDest) uids(t *testing.T) map[string]bool {
	t.Helper()
	return orthancUIDs(t, d.orthanc)
}

// orthancUIDs returns the SOP Instance UIDs an Orthanc holds.
func orthancUIDs(t *testing.T, o *testharness.Orthanc) map[string]bool {
	t.Helper()
	var instances []struct{ MainDicomTags map[string]string }
	o.GetJSON(t, "/instances?expand", &instances)
	out := make(map[string]bool, len(instances))
	for _, in := range instances {
		out[in.MainDicomTags["SOPInstanceUID"]] = true
	}
	return out
}

// checkHolds checks that the destination holds exactly the instances of
// want (SOP Instance UID -> MD5 of the file at the source), byte for
// byte, and that none other ever reached it.
func (d *siteDest) checkHolds(t *testing.T, want map[string]string) {
	t.Helper()
	d.checkSums(t, d.orthanc.InstanceMD5s(t), want)
}

// checkDatasets is checkHolds comparing data sets only (the file meta
// group left out), for files whose source copy is gone.
func (d *siteDest) checkDatasets(t *testing.T, want map[string]string) {
	t.Helper()
	d.checkSums(t, d.orthanc.InstanceDatasetMD5s(t), want)
}

func (d *siteDest) checkSums(t *testing.T, got, want map[string]string) {
	t.Helper()
	for uid, sum := range want {
		switch g, ok := got[uid]; {
		case !ok:
			t.Errorf("destination %s lacks instance %s", d.name, uid)
		case g != sum:
			t.Errorf("destination %s: instance %s differs: md5 %s wanted, %s here", d.name, uid, sum, g)
		}
	}
	for uid := range got {
		if _, ok := want[uid]; !ok {
			t.Errorf("destination %s holds instance %s, which is not for it", d.name, uid)
		}
	}
	for uid := range d.proxy.Sends() {
		if _, ok := want[uid]; !ok {
			t.Errorf("instance %s was sent to destination %s, which it is not for", uid, d.name)
		}
	}
}

// fileDatasetMD5s maps the SOP Instance UID of each file to the MD5 of
// its data set.
func fileDatasetMD5s(t *testing.T, files ...string) map[string]string {
	t.Helper()
	uids := sopUIDs(t, files...)
	out := make(map[string]string, len(files))
	for i, f := range files {
		sum, err := testharness.FileDatasetMD5(f)
		if err != nil {
			t.Fatal(err)
		}
		out[uids[i]] = sum
	}
	return out
}

// subset returns the entries of m whose keys are in keys.
func subset(m map[string]string, keys ...[]string) map[string]string {
	out := map[string]string{}
	for _, ks := range keys {
		for _, k := range ks {
			if v, ok := m[k]; ok {
				out[k] = v
			}
		}
	}
	return out
}

// studyRef is a study in a source.
type studyRef struct{ source, id, lastUpdate string }

// stableStudies lists the studies of every source.
func (s *site) stableStudies(t *testing.T) []studyRef {
	t.Helper()
	var out []studyRef
	for _, name := range slices.Sorted(maps.Keys(s.sources)) {
		var studies []struct {
			ID         string
			LastUpdate string
			IsStable   bool
		}
		s.sources[name].GetJSON(t, "/studies?expand", &studies)
		for _, st := range studies {
			if !st.IsStable {
				continue
			}
			out = append(out, studyRef{name, st.ID, st.LastUpdate})
		}
	}
	return out
}

// waitRecorded waits until each named destination's ledger has recorded
// the current state of every study of every source (forwarded, or not
// selected by its rules), n studies in all, and its consumer has nothing
// pending or unacknowledged: the site has settled, nothing more will be
// sent. Needs siteOptions.nats.
func (s *site) waitRecorded(t *testing.T, n int, timeout time.Duration, destinations ...string) {
	t.Helper()
	ctx := t.Context()
	ledgers := map[string]*ledger.Ledger{}
	deadline := time.Now().Add(timeout)
	for {
		why := ""
		studies := s.stableStudies(t)
		if len(studies) != n {
			why = fmt.Sprintf("%d stable studies in the sources, want %d", len(studies), n)
		}
		for _, d := range destinations {
			if why != "" {
				break
			}
			if ledgers[d] == nil {
				l, err := ledger.Open(ctx, s.js, d)
				if err != nil {
					why = err.Error()
					break
				}
				ledgers[d] = l
			}
			for _, st := range studies {
				rec, err := ledgers[d].Lookup(ctx, st.source, st.id)
				if errors.Is(err, ledger.ErrNotRecorded) || (err == nil && rec.LastUpdate != st.lastUpdate) {
					why = fmt.Sprintf("destination %s has not recorded study %s of %s at %s", d, st.id, st.source, st.lastUpdate)
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if why == "" {
				why = s.consumerBusy(ctx, d)
			}
		}
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not settled after %s: %s", timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitIdle waits until the named destinations' consumers have nothing
// pending or unacknowledged.
func (s *site) waitIdle(t *testing.T, timeout time.Duration, destinations ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := ""
		for _, d := range destinations {
			if why = s.consumerBusy(t.Context(), d); why != "" {
				break
			}
		}
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not idle after %s: %s", timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// consumerBusy says what the destination's consumers (one per lane)
// still have to do, "" when nothing.
func (s *site) consumerBusy(ctx context.Context, destination string) string {
	for _, lane := range events.Priorities {
		name := natsjs.LaneConsumerName(destination, lane)
		c, err := s.js.Consumer(ctx, natsjs.EventStream, name)
		if err != nil {
			return fmt.Sprintf("consumer %s: %v", name, err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			return fmt.Sprintf("consumer %s: %v", name, err)
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Sprintf("consumer %s: %d pending, %d unacknowledged", name, info.NumPending, info.NumAckPending)
		}
	}
	return ""
}

// waitArrived waits until the destination holds n instances and nothing
// more can be forwarded (waitSettled), so that a duplicate forward would
// show, and checks that every instance arrived exactly once.
func (s *site) waitArrived(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	s.dest.WaitInstances(t, n, timeout)
	s.waitSettled(t, 30*time.Second)
	sends := s.proxy.Sends()
	if len(sends) != n {
		t.Errorf("%d instances reached the destination, want %d", len(sends), n)
	}
	for uid, k := range sends {
		if k != 1 {
			t.Errorf("instance %s was sent %d times", uid, k)
		}
	}
}

// waitSettled waits until stowline can forward nothing more: for every
// source the reconciler has read the change log to its end, no study waits
// to become stable and it has published (stored, or found already stored)
// an event for each of the source's studies; and the forwarder sends
// nothing and has settled as many studies as JetStream stored events
// (from the webhook and the reconciler). An event stored after that would
// have to come from a change Orthanc has not made. For a site of one
// destination.
func (s *site) waitSettled(t *testing.T, timeout time.Duration) {
	t.Helper()
	ingest, fwd := "http://"+s.ingestAddr+"/metrics", "http://"+s.fwdAddr+"/metrics"
	settled := func() (bool, string) {
		stored := metricValue(t, ingest, `stowline_ingest_events_received_total{result="accepted"}`)
		for name, src := range s.sources {
			var studies []string
			src.GetJSON(t, "/studies", &studies)
			label := `{source="` + name + `"}`
			lag := metricValue(t, ingest, `stowline_reconcile_lag_changes`+label)
			pending := metricValue(t, ingest, `stowline_reconcile_pending_studies`+label)
			rstored := metricValue(t, ingest, `stowline_reconcile_events_published_total{result="stored",source="`+name+`"}`)
			rdup := metricValue(t, ingest, `stowline_reconcile_events_published_total{result="duplicate",source="`+name+`"}`)
			if lag != 0 || pending != 0 || rstored+rdup < float64(len(studies)) {
				return false, fmt.Sprintf("source %s: lag %v, pending %v, published %v for %d studies", name, lag, pending, rstored+rdup, len(studies))
			}
			stored += rstored
		}
		inFlight := metricValue(t, fwd, `stowline_forwarder_studies_in_flight`)
		done := metricValue(t, fwd, `stowline_forwarder_studies_total{result="forwarded"}`) +
			metricValue(t, fwd, `stowline_forwarder_studies_total{result="dead_lettered"}`)
		if inFlight != 0 || done != stored {
			return false, fmt.Sprintf("forwarder: %v in flight, %v of %v stored events settled", inFlight, done, stored)
		}
		return true, ""
	}
	deadline := time.Now().Add(timeout)
	for {
		ok, why := settled()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not settled after %s: %s", timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitUntil gives ok up to timeout to hold, and reports nothing: the
// caller then checks, with its own messages, what ok waited for. For
// counters the forwarder bumps after its ack (buffer mode's deletes, a
// study's result): the consumers can be idle before they are.
func waitUntil(timeout time.Duration, ok func() bool) {
	for deadline := time.Now().Add(timeout); !ok() && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
}

// metricValue sums the samples of a metric whose labels include the
// given ones (e.g. `stowline_reconcile_lease_held{source="a"}`) on a
// /metrics endpoint.
func metricValue(t *testing.T, url, sample string) float64 {
	t.Helper()
	v, ok := testharness.Metric(t, url, sample)
	if !ok {
		t.Fatalf("metric %s not found at %s", sample, url)
	}
	return v
}
