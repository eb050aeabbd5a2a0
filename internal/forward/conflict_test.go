package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
)

// The answers no real server in CI gives: Azure's upsert with PUT, AWS
// HealthImaging's non-primary image set, and a destination that still
// conflicts after the instance was deleted.
func TestConflictAnswersOfClouds(t *testing.T) {
	const sop = "1.2.3.1" // newMemSource(1)
	failed := func(status, reason int) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/dicom+json")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[%d]}}]}}`, sop, reason)
		}
	}
	stored := func(retrieve string) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/dicom+json")
			fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":[%q]},"00081190":{"vr":"UR","Value":[%q]}}]}}`, sop, retrieve)
		}
	}
	tests := []struct {
		name       string
		policy     ConflictPolicy
		answers    map[string]func(http.ResponseWriter) // by method
		wantDead   string                               // substring of the reason; "" acks
		wantCalls  string
		wantMetric string
	}{
		{name: "azure upsert", policy: ConflictPolicy{Action: ConflictReplace, Method: ReplacePut},
			answers:   map[string]func(http.ResponseWriter){"POST": failed(409, dicomweb.FailureAzureAlreadyExists), "PUT": stored("")},
			wantCalls: "POST PUT", wantMetric: "replaced"},
		{name: "azure upsert answered later", policy: ConflictPolicy{Action: ConflictReplace, Method: ReplacePut},
			// The PUT goes again as a PUT: a POST never replaces, and was
			// refused as still held after the replacement.
			answers: map[string]func(http.ResponseWriter){"POST": failed(409, dicomweb.FailureAzureAlreadyExists),
				"PUT": firstThen(failed(409, dicomweb.FailureAzureBeingCreated), stored(""))},
			wantCalls: "POST PUT PUT", wantMetric: "replaced"},
		{name: "aws non-primary image set", policy: ConflictPolicy{Action: ConflictSkip},
			// Not listed by a search without imageSetId (QIDO-RS GET):
			// not in the primary image set.
			answers: map[string]func(http.ResponseWriter){"POST": stored("https://dicom-medical-imaging.us-east-1.amazonaws.com/datastore/d/studies/1.2.3/series/1/instances/1.2.3.1?imageSetId=abc"),
				"GET": func(w http.ResponseWriter) {
					w.Header().Set("Content-Type", "application/dicom+json")
					fmt.Fprint(w, `[]`)
				}},
			wantDead: "non-primary image set", wantCalls: "POST GET"},
		{name: "still a conflict after delete", policy: ConflictPolicy{Action: ConflictReplace, Method: ReplaceDelete},
			// 272 in a 409 is a conflict when the destination lists the
			// instance (QIDO-RS GET): this one still does after the DELETE.
			answers: map[string]func(http.ResponseWriter){"POST": failed(409, dicomweb.FailureProcessing), "DELETE": func(w http.ResponseWriter) { w.WriteHeader(204) },
				"GET": func(w http.ResponseWriter) {
					w.Header().Set("Content-Type", "application/dicom+json")
					fmt.Fprintf(w, `[{"00080018":{"vr":"UI","Value":[%q]}}]`, sop)
				}},
			wantDead: "still so after replacing it with delete", wantCalls: "POST GET DELETE POST GET", wantMetric: "dead_lettered"},
		{name: "272 without 409 stays transient", policy: ConflictPolicy{Action: ConflictDeadLetter},
			answers:  map[string]func(http.ResponseWriter){"POST": failed(202, dicomweb.FailureProcessing)},
			wantDead: "refused transiently", wantCalls: "POST POST",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls requestLog
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.add(r.Method)
				tt.answers[r.Method](w)
			}))
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			dls := &memDeadLetters{}
			tt.policy.Rules = []dicomweb.ConflictRule{{Code: dicomweb.FailureAzureAlreadyExists, Mask: 0xFFFF},
				{Code: dicomweb.FailureProcessing, Mask: 0xFFFF, Only409: true}}
			f := newForwarder(t, newMemSource(1), srv.URL, cons, func(o *Options) {
				o.DeadLetters = dls
				o.MaxDeliveries = 1
				o.InstanceRetries = 1
				o.InstanceRetryDelay = 10e6
				o.Conflicts = tt.policy
			})
			forwardOne(t, f, ns, cons, testEvent())
			letters := dls.all()
			switch {
			case tt.wantDead == "" && len(letters) > 0:
				t.Errorf("dead-lettered: %s", letters[0].Reason)
			case tt.wantDead != "" && (len(letters) != 1 || !strings.Contains(letters[0].Reason, tt.wantDead) || !strings.Contains(letters[0].Reason, sop)):
				t.Errorf("dead letters %+v, want one naming %s: %q", letters, sop, tt.wantDead)
			}
			if got := calls.joined(" "); got != tt.wantCalls {
				t.Errorf("requests %q, want %q", got, tt.wantCalls)
			}
			if tt.wantMetric != "" {
				if got := testutil.ToFloat64(f.m.conflicts.WithLabelValues(tt.wantMetric)); got != 1 {
					t.Errorf("conflicts{action=%q} = %v, want 1", tt.wantMetric, got)
				}
			}
			if strings.HasPrefix(tt.name, "still a conflict") {
				// Refused again: not replaced, whatever replaced it sent.
				if got := testutil.ToFloat64(f.m.conflicts.WithLabelValues("replaced")); got != 0 {
					t.Errorf("conflicts{action=replaced} = %v for an instance still refused, want 0", got)
				}
			}
			if strings.Contains(tt.name, "non-primary") {
				if got := testutil.ToFloat64(f.m.nonPrimary); got != 1 || letters[0].Class != Conflict {
					t.Errorf("non-primary metric %v, class %q; want 1, conflict", got, letters[0].Class)
				}
			}
		})
	}
}

