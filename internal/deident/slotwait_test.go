package deident

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/flow"
	"github.com/stowline/stowline/internal/testharness"
)

// pixels is n bytes of Pixel Data that are not all alike.
func pixels(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// countingHash is a hash that counts what it was given.
type countingHash struct {
	hash.Hash
	n atomic.Int64
}

func (c *countingHash) Write(b []byte) (int, error) {
	c.n.Add(int64(len(b)))
	return c.Hash.Write(b)
}

// TestSlotWaitReopensTheSource: a Reader's rewrite that finds the large
// slot taken closes its source while it waits (left open and unread,
// Orthanc would cut it), then reads a new one holding the slot; its
// reader gets the copy a rewrite that never waited writes, byte for
// byte, also when the wait comes after Pixel Data was given to it.
func TestSlotWaitReopensTheSource(t *testing.T) {
	for _, tt := range []struct {
		name      string
		allowance int64
		in        []byte
		delivered bool // bytes of the copy were read before the wait
	}{
		{"held header", 1 << 20, enhancedMR(t, 600), false},
		{"value after Pixel Data", 48 << 10, enhancedMRWith(t, 1, pixels(1<<20),
			str(0x7FE10010, "LO", "STOWLINE TEST"),
			str(0x7FE11001, "UT", strings.Repeat("after the pixels ", 60000/17))), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := boundedDeidentifier(t, tt.allowance)
			alone := sha256.New()
			if _, err := d.Rewrite(alone, bytes.NewReader(tt.in)); err != nil {
				t.Fatal(err)
			}
			if err := d.mem.acquire(t.Context()); err != nil { // another rewrite's
				t.Fatal(err)
			}
			var (
				mu   sync.Mutex
				srcs []*closeRecorder
			)
			open := func(context.Context) (io.ReadCloser, error) {
				mu.Lock()
				defer mu.Unlock()
				c := &closeRecorder{Reader: bytes.NewReader(tt.in), closed: make(chan struct{})}
				srcs = append(srcs, c)
				return c, nil
			}
			rc, err := d.Reader(t.Context(), open)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = rc.Close() })
			got := &countingHash{Hash: sha256.New()}
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(got, rc)
				done <- err
			}()
			waitFor(t, "the rewrite to close its source to wait", func() bool {
				mu.Lock()
				defer mu.Unlock()
				select {
				case <-srcs[0].closed:
					return true
				default:
					return false
				}
			})
			if n := got.n.Load(); (n > 0) != tt.delivered {
				t.Errorf("%d bytes read before the wait, want some: %v", n, tt.delivered)
			}
			d.mem.release()
			if err := <-done; err != nil {
				t.Fatalf("reading the copy after the wait: %v", err)
			}
			if !bytes.Equal(got.Sum(nil), alone.Sum(nil)) {
				t.Error("the copy read through the wait differs from the rewrite's alone")
			}
			mu.Lock()
			defer mu.Unlock()
			if len(srcs) != 2 {
				t.Errorf("source opened %d times, want 2", len(srcs))
			}
		})
	}
}

