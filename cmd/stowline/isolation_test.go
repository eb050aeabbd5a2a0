package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/testharness"
)

// One destination's outage delays no other: archive and ai, each with
// its own workers, credentials and transport, receive every study. While
// ai is down, each study still reaches the archive about as fast as with
// no outage (a generous bound: twice the slowest arrival without it, plus
// 3 s), and none reaches ai; once ai is back it catches up, and both hold
// every instance byte for byte. The outages: a storm of 503s, a server
// that takes uploads and never answers, and ai's token endpoint down with
// its tokens revoked. On one Orthanc release: the faults are at the
// destination.
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

			// Without an outage.
			before := newStudies(t, 3, 4)
			base := arrivals(t, src, before, archive, ai)
			slowest := max(slowestOf(base[archive]), slowestOf(base[ai]))
			bound := 2*slowest + 3*time.Second
			t.Logf("no outage: archive %v, ai %v; bound %v", base[archive], base[ai], bound)

			// ai down: the archive gets each study within the bound, ai
			// none.
			o.begin(ai)
			during := newStudies(t, 3, 4)
			got := arrivals(t, src, during, archive)
			t.Logf("ai down (%s): archive %v", o.name, got[archive])
			for i, d := range got[archive] {
				if d > bound {
					t.Errorf("study %d reached the archive after %v with ai down, %v without: delayed by ai's outage", i, d, slowest)
				}
			}
			have := ai.uids(t)
			for _, st := range during {
				for _, uid := range st.uids {
					if have[uid] {
						t.Fatalf("instance %s reached ai during its outage: the outage is not one", uid)
					}
				}
			}
			testharness.WaitFor(t, "ai's forwarders meet the outage", 10*time.Second, func() bool { return o.felt(ai) })
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
			var all []string
			for _, st := range during {
				all = append(all, st.uids...)
			}
			t.Logf("ai caught up %v after its outage ended", ai.waitHolds(t, all, time.Minute))
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

// arrivals sends the studies in one storescu run and returns, for each
// destination, how long after the run each study was whole there.
func arrivals(t *testing.T, src *testharness.Orthanc, studies []genStudy, dests ...*siteDest) map[*siteDest][]time.Duration {
	t.Helper()
	var files []string
	for _, st := range studies {
		files = append(files, st.files...)
	}
	send(t, src, files...)
	start := time.Now()
	out := map[*siteDest][]time.Duration{}
	for _, d := range dests {
		out[d] = make([]time.Duration, len(studies))
	}
	deadline := start.Add(time.Minute)
	for {
		waiting := 0
		for _, d := range dests {
			have := d.uids(t)
			for i, st := range studies {
				if out[d][i] != 0 {
					continue
				}
				whole := true
				for _, u := range st.uids {
					whole = whole && have[u]
				}
				if whole {
					out[d][i] = time.Since(start)
				} else {
					waiting++
				}
			}
		}
		if waiting == 0 {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d studies not whole at their destination after a minute: %v", waiting, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func slowestOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