// Azure's DICOM service lists a file it could not read in the
// FailedSOPSequence without its UIDs, with the Failure Reason only
// (conformance statement v2: the UIDs are there "if the DICOM file
// attempting to be stored could be read"); a 409 with 43264 and no UID
// is what it answers then. The dead letter said only "not listed in the
// destination's HTTP 409 response", hiding why; it now gives the
// destination's reason.
//
// In a 202 beside the instances stored (two sent, one stored), the
// unlisted instance is refused for good at once: it was sent again in
// every round of every delivery, hours with the defaults, and the dead
// letter, transient, lost the reason.
func TestFailureWithoutUIDNamedInDeadLetter(t *testing.T) {
	for _, tt := range []struct {
		name      string
		status    int
		seq       string // FailedSOPSequence, OtherFailuresSequence
		instances int
		reasons   []int // the unnamed failures' (43264 without)
		retried   bool  // sent again: the answer does not say the unlisted are refused
	}{
		{name: "409 00081198", status: http.StatusConflict, seq: "00081198", instances: 1},
		{name: "409 0008119A", status: http.StatusConflict, seq: "0008119A", instances: 1},
		{name: "202 00081198", status: http.StatusAccepted, seq: "00081198", instances: 2},
		// Two left out, one failure told: which is it?
		{name: "202, fewer failures than left out", status: http.StatusAccepted, seq: "00081198", instances: 3, retried: true},
		{name: "202, a processing failure", status: http.StatusAccepted, seq: "00081198", instances: 2, reasons: []int{0x0110}, retried: true},
		{name: "202, transfer syntax not supported", status: http.StatusAccepted, seq: "00081198", instances: 2, reasons: []int{0xC122}, retried: true},
		// A 409 storing none, for a reason that says "later".
		{name: "409, out of resources", status: http.StatusConflict, seq: "00081198", instances: 1, reasons: []int{0xA700}, retried: true},
		{name: "409, being created", status: http.StatusConflict, seq: "00081198", instances: 1, reasons: []int{dicomweb.FailureAzureBeingCreated}, retried: true},
		// One refusal for good among them: which instance is it?
		{name: "409, out of resources and failed validation", status: http.StatusConflict, seq: "00081198", instances: 1, reasons: []int{43264, 0xA700}},
		// A status that says "later", with one instance stored.
		{name: "503 naming one stored", status: http.StatusServiceUnavailable, seq: "00081198", instances: 2, retried: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var requests atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				w.Header().Set("Content-Type", "application/dicom+json")
				w.WriteHeader(tt.status)
				stored := ""
				if tt.status != http.StatusConflict {
					stored = `"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3.1"]}}]},`
				}
				reasons := tt.reasons
				if reasons == nil {
					reasons = []int{43264}
				}
				var items []string
				for _, r := range reasons {
					items = append(items, fmt.Sprintf(`{"00081197":{"vr":"US","Value":[%d]}}`, r))
				}
				fmt.Fprintf(w, `{%s%q:{"vr":"SQ","Value":[%s]}}`, stored, tt.seq, strings.Join(items, ","))
			}))
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			dls := &memDeadLetters{}
			f := newForwarder(t, newMemSource(tt.instances), srv.URL, cons, func(o *Options) {
				o.DeadLetters = dls
				o.MaxDeliveries = 1
				o.InstanceRetries = 2
				o.InstanceRetryDelay = 10e6
			})
			forwardOne(t, f, ns, cons, testEvent())
			if tt.retried {
				if got := requests.Load(); got != 3 {
					t.Errorf("%d STOW requests, want 3: the instances left out sent again in each round", got)
				}
				return
			}
			if got := requests.Load(); got != 1 {
				t.Errorf("%d STOW requests, want 1: the instance is refused for good", got)
			}
			letters := dls.all()
			if len(letters) != 1 || len(letters[0].Failures) != 1 || letters[0].Class == Transient {
				t.Fatalf("dead letters %+v, want one, not transient, naming the instance", letters)
			}
			l := letters[0]
			for _, want := range []string{"43264", "0xA900", "failed validation"} {
				if !strings.Contains(l.Failures[0].Text, want) || !strings.Contains(l.Reason, want) {
					t.Errorf("reason %q, instance text %q: want %q in both", l.Reason, l.Failures[0].Text, want)
				}
			}
		})
	}
}

