package testharness

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"testing"
	"time"
)

// restTimeout bounds one helper call against Orthanc's REST API.
const restTimeout = 2 * time.Minute

// StoreResult tells which files a store accepted.
type StoreResult struct {
	// Stored are the files the server acknowledged, in input order.
	Stored []string
	// Failed maps each other file to the reason.
	Failed map[string]string
	// Output is storescu's output (StoreSCU only), for debugging.
	Output string
}

// FailedFiles returns the failed files, sorted.
func (r StoreResult) FailedFiles() []string {
	out := make([]string, 0, len(r.Failed))
	for f := range r.Failed {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

// GetJSON decodes the JSON answer of GET path (which may hold a query
// string) into v.
func (o *Orthanc) GetJSON(t testing.TB, path string, v any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), restTimeout)
	defer cancel()
	if err := o.do(ctx, http.MethodGet, path, nil, v); err != nil {
		t.Fatalf("orthanc %q: %v", o.Name, err)
	}
}

// Upload stores files with POST /instances. Unlike a C-STORE, this keeps
// every byte: GET /instances/{id}/file returns the file as uploaded, even
// a bare data set without file meta information. A file Orthanc already
// has ("AlreadyStored") counts as stored, but its bytes are not replaced.
func (o *Orthanc) Upload(t testing.TB, files ...string) StoreResult {
	t.Helper()
	res := StoreResult{Failed: map[string]string{}}
	for _, f := range files {
		if err := o.uploadFile(f); err != nil {
			res.Failed[f] = err.Error()
			continue
		}
		res.Stored = append(res.Stored, f)
	}
	return res
}

func (o *Orthanc) uploadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), restTimeout)
	defer cancel()
	var out struct{ ID, Status string }
	if err := o.do(ctx, http.MethodPost, "/instances", f, &out); err != nil {
		return err
	}
	if out.Status != "Success" && out.Status != "AlreadyStored" {
		return fmt.Errorf("POST /instances: status %q", out.Status)
	}
	return nil
}

// DeleteAll deletes every patient, so the next test phase starts empty
// (Orthanc keeps the first copy of an instance sent twice).
func (o *Orthanc) DeleteAll(t testing.TB) {
	t.Helper()
	var ids []string
	o.GetJSON(t, "/patients", &ids)
	ctx, cancel := context.WithTimeout(context.Background(), restTimeout)
	defer cancel()
	for _, id := range ids {
		if err := o.do(ctx, http.MethodDelete, "/patients/"+id, nil, nil); err != nil {
			t.Fatalf("orthanc %q: %v", o.Name, err)
		}
	}
}

// Statistics is the answer of GET /statistics.
type Statistics struct {
	CountPatients, CountStudies, CountSeries, CountInstances int
}

// Statistics returns Orthanc's resource counts.
func (o *Orthanc) Statistics(t testing.TB) Statistics {
	t.Helper()
	var s Statistics
	o.GetJSON(t, "/statistics", &s)
	return s
}

// WaitInstances waits until Orthanc holds at least n instances and
// returns the count; it fails the test after timeout.
func (o *Orthanc) WaitInstances(t testing.TB, n int, timeout time.Duration) int {
	t.Helper()
	return o.waitCount(t, "instances", n, timeout, func(s Statistics) int { return s.CountInstances })
}

// WaitStudies waits until Orthanc holds at least n studies and returns
// the count; it fails the test after timeout.
func (o *Orthanc) WaitStudies(t testing.TB, n int, timeout time.Duration) int {
	t.Helper()
	return o.waitCount(t, "studies", n, timeout, func(s Statistics) int { return s.CountStudies })
}

func (o *Orthanc) waitCount(t testing.TB, what string, n int, timeout time.Duration, get func(Statistics) int) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := get(o.Statistics(t))
		if got >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("orthanc %q: %d %s after %v, want at least %d", o.Name, got, what, timeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitStable waits until every study is stable (no new instance for
// StableAge seconds) and fails the test after timeout.
func (o *Orthanc) WaitStable(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var studies []struct {
			ID       string
			IsStable bool
		}
		o.GetJSON(t, "/studies?expand", &studies)
		unstable := 0
		for _, s := range studies {
			if !s.IsStable {
				unstable++
			}
		}
		if unstable == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("orthanc %q: %d of %d studies still unstable after %v", o.Name, unstable, len(studies), timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// InstanceMD5s returns SOPInstanceUID -> MD5 of GET /instances/{id}/file
// for every instance.
func (o *Orthanc) InstanceMD5s(t testing.TB) map[string]string {
	t.Helper()
	return o.instanceSums(t, func(r io.Reader) (string, error) {
		h := md5.New()
		if _, err := io.Copy(h, r); err != nil {
			return "", err
		}
		return hex.EncodeToString(h.Sum(nil)), nil
	})
}

// InstanceDatasetMD5s is InstanceMD5s over the data set only (see
// DatasetMD5): the file meta group may change in transit, the data set
// must not.
func (o *Orthanc) InstanceDatasetMD5s(t testing.TB) map[string]string {
	t.Helper()
	return o.instanceSums(t, DatasetMD5)
}

func (o *Orthanc) instanceSums(t testing.TB, sum func(io.Reader) (string, error)) map[string]string {
	t.Helper()
	var insts []struct {
		ID            string
		MainDicomTags struct{ SOPInstanceUID string }
	}
	o.GetJSON(t, "/instances?expand", &insts)
	out := make(map[string]string, len(insts))
	for _, in := range insts {
		uid := in.MainDicomTags.SOPInstanceUID
		if _, dup := out[uid]; dup {
			// Same SOP Instance UID in two studies: a map would hide one.
			t.Fatalf("orthanc %q: SOPInstanceUID %s is held by more than one instance", o.Name, uid)
		}
		s, err := o.fileSum(in.ID, sum)
		if err != nil {
			t.Fatalf("orthanc %q: instance %s: %v", o.Name, in.ID, err)
		}
		out[uid] = s
	}
	return out
}

func (o *Orthanc) fileSum(id string, sum func(io.Reader) (string, error)) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), restTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.URL+"/instances/"+id+"/file", nil)
	if err != nil {
		return "", err
	}
	if o.Username != "" {
		req.SetBasicAuth(o.Username, o.Password)
	}
	// Orthanc gzips files for clients that accept it: costly and useless
	// on loopback.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := o.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET file: HTTP %d", resp.StatusCode)
	}
	return sum(resp.Body)
}

// FileMD5 returns the hex MD5 of a local file.
func FileMD5(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FileDatasetMD5 is DatasetMD5 of a local file.
func FileDatasetMD5(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return DatasetMD5(f)
}
