package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testidp"
)

// Token lifecycle tests: the real forwarder, real Orthanc source and
// destination, the destination behind a Gate that admits only valid
// tokens of a real OAuth2 server (internal/testidp).

const (
	tokenClientID = "stowline-fwd"
	tokenSecret   = "forwarder-secret-0123456789"
)

// authEnv points the forwarder at dicomwebURL with tokens from idp.
func authEnv(idp *testidp.IdP, dicomwebURL, secret string, extra map[string]string) map[string]string {
	env := map[string]string{
		"DICOMWEB_URL":        dicomwebURL,
		"OAUTH_TOKEN_URL":     idp.TokenURL,
		"OAUTH_CLIENT_ID":     tokenClientID,
		"OAUTH_CLIENT_SECRET": secret,
		"OAUTH_SCOPES":        "dicomweb",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// startLoggedForwarder is rig.startForwarder, keeping the log for checks.
func (r *rig) startLoggedForwarder(t *testing.T, extra map[string]string) *testharness.LogBuffer {
	t.Helper()
	env := r.env(extra)
	logs := &testharness.LogBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, nil, logs, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Error("forwarder did not stop within a minute")
		}
		if t.Failed() {
			t.Logf("forwarder log:\n%s", logs.String())
		}
	})
	testharness.WaitHTTP(t, "http://"+r.forwarderAddr+"/healthz", 30*time.Second)
	return logs
}

// metric sums the samples of a Prometheus metric whose labels include
// labels ("" for any) on the forwarder's /metrics.
func (r *rig) metric(t *testing.T, name, labels string) float64 {
	t.Helper()
	sample := name
	if labels != "" {
		sample += "{" + labels + "}"
	}
	v, _ := testharness.Metric(t, "http://"+r.forwarderAddr+"/metrics", sample)
	return v
}

func (r *rig) noDeadLetters(t *testing.T) {
	t.Helper()
	entries, err := r.deadLetters(t).List(context.Background(), deadletter.Filter{All: true})
	if err != nil || len(entries) > 0 {
		t.Errorf("dead letters: %+v (err %v), want none", entries, err)
	}
}

// TestShortTokensUnderLoad: 2 s tokens while the forwarder uploads a large
// study slowly (several seconds, in 12 requests): no upload fails or is
// re-sent, no request reaches the destination with an expired token, and
// tokens are refreshed about once per half lifetime, not per request.
func TestShortTokensUnderLoad(t *testing.T) {
	t.Parallel()
	idp := testidp.Start(t, testidp.WithClient(tokenClientID, tokenSecret), testidp.WithTokenLifetime(2*time.Second))
	r := newRig(t)
	gate := idp.Gate(t, r.proxy.URL)
	const instances, perRequest = 120, 10
	study := r.addStudy(t, instances, 64)
	r.proxy.Throttle(100_000) // per request: about 5 s with 2 requests at once, 11 s with 1
	r.startForwarder(t, authEnv(idp, gate.URL+"/dicom-web", tokenSecret, map[string]string{
		"STOW_MAX_INSTANCES": strconv.Itoa(perRequest),
		"FORWARDER_ACK_WAIT": "30s",
		// The timing above assumes 2 requests at once (fixed).
		"STOW_PARALLEL_REQUESTS": "2",
		"STOW_PARALLEL_MIN":      "2",
	}))
	start := time.Now()
	r.publish(t, study)
	r.waitDest(t, instances, time.Minute)
	// Read together: the source refreshes in the background for as long
	// as it runs, so tokens counted later, after a slow waitQueueEmpty on
	// a loaded host, belong to no upload time.
	elapsed, issued := time.Since(start), idp.TokensIssued()
	r.waitQueueEmpty(t, 30*time.Second)

	requests := r.proxy.STOWRequests()
	t.Logf("%d instances in %s: %d STOW requests, %d tokens issued, gate accepted %d, rejected %d",
		instances, elapsed.Round(time.Millisecond), requests, issued, gate.Accepted(), gate.Rejected())
	if elapsed < 3*time.Second {
		t.Errorf("the upload took %s: too fast to outlive a token", elapsed)
	}
	if gate.Rejected() != 0 {
		t.Errorf("the gate rejected %d requests: a token expired in use", gate.Rejected())
	}
	if want := instances / perRequest; requests != want || gate.Accepted() != want {
		t.Errorf("%d STOW requests (gate accepted %d), want exactly %d: an upload failed and was re-sent", requests, gate.Accepted(), want)
	}
	if got := r.metric(t, "stowline_forwarder_failures_total", ""); got != 0 {
		t.Errorf("%v failed attempts", got)
	}
	// One token per half lifetime, plus the first and one being fetched.
	if maxTokens := int(elapsed/time.Second) + 3; issued < 2 || issued > maxTokens {
		t.Errorf("%d tokens issued in %s, want 2..%d", issued, elapsed, maxTokens)
	}
	r.noDeadLetters(t)
	r.assertIdentical(t)
}