// A status that says the destination is down (500, 502, 503, 504, 424),
// whose STOW body names no instance (failures without a SOP Instance
// UID only), fails the whole request as the outage it is, for the
// circuit breaker to count: read per instance, each was retried in the
// instance rounds, the breaker never saw the error and every study spent
// its deliveries.
func TestOutageWithUnnamedFailuresIsTheWholeRequests(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/dicom+json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"0008119A":{"vr":"SQ","Value":[{"00081197":{"vr":"US","Value":[42752]}}]}}`)
	}))
	t.Cleanup(srv.Close)
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	f := newForwarder(t, newMemSource(2), srv.URL, cons, func(o *Options) {
		o.DeadLetters = dls
		o.MaxDeliveries = 1
		o.InstanceRetries = 2
		o.InstanceRetryDelay = 10e6
	})
	forwardOne(t, f, ns, cons, testEvent())
	if got := requests.Load(); got != 1 {
		t.Errorf("%d STOW requests, want 1: the 503 fails the request, not its instances one by one", got)
	}
	if letters := dls.all(); len(letters) != 1 || !strings.Contains(letters[0].Reason, "503") || letters[0].Class != Transient {
		t.Errorf("dead letters %+v, want one, transient, giving the 503", letters)
	}
}

// A request the destination, or a proxy in front of it, refuses as too
// large (413; nginx takes 1 MB by default; IIS request filtering answers
// 404.13 over 30,000,000 bytes) is permanent: the dead letter says how
// large it was and what to change, lower the destination's
// STOW_MAX_BYTES or raise the limit, which alone helps one instance. It
// said only "server answered 413 Request Entity Too Large" and the
// proxy's page; IIS's 404.13 was taken for the destination refusing
// every request, retried at every delivery.
func TestTooLargeNamesWhatToChange(t *testing.T) {
	const (
		nginx413 = "<html><head><title>413 Request Entity Too Large</title></head><body><center><h1>413 Request Entity Too Large</h1></center><hr><center>nginx</center></body></html>"
		iis40413 = `<!DOCTYPE html><html><head><title>IIS 10.0 Detailed Error - 404.13 - Not Found</title></head><body><div id="content">` +
			`<h3>HTTP Error 404.13 - Not Found</h3><h4>The request filtering module is configured to deny a request that exceeds the request content length.</h4>` +
			`<ul><li>Verify the configuration/system.webServer/security/requestFiltering/requestLimits@maxAllowedContentLength setting in the applicationhost.config or web.config file.</li></ul></div></body></html>`
	)
	for _, tt := range []struct {
		name      string
		status    int
		body      string
		instances int
		want      []string
	}{
		{"nginx 413, 3 instances", http.StatusRequestEntityTooLarge, nginx413, 3, []string{"413", "3 instances", "about 3072 bytes", "lower DESTINATION_ARCHIVE_STOW_MAX_BYTES (at least 1 MiB), now 1048576 bytes"}},
		{"nginx 413, 1 instance", http.StatusRequestEntityTooLarge, nginx413, 1, []string{"413", "one instance, 1.2.3.1, about 1024 bytes", "raise that limit"}},
		{"IIS 404.13, 3 instances", http.StatusNotFound, iis40413, 3, []string{"404", "3 instances", "lower DESTINATION_ARCHIVE_STOW_MAX_BYTES"}},
		{"IIS 404.13, 1 instance", http.StatusNotFound, iis40413, 1, []string{"404", "one instance, 1.2.3.1", "raise that limit"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			}))
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			dls := &memDeadLetters{}
			f := newForwarder(t, newMemSource(tt.instances), srv.URL, cons, func(o *Options) {
				o.DeadLetters = dls
				o.MaxDeliveries = 5
				o.MaxBytesVar = "DESTINATION_ARCHIVE_STOW_MAX_BYTES"
			})
			forwardOne(t, f, ns, cons, testEvent())
			letters := dls.all()
			if len(letters) != 1 || letters[0].Class != Permanent || letters[0].Attempts != 1 {
				t.Fatalf("dead letters %+v, want one, permanent, at the first delivery", letters)
			}
			for _, want := range tt.want {
				if !strings.Contains(letters[0].Reason, want) {
					t.Errorf("reason %q, want %q in it", letters[0].Reason, want)
				}
			}
			// The answer as it came, for the operator to read.
			if want := fmt.Sprintf("HTTP %d text/html: %s", tt.status, tt.body); letters[0].LastResponse != want {
				t.Errorf("last response %q, want %q", letters[0].LastResponse, want)
			}
		})
	}
}

// firstThen answers first once, then always then.
func firstThen(first, then func(http.ResponseWriter)) func(http.ResponseWriter) {
	var answered atomic.Bool
	return func(w http.ResponseWriter) {
		if answered.Swap(true) {
			then(w)
			return
		}
		first(w)
	}
}

// failedAnswer is a STOW answer of status naming each of sops failed with
// reason.
func failedAnswer(w http.ResponseWriter, status, reason int, sops ...string) {
	failed := make([]failedSOP, len(sops))
	for i, sop := range sops {
		failed[i] = failedSOP{sop, reason}
	}
	failedAnswerEach(w, status, failed...)
}

// failedSOP is an instance of a STOW answer's FailedSOPSequence.
type failedSOP struct {
	uid    string
	reason int
}

// failedAnswerEach is a STOW answer of status naming each of failed
// with its own reason.
func failedAnswerEach(w http.ResponseWriter, status int, failed ...failedSOP) {
	items := make([]string, len(failed))
	for i, in := range failed {
		items[i] = fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[%d]}}`, in.uid, in.reason)
	}
	w.Header().Set("Content-Type", "application/dicom+json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"00081198":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
}

