package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// One destination's outage holds no other back: archive and ai, each
// with its own workers, credentials and transport, receive every study.
// Once ai's forwarders have met its outage, every study sent after still
// reaches the archive and none reaches ai, ai still stuck (for "no
// answer", its request still held) when the archive holds the last; once
// ai is back it catches up, and both hold every instance byte for byte.
// The outages: a storm of 503s, a server that takes uploads and never
// answers, and ai's token endpoint down with its tokens revoked. On one
// Orthanc release: the faults are at the destination.
//
// The order is asserted, not a time: the archive is waited for while ai
// is blocked and the outage lasts until the test ends it, so an archive
// held back by ai never gets its studies, however slow the machine. A
// bound on the archive's arrivals (twice those without an outage, plus
// 3 s) failed whenever the process froze about 6 s.
func TestDestinationOutageDelaysNoOther(t *testing.T) {
	// tokenRequests is how many requests ai's token endpoint had when
	// its outage began.
	var tokenRequests int
	outages := []struct {
		name       string
		begin, end func(d *siteDest)
		// felt reports that the outage reached ai's forwarders.
		felt func(d *siteDest) bool
	}{
		{
			name:  "503 storm",
			begin: func(d *siteDest) { d.proxy.SetStatus(http.StatusServiceUnavailable, "storm") },
			end:   func(d *siteDest) { d.proxy.SetStatus(0, "") },
			felt:  func(d *siteDest) bool { return d.proxy.Refused() > 0 },
		},
		{
			name:  "no answer",
			begin: func(d *siteDest) { d.proxy.Hang() },
			end:   func(d *siteDest) { d.proxy.Release() },
			felt:  func(d *siteDest) bool { return d.proxy.Held() > 0 },
		},
		{
			name: "token endpoint down",
			begin: func(d *siteDest) {
				tokenRequests = d.idp.TokenRequests()
				d.idp.SetDown(true)
				d.idp.RevokeIssued()
			},
			end: func(d *siteDest) { d.idp.SetDown(false) },
			// The gate refused a revoked token, or the forwarder, whose
			// token was near its refresh, asked the endpoint that is down.
			felt: func(d *siteDest) bool { return d.gate.Rejected() > 0 || d.idp.TokenRequests() > tokenRequests },
		},
	}
	for _, o := range outages {
		t.Run(o.name, func(t *testing.T) {
			t.Parallel()
			testharness.RequireBinary(t, "storescu")
			s := newSiteWith(t, siteOptions{destinations: []string{"archive", "ai"}, oauth: true, nats: true})
			archive, ai := s.destination(t, "archive"), s.destination(t, "ai")
			s.env["FORWARDER_RETRY_MAX_DELAY"] = "2s"
			s.start(t)
			src := s.sources["main"]

			// Without an outage: both take studies.
			before := newStudies(t, 3, 4)
			beforeUIDs := sendStudies(t, src, before)
			archive.waitHolds(t, beforeUIDs, time.Minute)
			ai.waitHolds(t, beforeUIDs, time.Minute)

			// ai down: once a study has met the outage at ai's
			// forwarders, the studies sent after reach the archive, ai
			// none.
			o.begin(ai)
			during := newStudies(t, 3, 4)
			sendStudies(t, src, during[:1])
			testharness.WaitFor(t, "ai's forwarders meet the outage", 30*time.Second, func() bool { return o.felt(ai) })
			duringUIDs := append(sendStudies(t, src, during[1:]), during[0].uids...)
			t.Logf("ai down (%s): the archive got every study in %v", o.name, archive.waitHolds(t, duringUIDs, time.Minute))
			// felt again: "no answer" holds what it holds until its end,
			// so ai was stuck the whole time the archive took them.
			if !o.felt(ai) {
				t.Errorf("ai's forwarders no longer meet the outage (%s) once the archive holds every study", o.name)
			}
			have := ai.uids(t)
			for _, uid := range duringUIDs {
				if have[uid] {
					t.Fatalf("instance %s reached ai during its outage: the outage is not one", uid)
				}
			}
			// The queue metrics tell which destination is behind.
			ingest := "http://" + s.ingestAddr + "/metrics"
			queued := func(d string) float64 {
				p, _ := testharness.Metric(t, ingest, `stowline_queue_pending_events{destination="`+d+`"}`)
				a, _ := testharness.Metric(t, ingest, `stowline_queue_ack_pending_events{destination="`+d+`"}`)
				return p + a
			}
			testharness.WaitFor(t, "the queue metrics show ai's studies queued and none of the archive's", 10*time.Second, func() bool {
				return queued("ai") == float64(len(during)) && queued("archive") == 0
			})

			// ai back: it catches up, nothing lost.
			o.end(ai)
			t.Logf("ai caught up %v after its outage ended", ai.waitHolds(t, duringUIDs, time.Minute))
			s.waitRecorded(t, len(before)+len(during), 30*time.Second, "archive", "ai")
			want := src.InstanceMD5s(t)
			archive.checkHolds(t, want)
			ai.checkHolds(t, want)
		})
	}
}

// genStudy is a generated study: its files and SOP Instance UIDs.
type genStudy struct{ files, uids []string }

// newStudies generates n studies of size instances each.
func newStudies(t *testing.T, n, size int) []genStudy {
	t.Helper()
	out := make([]genStudy, n)
	for i := range out {
		out[i].files = generate(t, "", size)
		out[i].uids = sopUIDs(t, out[i].files...)
	}
	return out
}

// sendStudies stores the studies in the source in one storescu run and
// returns the SOP Instance UIDs of their instances.
func sendStudies(t *testing.T, src *testharness.Orthanc, studies []genStudy) []string {
	t.Helper()
	var files, uids []string
	for _, st := range studies {
		files = append(files, st.files...)
		uids = append(uids, st.uids...)
	}
	send(t, src, files...)
	return uids
}
