package main

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/stowsink"
	"github.com/stowline/stowline/internal/testharness"
)

// azureArchive stands in for Azure's DICOM service where a real Orthanc
// cannot: it answers 45070 ("already exists") for every SOP Instance it
// holds, whatever the content. After answering answerFirst requests it
// holds the next one unanswered until the client goes away, and closes
// holding.
type azureArchive struct {
	answerFirst int

	mu       sync.Mutex
	held     map[string]string // SOP Instance UID -> MD5 of the file
	requests int
	holding  chan struct{}
}

func (a *azureArchive) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprint(w, "[]")
		return
	}
	_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	mr := multipart.NewReader(r.Body, params["boundary"])
	type part struct{ uid, sum string }
	var parts []part
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		b, _ := io.ReadAll(p)
		info, err := testharness.ReadInfo(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sum := md5.Sum(b)
		parts = append(parts, part{info.SOPInstanceUID, hex.EncodeToString(sum[:])})
	}
	// The multipart reader stops at the closing boundary: what follows
	// (a chunked body's last chunk) is read too, so that the server reads
	// on in the background and sees the client go (r.Context below).
	_, _ = io.Copy(io.Discard, r.Body)
	a.mu.Lock()
	a.requests++
	if a.holding != nil && a.requests > a.answerFirst {
		select {
		case <-a.holding:
		default:
			close(a.holding)
		}
		a.mu.Unlock()
		// Held until the forwarder is killed; bounded, so that a test
		// gone wrong fails instead of blocking the server's Close.
		select {
		case <-r.Context().Done():
		case <-time.After(3 * time.Minute):
		}
		return
	}
	defer a.mu.Unlock()
	var stored, failed []string
	for _, p := range parts {
		if _, ok := a.held[p.uid]; ok {
			failed = append(failed, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]},"00081197":{"vr":"US","Value":[45070]}}`, p.uid))
			continue
		}
		a.held[p.uid] = p.sum
		stored = append(stored, fmt.Sprintf(`{"00081155":{"vr":"UI","Value":[%q]}}`, p.uid))
	}
	stowsink.WriteAnswer(w, stored, failed)
}

// A real forwarder process is SIGKILLed while a study's third request is
// out, its first two answered, at an archive that answers "already
// exists" (45070) for any instance it holds. With STOW_ON_CONFLICT=
// deadletter the restarted forwarder must know the 20 instances as its
// own copies (already stored), not dead-letter the study as a conflict:
// the kill leaves no deferred cleanup to remember them.
func TestForwarderKilledMidStudyKnowsItsOwnCopies(t *testing.T) {
	r := newRig(t)
	bin := filepath.Join(t.TempDir(), "forwarder")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	archive := &azureArchive{answerFirst: 2, held: map[string]string{}, holding: make(chan struct{})}
	srv := httptest.NewServer(archive)
	t.Cleanup(srv.Close)
	study := r.addStudy(t, 30, 16)
	env := r.env(map[string]string{"DICOMWEB_URL": srv.URL, "STOW_MAX_INSTANCES": "10", "STOW_PARALLEL_REQUESTS": "1",
		"STOW_ON_CONFLICT": "deadletter"})
	start := func() (*exec.Cmd, *testharness.LogBuffer) { return runForwarderBinary(t, bin, env) }
	first, _ := start()
	ev := r.publish(t, study)
	select {
	case <-archive.holding:
	case <-time.After(time.Minute):
		t.Fatal("the forwarder did not send the study's third request")
	}
	// Killed before the record of the first two answers lands, the
	// forwarder would leave nothing to know its copies by.
	r.waitSentRecorded(t, ev, 20)
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = first.Process.Wait()
	archive.mu.Lock()
	archive.holding = nil
	stored := len(archive.held)
	archive.mu.Unlock()
	if stored != 20 {
		t.Fatalf("the archive held %d instances at the kill, want 20", stored)
	}
	waitHTTPDown(t, "http://"+r.forwarderAddr+"/healthz")
	_, logs := start()
	testharness.WaitFor(t, "the study's outcome", 2*time.Minute, func() bool {
		l := logs.String()
		return strings.Contains(l, `"msg":"study forwarded"`) || strings.Contains(l, `"msg":"study dead-lettered"`)
	})
	r.waitQueueEmpty(t, 30*time.Second)
	if !testharness.HasLogLine(logs.String(), `"msg":"study forwarded"`, `"already_stored":20`) {
		t.Errorf("the restarted forwarder did not count the 20 instances stored before the kill as already stored:\n%s", logs.String())
	}
	entries, err := r.deadLetters(t).List(t.Context(), deadletter.Filter{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("dead letter %s: %s", e.Class, e.Reason)
	}
	archive.mu.Lock()
	defer archive.mu.Unlock()
	for uid, sum := range r.src.InstanceMD5s(t) {
		if archive.held[uid] != sum {
			t.Errorf("instance %s: md5 %q at the source, %q at the archive", uid, sum, archive.held[uid])
		}
	}
}