// storedAnswer is a STOW answer naming each of sops stored.
func storedAnswer(w http.ResponseWriter, sops ...string) {
	items := make([]string, len(sops))
	for i, sop := range sops {
		items[i] = fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]}}`, sop)
	}
	w.Header().Set("Content-Type", "application/dicom+json")
	fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[%s]}}`, strings.Join(items, ","))
}

// memSourceUIDsIn names the instances of newMemSource a STOW body
// carries: instance i's file is 1024 bytes of i.
func memSourceUIDsIn(body []byte, n int) []string {
	var out []string
	for i := range n {
		if bytes.Contains(body, bytes.Repeat([]byte{byte(i)}, 1024)) {
			out = append(out, fmt.Sprintf("1.2.3.%d", i+1))
		}
	}
	return out
}

// requestLog records what a fake destination was sent, from its
// handler's goroutines.
type requestLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *requestLog) add(call string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, call)
}

// joined is the calls so far, in order, separated by sep.
func (l *requestLog) joined(sep string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.calls, sep)
}

// conflictForwarder forwards newMemSource(instances) to url, taking
// Azure's "already exists" (45070) for a conflict settled by policy, up
// to maxDeliveries, its dead letters in memory. No instance retries: the
// requests a delivery sends are only those its conflicts call for.
func conflictForwarder(t *testing.T, url string, instances, maxDeliveries int, policy ConflictPolicy) (*Forwarder, *testnats.Server, jetstream.Consumer, *memDeadLetters) {
	t.Helper()
	ns := testnats.Start(t)
	cons := consumer(t, ns)
	dls := &memDeadLetters{}
	policy.Rules = azureConflicts(policy.Action).Rules
	f := newForwarder(t, newMemSource(instances), url, cons, func(o *Options) {
		o.DeadLetters = dls
		o.MaxDeliveries = maxDeliveries
		o.InstanceRetries = 0
		o.Conflicts = policy
	})
	return f, ns, cons, dls
}

// onlyLetter is the one dead letter of dls; the test fails without it.
func onlyLetter(t *testing.T, dls *memDeadLetters) DeadLetter {
	t.Helper()
	letters := dls.all()
	if len(letters) != 1 {
		t.Fatalf("%d dead letters, want 1", len(letters))
	}
	return letters[0]
}

// wantReasonHas checks that reason holds each of wants.
func wantReasonHas(t *testing.T, reason string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(reason, want) {
			t.Errorf("reason %q, want %q in it", reason, want)
		}
	}
}

// wantConflicts checks conflicts{action} of f.
func wantConflicts(t *testing.T, f *Forwarder, action string, want float64) {
	t.Helper()
	if got := testutil.ToFloat64(f.m.conflicts.WithLabelValues(action)); got != want {
		t.Errorf("conflicts{action=%q} = %v, want %v", action, got, want)
	}
}

