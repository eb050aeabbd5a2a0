package main

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/testharness"
)

// Two forwarders of one de-identifying destination with different keys
// (a rollout or a scale-up after the key's Secret changed) would send one
// study and one patient under two pseudonyms. Each sees the other's key
// fingerprint in the status bucket: neither pulls, the study queued stays
// queued, both are unready and say why with both fingerprints. Once the
// second runs with the first's key, the study is forwarded once, under
// that key's pseudonyms.
func TestForwardersWithDifferentKeysForwardNothing(t *testing.T) {
	r := newRig(t)
	keyA, keyB := []byte("the-first-site-key-of-at-least-32-bytes"), []byte("the-second-site-key-of-at-least-32-byte")
	fileA, fileB := writeKeyFile(t, keyA), writeKeyFile(t, keyB)
	kA, err := deident.NewKeyer(keyA, "ANON-")
	if err != nil {
		t.Fatal(err)
	}
	kB, err := deident.NewKeyer(keyB, "ANON-")
	if err != nil {
		t.Fatal(err)
	}
	start := func(name, addr, keyFile string) *testharness.Program {
		t.Helper()
		p := testharness.StartProgram(t, name, run, r.env(map[string]string{
			"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": keyFile, "FORWARDER_ADDR": addr,
		}))
		testharness.WaitHTTP(t, "http://"+addr+"/healthz", 30*time.Second)
		return p
	}
	addrA, addrB := r.forwarderAddr, testharness.FreeAddr(t)
	a := start("forwarder-a", addrA, fileA)
	// Alone, it compares its key with none other and is ready.
	testharness.WaitHTTP(t, "http://"+addrA+"/readyz", 30*time.Second)
	b := start("forwarder-b", addrB, fileB)

	for _, f := range []struct {
		p           *testharness.Program
		addr        string
		mine, other string
	}{{a, addrA, kA.Fingerprint(), kB.Fingerprint()}, {b, addrB, kB.Fingerprint(), kA.Fingerprint()}} {
		testharness.WaitFor(t, "both forwarders to see the other key", 30*time.Second, func() bool {
			return testharness.HasLogLine(f.p.Logs.String(), `"msg":"other live forwarders serving the destination have another de-identification key`,
				`"key_fingerprint":"`+f.mine+`"`, `"other_key_fingerprints":["`+f.other+` (`)
		})
		if v, _ := testharness.Metric(t, "http://"+f.addr+"/metrics", `stowline_forwarder_deidentify_key_disagreement{destination="default"}`); v != 1 {
			t.Errorf("%s: stowline_forwarder_deidentify_key_disagreement %v, want 1", f.addr, v)
		}
		resp, err := http.Get("http://" + f.addr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s: /readyz %s while the keys differ, want 503", f.addr, resp.Status)
		}
	}

	ev := r.publish(t, r.addStudy(t, 2, 16))
	// Nothing to wait for but time: a worker asks whether it may pull
	// every second; several rounds go by.
	for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if n := r.proxy.STOWRequests(); n > 0 {
			t.Fatalf("%d STOW-RS requests while the forwarders' keys differ", n)
		}
	}
	// Still queued: nothing acknowledged. A pull made before a forwarder
	// saw the other key may have taken it and given it back.
	if info := r.consumerInfo(t); info == nil || info.AckFloor.Stream != 0 {
		t.Fatalf("the study was acknowledged while the keys differ: %+v", info)
	}

	// The key agreed: b restarted with a's.
	if err := b.Stop(); err != nil {
		t.Fatalf("forwarder-b: %v", err)
	}
	start("forwarder-b-again", addrB, fileA)
	r.waitDest(t, 2, 2*time.Minute)
	r.waitQueueEmpty(t, time.Minute)
	// forwarder-a waits two puts of the bucket (10 s) of reads finding no
	// other key before it says so (b-again pulls at once, never having
	// disagreed).
	testharness.WaitFor(t, "forwarder-a to say the keys agree again", time.Minute, func() bool {
		return testharness.HasLogLine(a.Logs.String(), `"msg":"the forwarders serving the destination agree on its de-identification key again`, kA.Fingerprint())
	})
	var studies []struct {
		MainDicomTags        map[string]string
		PatientMainDicomTags map[string]string
	}
	r.dest.GetJSON(t, "/studies?expand", &studies)
	if len(studies) != 1 {
		t.Fatalf("the destination holds %d studies, want 1", len(studies))
	}
	st := studies[0]
	if got, want := st.MainDicomTags["StudyInstanceUID"], kA.UID(ev.StudyInstanceUID); got != want {
		t.Errorf("StudyInstanceUID %s at the destination, want %s (the agreed key's pseudonym)", got, want)
	}
	if got, want := st.PatientMainDicomTags["PatientID"], kA.PatientID("FWD-TEST"); got != want {
		t.Errorf("PatientID %s at the destination, want %s", got, want)
	}
}

func writeKeyFile(t *testing.T, key []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "deident.key")
	if err := os.WriteFile(f, append(key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