// TestUnauthorizedMidStudy: the destination starts refusing the current
// token in the middle of a study (revoked at the IdP): the forwarder
// fetches one new token, sends that request again, and the study
// completes in the same delivery.
func TestUnauthorizedMidStudy(t *testing.T) {
	t.Parallel()
	// Tokens outlive the test: a scheduled refresh (half the lifetime,
	// jittered) would be a token the count below does not expect.
	idp := testidp.Start(t, testidp.WithClient(tokenClientID, tokenSecret), testidp.WithTokenLifetime(10*time.Minute))
	r := newRig(t)
	gate := idp.Gate(t, r.proxy.URL)
	// Revoke every token issued so far just before the third STOW request.
	revoker, posts := beforeThirdPost(t, gate.URL, idp.RevokeIssued)

	const instances, perRequest = 30, 5
	study := r.addStudy(t, instances, 16)
	r.startForwarder(t, authEnv(idp, revoker.URL+"/dicom-web", tokenSecret, map[string]string{
		"STOW_MAX_INSTANCES": strconv.Itoa(perRequest),
		// 6 requests, 2 at once (fixed): at most 2 carry the revoked token.
		"STOW_PARALLEL_REQUESTS": "2",
		"STOW_PARALLEL_MIN":      "2",
	}))
	r.publish(t, study)
	r.waitDest(t, instances, time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)

	// Requests in flight together (STOW_PARALLEL_REQUESTS) may all carry
	// the revoked token; they share the one refresh.
	rejected := gate.Rejected()
	t.Logf("STOW posts %d, tokens issued %d, gate rejected %d", posts.Load(), idp.TokensIssued(), rejected)
	if idp.TokensIssued() != 2 || rejected < 1 || rejected > 2 {
		t.Errorf("tokens issued %d, gate rejected %d: want 2 (one refresh after the 401) and 1 or 2", idp.TokensIssued(), rejected)
	}
	if want := int64(instances/perRequest + rejected); posts.Load() != want || r.proxy.STOWRequests() != instances/perRequest {
		t.Errorf("%d STOW posts, %d reached the destination; want %d and %d", posts.Load(), r.proxy.STOWRequests(), want, instances/perRequest)
	}
	if got := r.metric(t, "stowline_forwarder_studies_total", `result="retry"`); got != 0 {
		t.Errorf("the study was retried %v times: the 401 should be handled within the delivery", got)
	}
	r.noDeadLetters(t)
	r.assertIdentical(t)
}

// beforeThirdPost is a reverse proxy to target that calls fn just before
// it passes on the third POST; posts counts the POSTs.
func beforeThirdPost(t *testing.T, target string, fn func()) (front *httptest.Server, posts *atomic.Int64) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.FlushInterval = -1
	posts = new(atomic.Int64)
	front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodPost && posts.Add(1) == 3 {
			fn()
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(front.Close)
	return front, posts
}

