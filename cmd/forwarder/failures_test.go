package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/testharness"
)

// A 202 that reports 3 instances as failed with a transient reason: the
// forwarder re-sends exactly those 3, and the study is acked.
func TestPartialFailureResendsOnlyTheFailedInstances(t *testing.T) {
	testharness.ForEachRelease(t, testPartialFailure)
}

func testPartialFailure(t *testing.T, rel testharness.Release) {
	r := newRigOn(t, rel)
	study := r.addStudy(t, 20, 16)
	r.proxy.FailNext(3, 0xA700) // Refused: out of resources
	// A fixed limit of 4 requests: 5 instances a request, so the first
	// answer has 3 to refuse (the adaptive limit's split depends on its
	// state, and a request of 2 would have only 2).
	r.startForwarder(t, map[string]string{"STOW_PARALLEL_REQUESTS": "4", "STOW_PARALLEL_MIN": "4"})
	r.publish(t, study)
	r.waitDest(t, 20, time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)

	sends := r.proxy.Sends()
	twice := 0
	for uid, n := range sends {
		switch n {
		case 1:
		case 2:
			twice++
		default:
			t.Errorf("instance %s sent %d times", uid, n)
		}
	}
	if len(sends) != 20 || twice != 3 {
		t.Errorf("%d instances reached the destination, %d of them twice; want 20 and exactly 3", len(sends), twice)
	}
	r.assertIdentical(t)
}

// A permanent failure (415) is dead-lettered at the first attempt, with its
// reason; replaying it after the destination is fixed stores the study.
// The replay command's list, show, dry-run, run and purge and its argument
// errors are exercised against the real JetStream.
func TestPermanentFailureDeadLetteredAndReplayed(t *testing.T) {
	r := newRig(t)
	study := r.addStudy(t, 5, 16)
	other := r.addStudy(t, 3, 16)
	r.proxy.SetStatus(http.StatusUnsupportedMediaType, "unsupported media type from the test proxy")
	// One request at a time, so the request count shows that nothing was
	// retried.
	r.startForwarder(t, map[string]string{"STOW_PARALLEL_REQUESTS": "1"})
	ev := r.publish(t, study)
	otherEv := r.publish(t, other)

	store := r.deadLetters(t)
	entries := waitDeadLetters(t, store, 2, 30*time.Second)
	if got := r.proxy.STOWRequests(); got != 2 {
		t.Errorf("%d STOW requests for 2 studies; a permanent failure must not be retried", got)
	}
	for _, e := range entries {
		if e.Class != forward.Permanent || e.Attempts != 1 || !strings.Contains(e.Reason, "415") ||
			!strings.Contains(e.LastResponse, "unsupported media type from the test proxy") || e.FirstFailure.IsZero() {
			t.Errorf("dead letter = %+v", e)
		}
	}
	r.waitQueueEmpty(t, 10*time.Second) // terminated, not pending

	replay := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		env := r.env(nil)
		err := run(context.Background(), append([]string{"replay"}, args...), func(k string) string { return env[k] }, nil, &out, &errOut)
		return out.String(), err
	}
	out, err := replay("list")
	if err != nil || !strings.Contains(out, ev.StudyInstanceUID) || !strings.Contains(out, "permanent") {
		t.Fatalf("replay list: %v\n%s", err, out)
	}
	out, err = replay("list", "--json", "--study", ev.StudyInstanceUID)
	var listed []deadletter.Entry
	if err != nil || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 1 {
		t.Fatalf("replay list --json --study: %v\n%s", err, out)
	}
	seq := listed[0].Seq
	if out, err = replay("show", itoa(seq)); err != nil || !strings.Contains(out, "415") {
		t.Fatalf("replay show: %v\n%s", err, out)
	}
	if out, err = replay("run", "--all", "--dry-run"); err != nil || !strings.Contains(out, "2 dead letters would be replayed") {
		t.Fatalf("replay run --dry-run: %v\n%s", err, out)
	}
	if n := len(waitDeadLetters(t, store, 2, time.Second)); n != 2 {
		t.Fatalf("dry run changed the dead letters: %d left", n)
	}

	for _, bad := range [][]string{
		{}, {"bogus"}, {"run"}, {"purge"}, {"show"}, {"show", "x"}, {"list", "--class", "nope"},
		{"run", "--seq", "-1"}, {"run", "--all", "--class", "permanent"}, {"reforward"},
		{"reforward", "--since", "yesterday"}, {"list", "extra"},
	} {
		if _, err := replay(bad...); !errors.Is(err, app.ErrUsage) {
			t.Errorf("replay %q: err = %v, want a usage error", bad, err)
		}
	}

	// The destination is fixed: replay one study, purge the other.
	r.proxy.SetStatus(0, "")
	if out, err = replay("run", "--study", ev.StudyInstanceUID); err != nil || !strings.Contains(out, "1 dead letters replayed") {
		t.Fatalf("replay run --study: %v\n%s", err, out)
	}
	r.waitDest(t, 5, time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)
	if out, err = replay("purge", "--orthanc-id", otherEv.OrthancStudyID, "--dry-run"); err != nil || !strings.Contains(out, "1 dead letters would be purged") {
		t.Fatalf("purge --dry-run: %v\n%s", err, out)
	}
	if out, err = replay("purge", "--class", "permanent"); err != nil || !strings.Contains(out, "1 dead letters purged") {
		t.Fatalf("purge: %v\n%s", err, out)
	}
	if left, _ := store.List(context.Background(), deadletter.Filter{All: true}); len(left) != 0 {
		t.Errorf("%d dead letters left after replay and purge", len(left))
	}
	// The purged study was never forwarded; drop it before comparing.
	if err := r.src.Do(context.Background(), http.MethodDelete, "/studies/"+other, nil, nil); err != nil {
		t.Fatal(err)
	}
	r.assertIdentical(t)

	// Re-forward the window from the main stream: the two events Orthanc
	// announced (the replay was one of them, queued again for its
	// destination only).
	if out, err = replay("reforward", "--since", time.Now().Add(-time.Hour).UTC().Format("2006-01-02T15:04Z"), "--dry-run"); err != nil || !strings.Contains(out, "2 events would be queued again") {
		t.Fatalf("reforward --dry-run: %v\n%s", err, out)
	}
}