// Replace by DELETE deleted instances one after another, and a DELETE
// that failed returned at once: the instances deleted before it were
// never stored again by the delivery, which was dead-lettered naming
// only the failed DELETE, and the archive was left without them. They
// are now stored again before the delivery fails; those that could not
// be are named, and the failure is transient (the next delivery stores
// them: they no longer conflict).
func TestReplaceByDeleteStoresAgainWhatItDeleted(t *testing.T) {
	const first, second = "1.2.3.1", "1.2.3.2" // newMemSource(2)
	tests := []struct {
		name string
		// deleteFirst answers the DELETE of first (0: 204).
		deleteFirst int
		// storeAgain answers the POST after the DELETEs.
		storeAgain func(w http.ResponseWriter)
		wantClass  Class
		// wantReason: substrings of the dead letter's reason.
		wantReason []string
		// wantNamed: the letter names first as deleted, not stored again.
		wantNamed bool
	}{
		{name: "stored again", storeAgain: func(w http.ResponseWriter) { storedAnswer(w, first) },
			wantClass: Permanent, wantReason: []string{"replace instance " + second, "delete it at the destination"}},
		{name: "not stored again", storeAgain: func(w http.ResponseWriter) { failedAnswer(w, http.StatusAccepted, 0xA700, first) },
			wantClass: Transient, wantReason: []string{"1 instances deleted at the destination to replace them, not stored again: " + first, "replace instance " + second},
			wantNamed: true},
		// The archive holds first under another study or series: the
		// DELETE at the source's answers 404, counted deleted, and the
		// POST conflicts again. It was never deleted: held, dead-lettered
		// at once with the DELETE's refusal, not retried as missing at
		// every delivery up to the limit.
		{name: "delete did not take", deleteFirst: http.StatusNotFound,
			storeAgain: func(w http.ResponseWriter) {
				failedAnswer(w, http.StatusConflict, dicomweb.FailureAzureAlreadyExists, first)
			},
			wantClass: Permanent, wantReason: []string{"replace instance " + second, "delete it at the destination",
				"destination already holds 1 instances with other content", "still so after replacing it with delete"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls requestLog
			var posts atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				switch r.Method {
				case http.MethodPost:
					calls.add("POST " + strings.Join(memSourceUIDsIn(body, 2), ","))
					if posts.Add(1) == 1 {
						failedAnswer(w, http.StatusConflict, dicomweb.FailureAzureAlreadyExists, first, second)
						return
					}
					tt.storeAgain(w)
				case http.MethodDelete:
					sop := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
					calls.add("DELETE " + sop)
					switch {
					case sop == second:
						w.WriteHeader(http.StatusConflict)
					case tt.deleteFirst != 0:
						w.WriteHeader(tt.deleteFirst)
					default:
						w.WriteHeader(http.StatusNoContent)
					}
				default:
					calls.add(r.Method)
					w.WriteHeader(http.StatusMethodNotAllowed)
				}
			}))
			t.Cleanup(srv.Close)
			f, ns, cons, dls := conflictForwarder(t, srv.URL, 2, 1, ConflictPolicy{Action: ConflictReplace, Method: ReplaceDelete})
			forwardOne(t, f, ns, cons, testEvent())
			if got, want := calls.joined("; "), "POST 1.2.3.1,1.2.3.2; DELETE 1.2.3.1; DELETE 1.2.3.2; POST 1.2.3.1"; got != want {
				t.Errorf("requests %q, want %q: what was deleted is stored again", got, want)
			}
			l := onlyLetter(t, dls)
			if l.Class != tt.wantClass {
				t.Errorf("class %q, want %q (reason %q)", l.Class, tt.wantClass, l.Reason)
			}
			wantReasonHas(t, l.Reason, tt.wantReason...)
			named := slices.ContainsFunc(l.Failures, func(in Instance) bool {
				return in.SOPInstanceUID == first && strings.Contains(in.Text, "deleted at the destination")
			})
			if named != tt.wantNamed {
				t.Errorf("failures %+v: %s named deleted and not stored again: %v, want %v", l.Failures, first, named, tt.wantNamed)
			}
			// Stored again, it was replaced; the DELETE refused
			// replaced nothing.
			wantReplaced := 1.0
			if tt.wantNamed || tt.deleteFirst != 0 {
				wantReplaced = 0
			}
			wantConflicts(t, f, "replaced", wantReplaced)
			// Held after its DELETE, first is a conflict of the letter.
			wantDead := 0.0
			if tt.deleteFirst != 0 {
				wantDead = 1
			}
			wantConflicts(t, f, "dead_lettered", wantDead)
		})
	}
}

// deadLettersFailingOnce refuses the first letter, as a dead-letter
// stream out of space would: the event stays queued.
type deadLettersFailingOnce struct {
	memDeadLetters
	refused atomic.Bool
}

func (d *deadLettersFailingOnce) Add(ctx context.Context, l *DeadLetter) (uint64, bool, error) {
	if d.refused.CompareAndSwap(false, true) {
		return 0, false, errors.New("dead-letter stream full")
	}
	return d.memDeadLetters.Add(ctx, l)
}

// The conflicts metric counts each instance once for what was done with
// it: a replacement STOW_VERIFY=qido sends again (the destination did not
// list it yet) was counted replaced at each round; a conflict was counted
// dead-lettered when its letter was built, again at each delivery whose
// letter was not stored.
func TestConflictsCountedOnce(t *testing.T) {
	const sop = "1.2.3.1" // newMemSource(1)
	tests := []struct {
		name     string
		policy   ConflictPolicy
		verifier Verifier
		letters  func() DeadLetterStore
		// wantCalls are the requests; want the conflicts metric.
		wantCalls string
		want      map[string]float64
	}{
		{name: "replacement sent again by verification", policy: ConflictPolicy{Action: ConflictReplace, Method: ReplacePut},
			// Listed from the second QIDO-RS on: the first round's
			// replacement is sent again, by PUT again.
			verifier:  &fakeVerifier{all: []string{sop}, lost: []string{sop}, listFrom: 2},
			letters:   func() DeadLetterStore { return &memDeadLetters{} },
			wantCalls: "POST PUT PUT", want: map[string]float64{"replaced": 1, "dead_lettered": 0}},
		{name: "dead letter stored at the second delivery", policy: ConflictPolicy{Action: ConflictDeadLetter},
			letters:   func() DeadLetterStore { return &deadLettersFailingOnce{} },
			wantCalls: "POST POST", want: map[string]float64{"replaced": 0, "dead_lettered": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls requestLog
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.add(r.Method)
				switch r.Method {
				case http.MethodPost:
					failedAnswer(w, http.StatusConflict, dicomweb.FailureAzureAlreadyExists, sop)
				case http.MethodPut:
					storedAnswer(w, sop)
				default:
					w.WriteHeader(http.StatusMethodNotAllowed)
				}
			}))
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			tt.policy.Rules = azureConflicts(tt.policy.Action).Rules
			f := newForwarder(t, newMemSource(1), srv.URL, cons, func(o *Options) {
				o.DeadLetters = tt.letters()
				o.MaxDeliveries = 2
				o.InstanceRetries = 1
				o.InstanceRetryDelay = 10e6
				o.RetryDelay, o.RetryMaxDelay = 100*time.Millisecond, 100*time.Millisecond
				o.Conflicts = tt.policy
				o.Verifier = tt.verifier
			})
			forwardOne(t, f, ns, cons, testEvent())
			if got := calls.joined(" "); got != tt.wantCalls {
				t.Errorf("requests %q, want %q", got, tt.wantCalls)
			}
			for action, want := range tt.want {
				wantConflicts(t, f, action, want)
			}
		})
	}
}