// TestRotatedClientSecret: the client secret is rotated in the middle of
// a study (OAUTH_CLIENT_SECRET_FILE rewritten, the old secret and its
// tokens revoked at the IdP): the forwarder's next token request reads
// the new secret, and the study completes in the same delivery, without
// a restart.
func TestRotatedClientSecret(t *testing.T) {
	t.Parallel()
	const rotated = "rotated-secret-9876543210"
	// Tokens outlive the test: a scheduled refresh (half the lifetime,
	// jittered) would be a token the count below does not expect.
	idp := testidp.Start(t, testidp.WithClient(tokenClientID, tokenSecret), testidp.WithTokenLifetime(10*time.Minute))
	r := newRig(t)
	gate := idp.Gate(t, r.proxy.URL)
	secretFile := filepath.Join(t.TempDir(), "client-secret")
	if err := os.WriteFile(secretFile, []byte(tokenSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	front, posts := beforeThirdPost(t, gate.URL, func() {
		// As a Kubernetes Secret volume does: the new file replaces the
		// old one at once.
		next := secretFile + ".new"
		if err := os.WriteFile(next, []byte(rotated+"\n"), 0o600); err != nil {
			t.Error(err)
		}
		if err := os.Rename(next, secretFile); err != nil {
			t.Error(err)
		}
		if err := idp.SetClientSecrets(tokenClientID, rotated); err != nil {
			t.Error(err)
		}
		idp.RevokeIssued()
	})

	const instances, perRequest = 30, 5
	study := r.addStudy(t, instances, 16)
	env := authEnv(idp, front.URL+"/dicom-web", "", map[string]string{
		"OAUTH_CLIENT_SECRET_FILE": secretFile,
		"STOW_MAX_INSTANCES":       strconv.Itoa(perRequest),
		"STOW_PARALLEL_REQUESTS":   "2",
		"STOW_PARALLEL_MIN":        "2",
	})
	delete(env, "OAUTH_CLIENT_SECRET")
	r.startForwarder(t, env)
	r.publish(t, study)
	r.waitDest(t, instances, time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)

	t.Logf("STOW posts %d, tokens issued %d, gate rejected %d", posts.Load(), idp.TokensIssued(), gate.Rejected())
	if idp.TokensIssued() != 2 {
		t.Errorf("tokens issued %d, want 2: the first, and one with the rotated secret after the 401", idp.TokensIssued())
	}
	if got := r.metric(t, "stowline_forwarder_studies_total", `result="retry"`); got != 0 {
		t.Errorf("the study was retried %v times: the rotation should be handled within the delivery", got)
	}
	r.noDeadLetters(t)
	r.assertIdentical(t)
}

// TestIdentityProviderDown: the token endpoint is down for 20 s with 2 s
// tokens: the study that arrives meanwhile fails transiently (nothing is
// sent with an expired token), is retried later, and arrives once the
// endpoint is back; nothing is lost or dead-lettered.
func TestIdentityProviderDown(t *testing.T) {
	t.Parallel()
	idp := testidp.Start(t, testidp.WithClient(tokenClientID, tokenSecret), testidp.WithTokenLifetime(2*time.Second))
	r := newRig(t)
	gate := idp.Gate(t, r.proxy.URL)
	first, second := r.addStudy(t, 5, 16), r.addStudy(t, 5, 16)
	r.startForwarder(t, authEnv(idp, gate.URL+"/dicom-web", tokenSecret, nil))
	r.publish(t, first)
	r.waitDest(t, 5, time.Minute)

	idp.SetDown(true)
	down := time.Now()
	// The cached token serves until it is about to expire: publish once
	// it has.
	time.Sleep(2500 * time.Millisecond)
	r.publish(t, second)
	time.Sleep(time.Until(down.Add(20 * time.Second)))
	var stats struct{ CountInstances int }
	r.dest.GetJSON(t, "/statistics", &stats)
	transient := r.metric(t, "stowline_forwarder_failures_total", `class="`+string(forward.Transient)+`"`)
	tokenErrors := r.metric(t, "stowline_forwarder_token_fetch_errors_total", "")
	idp.SetDown(false)
	up := time.Now()

	r.waitDest(t, 10, time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)
	t.Logf("during the outage: destination had %d instances, %v transient failures, %v token errors; recovered %s after the endpoint came back",
		stats.CountInstances, transient, tokenErrors, time.Since(up).Round(time.Millisecond))
	if stats.CountInstances != 5 {
		t.Errorf("the destination had %d instances during the outage, want 5", stats.CountInstances)
	}
	if transient < 1 || tokenErrors < 1 {
		t.Errorf("%v transient failures, %v token fetch errors: the study was not tried during the outage", transient, tokenErrors)
	}
	if gate.Rejected() != 0 {
		t.Errorf("the gate rejected %d requests: an expired token was sent", gate.Rejected())
	}
	if r.metric(t, "stowline_forwarder_studies_total", `result="dead_lettered"`) != 0 {
		t.Error("a study was dead-lettered")
	}
	r.noDeadLetters(t)
	r.assertIdentical(t)
}

// TestWrongSecret: a client secret the token endpoint refuses (one that
// expired) refuses every study alike. It dead-lettered each at once, the
// whole queue to replay; now the destination counts as down: its breaker
// opens and holds the study, no delivery spent, and once the secret file
// holds the new secret the next probe gets a token and the study is
// stored. The secret is in no log.
func TestWrongSecret(t *testing.T) {
	t.Parallel()
	idp := testidp.Start(t, testidp.WithClient(tokenClientID, tokenSecret))
	r := newRig(t)
	gate := idp.Gate(t, r.proxy.URL)
	const instances = 3
	study := r.addStudy(t, instances, 16)
	const wrong = "not-the-secret-9876543210"
	secretFile := filepath.Join(t.TempDir(), "client-secret")
	if err := os.WriteFile(secretFile, []byte(wrong+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := authEnv(idp, gate.URL+"/dicom-web", "", map[string]string{
		"OAUTH_CLIENT_SECRET_FILE":    secretFile,
		"STOW_BREAKER_FAILURES":       "1",
		"STOW_BREAKER_PROBE_INTERVAL": "1s",
		// Probes every second or two: the fixed secret is found soon.
		"STOW_BREAKER_MAX_PROBE_INTERVAL": "2s",
	})
	delete(env, "OAUTH_CLIENT_SECRET")
	logs := r.startLoggedForwarder(t, env)
	r.publish(t, study)

	testharness.WaitFor(t, "the breaker to open on the refused secret", 30*time.Second, func() bool {
		return r.metric(t, "stowline_forwarder_breaker_state", `destination="default"`) == 2
	})
	if r.proxy.STOWRequests() != 0 || gate.Accepted()+gate.Rejected() != 0 {
		t.Error("a request went to the destination without a token")
	}
	r.noDeadLetters(t)

	// As a Kubernetes Secret volume does: the new file replaces the old.
	next := secretFile + ".new"
	if err := os.WriteFile(next, []byte(tokenSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, secretFile); err != nil {
		t.Fatal(err)
	}
	r.waitDest(t, instances, time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)
	r.noDeadLetters(t)
	r.assertIdentical(t)
	if !strings.Contains(logs.String(), "invalid_client") || strings.Contains(logs.String(), wrong) {
		t.Error("the log should name invalid_client and not hold the secret")
	}
}

// TestWrongSecretSaidAtStart: refused credentials are logged when the
// forwarder starts, before any study needs a token, without the secret.
func TestWrongSecretSaidAtStart(t *testing.T) {
	t.Parallel()
	idp := testidp.Start(t, testidp.WithClient(tokenClientID, tokenSecret))
	r := newRig(t)
	const wrong = "not-the-secret-9876543210"
	logs := r.startLoggedForwarder(t, authEnv(idp, r.proxy.URL+"/dicom-web", wrong, nil))
	waitLogLine(t, logs, `"msg":"no OAuth2 token for the destination at start`, 30*time.Second)
	if !strings.Contains(logs.String(), "invalid_client") || strings.Contains(logs.String(), wrong) {
		t.Errorf("the start's warning should name invalid_client and not hold the secret:\n%s", logs.String())
	}
}