// The admin API: authentication, listing, dry run and replay over HTTP.
func TestAdminAPI(t *testing.T) {
	r := newRig(t)
	study := r.addStudy(t, 2, 16)
	r.proxy.SetStatus(http.StatusBadRequest, "bad request from the test proxy")
	r.startForwarder(t, nil)
	ev := r.publish(t, study)
	waitDeadLetters(t, r.deadLetters(t), 1, 30*time.Second)

	base := "http://" + r.forwarderAddr + "/admin"
	call := func(method, path, token, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var out map[string]any
		_ = json.Unmarshal(b, &out)
		return resp.StatusCode, out
	}
	if code, _ := call("GET", "/deadletters", "", ""); code != http.StatusUnauthorized {
		t.Errorf("no token: %d", code)
	}
	if code, _ := call("GET", "/deadletters", "wrong-token-0123456789", ""); code != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", code)
	}
	code, out := call("GET", "/deadletters?class=permanent", adminToken, "")
	if code != 200 || len(out["entries"].([]any)) != 1 {
		t.Fatalf("list: %d %v", code, out)
	}
	seq := out["entries"].([]any)[0].(map[string]any)["seq"].(float64)
	if code, _ = call("GET", "/deadletters/"+itoa(uint64(seq)), adminToken, ""); code != 200 {
		t.Errorf("show: %d", code)
	}
	if code, _ = call("GET", "/deadletters/999", adminToken, ""); code != 404 {
		t.Errorf("show missing: %d", code)
	}
	for _, body := range []string{`{`, `{}`, `{"class":"nope"}`, `{"unknown":1}`, `{"all":true,"seq":"1"}`} {
		if code, out = call("POST", "/deadletters/replay", adminToken, body); code != 400 {
			t.Errorf("replay %s: %d %v", body, code, out)
		}
	}
	if code, out = call("POST", "/deadletters/replay", adminToken, `{"all":true,"dryRun":true}`); code != 200 || out["count"].(float64) != 1 {
		t.Errorf("dry run: %d %v", code, out)
	}
	r.proxy.SetStatus(0, "")
	if code, out = call("POST", "/deadletters/replay", adminToken, `{"study":"`+ev.StudyInstanceUID+`"}`); code != 200 || out["count"].(float64) != 1 {
		t.Fatalf("replay: %d %v", code, out)
	}
	r.waitDest(t, 2, time.Minute)
	if code, out = call("POST", "/reforward", adminToken, `{"since":"2020-01-01","until":"2019-01-01"}`); code != 400 {
		t.Errorf("reforward with until before since: %d %v", code, out)
	}
}