// A delivery that found a conflict and failed transiently for another
// instance gave up at the limit with the conflict named in Instances
// only, not in its reason, and never counted dead_lettered, which the
// metric promises once its letter is stored.
func TestTransientFailureCountsConflicts(t *testing.T) {
	const held, failing = "1.2.3.1", "1.2.3.2" // newMemSource(2)
	tests := []struct {
		name   string
		reason int // failing's, at each POST
		want   string
	}{
		{name: "out of resources", reason: 0xA700, want: "refused them for lack of resources"},
		{name: "refused transiently", reason: dicomweb.FailureProcessing, want: "refused transiently"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost {
					w.WriteHeader(http.StatusMethodNotAllowed)
					return
				}
				_, _ = io.Copy(io.Discard, r.Body)
				failedAnswerEach(w, http.StatusConflict, failedSOP{held, dicomweb.FailureAzureAlreadyExists}, failedSOP{failing, tt.reason})
			}))
			t.Cleanup(srv.Close)
			f, ns, cons, dls := conflictForwarder(t, srv.URL, 2, 1, ConflictPolicy{Action: ConflictDeadLetter})
			forwardOne(t, f, ns, cons, testEvent())
			l := onlyLetter(t, dls)
			if l.Class != Transient {
				t.Errorf("class %q, want %q (reason %q)", l.Class, Transient, l.Reason)
			}
			wantReasonHas(t, l.Reason, tt.want, "destination already holds 1 instances with other content (STOW_ON_CONFLICT=deadletter): "+held)
			if !slices.ContainsFunc(l.Failures, func(in Instance) bool { return in.SOPInstanceUID == held }) {
				t.Errorf("failures %+v: %s not named", l.Failures, held)
			}
			wantConflicts(t, f, "dead_lettered", 1)
		})
	}
}

// An instance deleted to replace it whose store again is refused for
// good was listed twice in the letter: as refused, and as deleted and
// not stored again. Once now, with both texts. And it was made
// transient: the next delivery stored it as new, was refused the same,
// and its letter no longer said the archive had lost it. Now the first
// delivery's letter is the partial one, and says so.
func TestReplaceByDeleteRefusedAgainNamedOnce(t *testing.T) {
	const sop = "1.2.3.1" // newMemSource(1)
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch r.Method {
		case http.MethodPost:
			if posts.Add(1) == 1 {
				failedAnswer(w, http.StatusConflict, dicomweb.FailureAzureAlreadyExists, sop)
				return
			}
			failedAnswer(w, http.StatusConflict, 0xC000, sop)
		case http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	}))
	t.Cleanup(srv.Close)
	f, ns, cons, dls := conflictForwarder(t, srv.URL, 1, 3, ConflictPolicy{Action: ConflictReplace, Method: ReplaceDelete})
	forwardOneWithin(t, f, ns, cons, testEvent(), 60*time.Second)
	l := onlyLetter(t, dls)
	if l.Class != Partial || l.Attempts != 1 || len(l.Failures) != 1 {
		t.Fatalf("class %q at delivery %d, failures %+v: want partial at delivery 1, %s once", l.Class, l.Attempts, l.Failures, sop)
	}
	const lost = "storing it again was refused for good: the archive no longer holds it"
	if in := l.Failures[0]; in.SOPInstanceUID != sop || in.FailureReason != 0xC000 || !strings.Contains(in.Text, "deleted at the destination") || !strings.Contains(in.Text, lost) {
		t.Errorf("failure %+v: want %s refused (0xC000), deleted, %q", in, sop, lost)
	}
	if !strings.Contains(l.Reason, "the archive no longer holds them") {
		t.Errorf("reason %q does not say the archive lost the deleted instance", l.Reason)
	}
	if got := posts.Load(); got != 2 {
		t.Errorf("%d POSTs, want 2 (one delivery)", got)
	}
}