// TestSlotWaitOutlastsOrthancTimeout: a real Orthanc closes an answer
// it cannot send on after its HttpRequestTimeout (30 s by default, 2 s
// here). A rewrite that waits for the large slot longer than that, its
// file streaming from Orthanc, still gives the whole copy; before, it
// waited with the stream open and unread, and failed once the slot came
// with "the source ended before its length".
func TestSlotWaitOutlastsOrthancTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "slot-wait",
		Extra: map[string]any{"HttpRequestTimeout": int(timeout / time.Second)}})
	// A header over the allowance, then more Pixel Data than the sockets
	// between Orthanc and the reader buffer (~6 MB seen).
	b := enhancedMRWith(t, 600, pixels(32<<20), str(0x0020000D, "UI", "1.2.3.9"), str(0x0020000E, "UI", "1.2.3.9.1"))
	path := filepath.Join(t.TempDir(), "b.dcm")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, path); len(res.Failed) > 0 {
		t.Fatalf("upload: %v", res.Failed)
	}
	var ids []string
	o.GetJSON(t, "/instances", &ids)
	if len(ids) != 1 {
		t.Fatalf("instances %v, want one", ids)
	}
	var opened atomic.Int32
	open := func(ctx context.Context) (io.ReadCloser, error) {
		opened.Add(1)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.URL+"/instances/"+ids[0]+"/file", nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept-Encoding", "identity") // as orthancapi
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			_ = resp.Body.Close()
			return nil, fmt.Errorf("GET file: %s", resp.Status)
		}
		return resp.Body, nil
	}
	d := boundedDeidentifier(t, 1<<20)
	alone := sha256.New()
	if _, err := d.Rewrite(alone, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}

	// A takes the slot and keeps it until its header is read.
	ra, err := d.Reader(t.Context(), opens(enhancedMR(t, 601)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ra.Close() })
	if _, err := io.ReadFull(ra, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	ctx := flow.WithBoundedWait(t.Context(), func() func() {
		close(waiting)
		return func() {}
	})
	got := sha256.New()
	done := make(chan error, 1)
	go func() {
		rb, err := d.Reader(ctx, open)
		if err != nil {
			done <- err
			return
		}
		defer rb.Close()
		_, err = io.Copy(got, rb)
		done <- err
	}()
	select {
	case <-waiting:
	case err := <-done:
		t.Fatalf("B ended before waiting for the slot: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("B did not wait for the slot within 10 s")
	}
	// The wait itself is what Orthanc's time-out meets: no condition
	// to wait on but the time.
	time.Sleep(2 * timeout)
	if _, err := io.Copy(io.Discard, ra); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("B after a slot wait of %s (HttpRequestTimeout %s): %v", 2*timeout, timeout, err)
	}
	if !bytes.Equal(got.Sum(nil), alone.Sum(nil)) {
		t.Error("B's copy read through the wait differs from the rewrite's alone")
	}
	t.Logf("B's file opened %d times", opened.Load())
}

// Two rewrites whose held element after Pixel Data needs the large slot
// both wait for it. Each rerun released the slot at the byte that asked
// for it (the reset just before the element reached where the first run
// stopped), the other waiter took it, and the rerun failed busy at the
// same byte: the two handed the slot back and forth, each round reading
// the whole file again (165 to 1,415 opens). Kept until the input passes
// that byte, each opens its source twice.
func TestSlotWaitersDoNotHandTheSlotBackAndForth(t *testing.T) {
	in := enhancedMRWith(t, 1, pixels(1<<20),
		str(0x7FE10010, "LO", "STOWLINE TEST"),
		str(0x7FE11001, "UT", strings.Repeat("after the pixels ", 60000/17)))
	d := boundedDeidentifier(t, 48<<10)
	if err := d.mem.acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	var opened, closed atomic.Int32
	open := func(context.Context) (io.ReadCloser, error) {
		opened.Add(1)
		return closeCounter{Reader: bytes.NewReader(in), closed: &closed}, nil
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	done := make(chan error, 2)
	for range 2 {
		rc, err := d.Reader(ctx, open)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			_, err := io.Copy(io.Discard, rc)
			rc.Close()
			done <- err
		}()
	}
	// Both read their source up to the element, found the slot taken,
	// and closed it to wait.
	waitFor(t, "both rewrites to close their source to wait", func() bool { return closed.Load() == 2 })
	d.mem.release()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("rewrite: %v (sources opened %d times)", err, opened.Load())
		}
	}
	if n := opened.Load(); n > 4 {
		t.Errorf("sources opened %d times, want at most 4 (each once more after its wait)", n)
	}
}

// closeCounter counts its Closes in closed.
type closeCounter struct {
	io.Reader
	closed *atomic.Int32
}

func (c closeCounter) Close() error {
	c.closed.Add(1)
	return nil
}