// The destination answers 503 for 20 s, then recovers: the backlog drains,
// and the STOW requests during the outage stay under the bound the backoff
// implies.
func TestOutageThenRecovery(t *testing.T) {
	r := newRig(t)
	const studies = 3
	ids := make([]string, studies)
	for i := range ids {
		ids[i] = r.addStudy(t, 4, 16)
	}
	r.proxy.SetStatus(http.StatusServiceUnavailable, "down for maintenance")
	// One request per delivery, as the bound below assumes; probes every
	// 2-5 s, so the drain starts within seconds of the end of the outage
	// (the defaults, 30 s to 5 min, would make the test wait for them).
	r.startForwarder(t, map[string]string{"STOW_PARALLEL_REQUESTS": "1",
		"STOW_BREAKER_PROBE_INTERVAL": "2s", "STOW_BREAKER_MAX_PROBE_INTERVAL": "5s"})
	for _, id := range ids {
		r.publish(t, id)
	}
	// Long enough for the breaker to open and try several times (after
	// 5 failures; held studies do not retry); the bound below, from the
	// retry delays alone, would hold without it. The test's one fixed
	// wait.
	const outage = 20 * time.Second
	time.Sleep(outage)
	during := r.proxy.STOWRequests()
	r.proxy.SetStatus(0, "")
	r.waitDest(t, studies*4, 2*time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)
	r.assertIdentical(t)

	// Each delivery sends one request (the first 503 ends it); delivery k
	// waits at least half of min(1s * 2^(k-1), 8s). Count the deliveries
	// that fit in the outage, per study.
	bound := 0
	for elapsed, k := time.Duration(0), 1; elapsed <= outage; k++ {
		bound++
		d := min(time.Second<<(k-1), 8*time.Second)
		elapsed += d / 2
	}
	bound *= studies
	t.Logf("outage %s: %d STOW requests for %d studies (bound %d)", outage, during, studies, bound)
	if during > bound {
		t.Errorf("%d STOW requests during the outage, more than the backoff allows (%d)", during, bound)
	}
	if during < studies {
		t.Errorf("only %d requests during the outage: the studies were not tried", during)
	}
}

// A real forwarder process is SIGKILLed in the middle of a 300-instance
// study and restarted: nothing was acked early, every instance arrives,
// byte-identical.
func TestForwarderKilledMidStudy(t *testing.T) {
	testharness.ForEachRelease(t, testForwarderKilledMidStudy)
}