// The same amid a conflict held after its replacement: the letter is the
// conflict one (class conflict, at the first delivery), and still says
// the archive lost the instance deleted and refused when stored again;
// retried as transient, the next deliveries would find it new, be
// refused the same, and no longer say so.
func TestReplaceByDeleteRefusedAgainAmidConflicts(t *testing.T) {
	const refused, held = "1.2.3.1", "1.2.3.2" // newMemSource(2)
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch r.Method {
		case http.MethodPost:
			if posts.Add(1) == 1 {
				failedAnswer(w, http.StatusConflict, dicomweb.FailureAzureAlreadyExists, refused, held)
				return
			}
			failedAnswerEach(w, http.StatusConflict, failedSOP{refused, 0xC000}, failedSOP{held, dicomweb.FailureAzureAlreadyExists})
		case http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	}))
	t.Cleanup(srv.Close)
	f, ns, cons, dls := conflictForwarder(t, srv.URL, 2, 3, ConflictPolicy{Action: ConflictReplace, Method: ReplaceDelete})
	forwardOneWithin(t, f, ns, cons, testEvent(), 60*time.Second)
	l := onlyLetter(t, dls)
	if l.Class != Conflict || l.Attempts != 1 {
		t.Fatalf("class %q at delivery %d (reason %q): want conflict at delivery 1", l.Class, l.Attempts, l.Reason)
	}
	const lost = "storing it again was refused for good: the archive no longer holds it"
	if !slices.ContainsFunc(l.Failures, func(in Instance) bool { return in.SOPInstanceUID == refused && strings.Contains(in.Text, lost) }) {
		t.Errorf("failures %+v: want %s named %q", l.Failures, refused, lost)
	}
	wantReasonHas(t, l.Reason, "the archive no longer holds them", "still so after replacing it with delete")
	if got := posts.Load(); got != 2 {
		t.Errorf("%d POSTs, want 2 (one delivery)", got)
	}
}

// Every replaced instance was logged at info, and under replace by DELETE
// its DELETE too: a study of 5,000 instances sent again logged up to
// 10,000 lines. Those lines are now debug; the round's warning counts the
// instances (and those deleted), and "study forwarded" those replaced.
func TestReplacementLogsCountsNotInstances(t *testing.T) {
	sops := []string{"1.2.3.1", "1.2.3.2", "1.2.3.3"} // newMemSource(3)
	for _, method := range []string{ReplacePut, ReplaceDelete} {
		t.Run(method, func(t *testing.T) {
			var posts atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.Method == http.MethodDelete:
					w.WriteHeader(http.StatusNoContent)
				case r.Method == http.MethodPost && posts.Add(1) == 1:
					failedAnswer(w, http.StatusConflict, dicomweb.FailureAzureAlreadyExists, sops...)
				default: // the PUT, or the POST after the DELETEs
					storedAnswer(w, sops...)
				}
			}))
			t.Cleanup(srv.Close)
			var logs testharness.LogBuffer
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			f := newForwarder(t, newMemSource(len(sops)), srv.URL, cons, func(o *Options) {
				o.DeadLetters = &memDeadLetters{}
				o.Conflicts = azureConflicts(ConflictReplace)
				o.Conflicts.Method = method
				o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
			})
			forwardOne(t, f, ns, cons, testEvent())
			wantConflicts(t, f, "replaced", float64(len(sops)))

			byMsg := map[string][]map[string]any{}
			for line := range strings.Lines(logs.String()) {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				msg, _ := rec["msg"].(string)
				byMsg[msg] = append(byMsg[msg], rec)
			}
			for _, msg := range []string{"replaced an instance the destination held with other content",
				"deleted an instance the destination held with other content, to store it again"} {
				if n := len(byMsg[msg]); n != 0 {
					t.Errorf("%d %q lines at info, want none (debug):\n%s", n, msg, logs.String())
				}
			}
			wantDeleted := 0.0
			if method == ReplaceDelete {
				wantDeleted = float64(len(sops))
			}
			round := byMsg["replacing instances the destination held with other content"]
			if len(round) != 1 || round[0]["instances"] != float64(len(sops)) || round[0]["deleted"] != wantDeleted {
				t.Errorf("round warnings %v, want one with instances %d and deleted %v", round, len(sops), wantDeleted)
			}
			done := byMsg["study forwarded"]
			if len(done) != 1 || done[0]["replaced"] != float64(len(sops)) {
				t.Errorf("study forwarded lines %v, want one with replaced %d", done, len(sops))
			}
		})
	}
}