func testForwarderKilledMidStudy(t *testing.T, rel testharness.Release) {
	r := newRigOn(t, rel)
	bin := filepath.Join(t.TempDir(), "forwarder")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	study := r.addStudy(t, 300, 64)
	// One request at a time, each ~220 KB at 512 KB/s: the 2.6 MB study
	// takes ~5 s to upload, and the kill after the second answered request
	// (~1 s) leaves seconds of margin on a loaded host. With the default
	// parallelism all twelve requests ran at once and could all be answered
	// between two polls.
	r.proxy.Throttle(512 << 10)
	env := r.env(map[string]string{"STOW_MAX_INSTANCES": "25", "STOW_PARALLEL_REQUESTS": "1"})
	start := func() (*exec.Cmd, *testharness.LogBuffer) { return runForwarderBinary(t, bin, env) }
	first, _ := start()
	ev := r.publish(t, study)
	deadline := time.Now().Add(time.Minute)
	for len(r.proxy.Sends()) < 50 {
		if time.Now().After(deadline) {
			t.Fatal("the forwarder did not start sending")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The check of already_stored below needs the first answer's record.
	r.waitSentRecorded(t, ev, 25)
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = first.Process.Wait()
	n := len(r.proxy.Sends())
	t.Logf("killed with %d of 300 instances stored", n)
	if n >= 300 {
		t.Fatalf("the study was complete (%d instances) before the kill; slow the link", n)
	}
	if info := r.consumerInfo(t); info == nil || info.AckFloor.Stream != 0 {
		t.Fatalf("the event was acked before the study was stored: %+v", info)
	}
	r.proxy.Throttle(0)
	waitHTTPDown(t, "http://"+r.forwarderAddr+"/healthz")
	_, logs := start()
	r.waitDest(t, 300, 2*time.Minute)
	r.waitQueueEmpty(t, 30*time.Second)
	r.assertIdentical(t)
	// The destination (Orthanc) stores an instance sent again without a
	// word: the restarted forwarder knows from the killed one's records
	// that it had the first requests' instances already (at least the
	// first, answered before the second was sent), and says so.
	waitLogLine(t, logs, `"msg":"study forwarded"`, 10*time.Second)
	var line struct {
		Instances     int `json:"instances"`
		AlreadyStored int `json:"already_stored"`
	}
	for l := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(l, `"msg":"study forwarded"`) {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatal(err)
			}
		}
	}
	if line.Instances != 300 || line.AlreadyStored < 25 || line.AlreadyStored > n {
		t.Errorf("the restarted forwarder logged %d instances, %d already stored; want 300, and between 25 and the %d sent before the kill",
			line.Instances, line.AlreadyStored, n)
	}
}

// The NATS server stops and restarts on the same store while studies are
// being forwarded: nothing is lost.
func TestNATSRestartWhileForwarding(t *testing.T) {
	r := newRig(t)
	ids := []string{r.addStudy(t, 40, 32), r.addStudy(t, 40, 32), r.addStudy(t, 40, 32)}
	// One request of 10 instances at a time, about half a second each:
	// NATS stops with most of the 120 instances unsent.
	r.proxy.Throttle(64 << 10)
	r.startForwarder(t, map[string]string{"STOW_MAX_INSTANCES": "10", "FORWARDER_CONCURRENCY": "2",
		"STOW_PARALLEL_REQUESTS": "1", "STOW_PARALLEL_MIN": "1"})
	for _, id := range ids {
		r.publish(t, id)
	}
	deadline := time.Now().Add(time.Minute)
	for len(r.proxy.Sends()) < 10 {
		if time.Now().After(deadline) {
			t.Fatal("the forwarder did not start sending")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.stopNATS()
	if sent := len(r.proxy.Sends()); sent >= 120 {
		t.Fatalf("%d of 120 instances sent when NATS stopped: nothing was left in flight", sent)
	} else {
		t.Logf("NATS stopped with %d of 120 instances sent", sent)
	}
	// Restart only once the forwarder has lost its connection (it then
	// waits a second before each reconnect attempt, so it sees an outage
	// of at least that long).
	waitLogLine(t, r.fwdLogs, `"msg":"disconnected from NATS"`, 30*time.Second)
	r.startNATS(t)
	r.proxy.Throttle(0)
	r.waitDest(t, 120, 2*time.Minute)
	r.waitQueueEmpty(t, time.Minute)
	r.assertIdentical(t)
}

func (r *rig) deadLetters(t *testing.T) *deadletter.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var store *deadletter.Store
	var err error
	for range 50 { // the forwarder creates the stream at startup
		if store, err = deadletter.Open(ctx, r.js); err == nil {
			return store
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("dead-letter stream: %v", err)
	return nil
}

func waitDeadLetters(t *testing.T, store *deadletter.Store, n int, timeout time.Duration) []deadletter.Entry {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		entries, err := store.List(context.Background(), deadletter.Filter{All: true})
		if err == nil && len(entries) >= n {
			return entries
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters after %s (err %v), want %d", len(entries), timeout, err, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitLogLine waits until logs hold s.
func waitLogLine(t *testing.T, logs *testharness.LogBuffer, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the log after %s", s, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitHTTPDown(t *testing.T, url string) {
	t.Helper()
	for range 100 {
		resp, err := http.Get(url)
		if err != nil {
			return
		}
		resp.Body.Close()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s still answers after 5s", url)
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// runForwarderBinary starts the forwarder binary bin with env alone, for
// the test to kill (SIGKILL); unlike startForwarderProcess, it is not
// started again. Its log is kept, and shown if the test fails. It dies
// with the test binary: a timed-out or killed test runs no cleanup, and
// the forwarder would otherwise reconnect for ever to a NATS that is gone.
func runForwarderBinary(t *testing.T, bin string, env map[string]string) (*exec.Cmd, *testharness.LogBuffer) {
	t.Helper()
	cmd := exec.Command(bin)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := &testharness.LogBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = testharness.SysProcAttr()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		if t.Failed() {
			t.Logf("forwarder process log:\n%s", logs.String())
		}
	})
	return cmd, logs
}

// orphanEnv makes the test binary a helper process that starts a program
// with runForwarderBinary, prints its PID and waits to be killed.
const orphanEnv = "STOWLINE_TEST_FORWARDER_ORPHAN"

// When the test binary dies without running its cleanups (the -timeout
// alarm, a cancelled CI job, Ctrl-C), a forwarder started by
// runForwarderBinary dies with it.
func TestForwarderBinaryDiesWithTheTestBinary(t *testing.T) {
	if dir := os.Getenv(orphanEnv); dir != "" {
		runOrphanHelper(t, dir)
		return
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestForwarderBinaryDiesWithTheTestBinary$", "-test.count=1")
	helper.Env = append(os.Environ(), orphanEnv+"="+t.TempDir())
	helper.Stderr = os.Stderr
	helper.SysProcAttr = testharness.SysProcAttr()
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = helper.Process.Kill(); _ = helper.Wait() })
	var pid int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "forwarder %d", &pid); err == nil {
			break
		}
	}
	if pid == 0 {
		t.Fatal("the helper did not start the program")
	}
	if !testharness.ProcessAlive(pid) {
		t.Fatalf("the program (PID %d) is not running while the helper runs", pid)
	}
	// SIGKILL, as the -timeout alarm's exit is: no cleanup runs.
	if err := helper.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = helper.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for testharness.ProcessAlive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the program started by runForwarderBinary (PID %d) outlived the test binary", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runOrphanHelper starts, through runForwarderBinary, a stand-in for the
// forwarder binary that runs for an hour (what is checked is how the
// process is started, not the forwarder), prints its PID and blocks until
// the helper is killed.
func runOrphanHelper(t *testing.T, dir string) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "forwarder")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexec "+sleep+" 3600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd, _ := runForwarderBinary(t, bin, nil)
	fmt.Printf("forwarder %d\n", cmd.Process.Pid)
	time.Sleep(time.Hour)
}