// TestConflictPolicyCheck: New refuses a replace its destination cannot
// carry out (one that only stores), and an unknown action or method,
// rather than fail at the first conflict.
func TestConflictPolicyCheck(t *testing.T) {
	client, err := dicomweb.New("http://127.0.0.1:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	storeOnly := &readingDestination{got: map[string][]byte{}}
	for _, tt := range []struct {
		name    string
		policy  ConflictPolicy
		dest    Destination
		wantErr string // "" for none
	}{
		{"skip, any destination", ConflictPolicy{Action: ConflictSkip}, storeOnly, ""},
		{"unset is skip", ConflictPolicy{}, storeOnly, ""},
		{"deadletter, any destination", ConflictPolicy{Action: ConflictDeadLetter}, storeOnly, ""},
		{"replace by put", ConflictPolicy{Action: ConflictReplace, Method: ReplacePut}, client, ""},
		{"replace by delete", ConflictPolicy{Action: ConflictReplace, Method: ReplaceDelete}, client, ""},
		{"replace by put, cannot upsert", ConflictPolicy{Action: ConflictReplace, Method: ReplacePut}, storeOnly, "cannot upsert"},
		{"replace by delete, cannot delete", ConflictPolicy{Action: ConflictReplace, Method: ReplaceDelete}, storeOnly, "cannot delete instances"},
		{"replace without a method", ConflictPolicy{Action: ConflictReplace}, client, "want put or delete"},
		{"unknown action", ConflictPolicy{Action: "overwrite"}, client, "want skip, replace or deadletter"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.policy.check(tt.dest)
			if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("check: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// Azure answers Failure Reason 45071 while another writer stores the
// instance, and for good once a store that failed left a pending copy
// its cleanup did not remove: "Delete the instance first" (conformance
// statement v2). A 45071 that lasts through the instance rounds and
// pendingAge is the latter: under STOW_ON_CONFLICT=replace the instance
// is deleted and stored again; otherwise the study is dead-lettered at
// its first delivery, saying what to delete. It was retried as
// transient: every delivery re-sent the study, and the last one's dead
// letter, hours later, invited a replay that met the same answer. A
// short 45071 stays a retry.
func TestAzurePendingCopy(t *testing.T) {
	const sop = "1.2.3.1" // newMemSource(1), series 1.2.3.0
	const (
		untilDelete = -1 // 45071 to every POST until a DELETE
		always      = -2 // 45071 to every POST
	)
	for _, tt := range []struct {
		name      string
		action    string
		pending   int // POSTs answered 45071: a count, untilDelete or always
		wantCalls string
		wantDead  []string // in the dead letter's reason; nil: acked
	}{
		{name: "a store in progress", action: ConflictReplace, pending: 2, wantCalls: "POST POST POST"},
		{name: "replace deletes the pending copy", action: ConflictReplace, pending: untilDelete, wantCalls: "POST POST POST DELETE POST"},
		{name: "skip dead-letters it at once", action: ConflictSkip, pending: untilDelete, wantCalls: "POST POST POST",
			wantDead: []string{"45071", "pending copy", "DELETE studies/", "/series/1.2.3.0/instances/" + sop, "then replay", "STOW_ON_CONFLICT=replace deletes it"}},
		{name: "deadletter dead-letters it at once", action: ConflictDeadLetter, pending: untilDelete, wantCalls: "POST POST POST",
			wantDead: []string{"45071", "DELETE studies/", "then replay"}},
		{name: "still pending after the delete", action: ConflictReplace, pending: always, wantCalls: "POST POST POST DELETE POST",
			wantDead: []string{"45071", "still so after stowline deleted it"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var calls requestLog
			var posts atomic.Int32
			var deleted atomic.Bool
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.add(r.Method)
				switch r.Method {
				case http.MethodDelete:
					deleted.Store(true)
					w.WriteHeader(http.StatusNoContent)
					return
				case http.MethodPost:
				default:
					w.WriteHeader(http.StatusMethodNotAllowed)
					return
				}
				_, _ = io.Copy(io.Discard, r.Body)
				n := int(posts.Add(1))
				if tt.pending == always || tt.pending == untilDelete && !deleted.Load() || n <= tt.pending {
					failedAnswer(w, http.StatusConflict, dicomweb.FailureAzureBeingCreated, sop)
					return
				}
				w.Header().Set("Content-Type", "application/dicom+json")
				fmt.Fprintf(w, `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":[%q]}}]}}`, sop)
			}))
			t.Cleanup(srv.Close)
			ns := testnats.Start(t)
			cons := consumer(t, ns)
			dls := &memDeadLetters{}
			f := newForwarder(t, newMemSource(1), srv.URL, cons, func(o *Options) {
				o.DeadLetters = dls
				// A transient failure is delivered again: the letter
				// must come at the first.
				o.MaxDeliveries = 3
				o.InstanceRetries = 1
				o.InstanceRetryDelay = 10 * time.Millisecond
				o.Conflicts = ConflictPolicy{Action: tt.action, Method: ReplacePut, Rules: azureConflicts(tt.action).Rules}
			})
			f.pendingAge = 50 * time.Millisecond
			forwardOne(t, f, ns, cons, testEvent())
			if got := calls.joined(" "); got != tt.wantCalls {
				t.Errorf("requests %q, want %q", got, tt.wantCalls)
			}
			letters := dls.all()
			if tt.wantDead == nil {
				if len(letters) > 0 {
					t.Errorf("dead-lettered (%s): %s", letters[0].Class, letters[0].Reason)
				}
				return
			}
			l := onlyLetter(t, dls)
			if l.Class != Partial || l.Attempts != 1 {
				t.Errorf("letter of class %q after %d deliveries, want partial after 1", l.Class, l.Attempts)
			}
			wantReasonHas(t, l.Reason, append([]string{sop}, tt.wantDead...)...)
			if len(l.Failures) != 1 || l.Failures[0].SOPInstanceUID != sop || l.Failures[0].FailureReason != dicomweb.FailureAzureBeingCreated {
				t.Errorf("failures %+v, want %s with 45071", l.Failures, sop)
			}
		})
	}
}
