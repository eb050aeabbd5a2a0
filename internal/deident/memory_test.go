package deident

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/flow"
)

// boundedDeidentifier lowers the hold and the shared bound so that the
// tests stay small: headers over allowance need the one large slot.
func boundedDeidentifier(t *testing.T, allowance int64) *Deidentifier {
	t.Helper()
	d := newTestDeidentifier(t, Options{CleanDescriptors: true})
	d.heldLimit = 16 << 20
	d.mem = newMemory(allowance, 1)
	return d
}

// heapPeak samples HeapInuse until the returned stop is called, which
// returns the highest sample above the heap in use at the start.
func heapPeak(t *testing.T) (stop func() int64) {
	t.Helper()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := int64(ms.HeapInuse)
	done, out := make(chan struct{}), make(chan int64)
	go func() {
		var peak int64
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, int64(ms.HeapInuse)-base)
			select {
			case <-done:
				out <- peak
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return func() int64 { close(done); return <-out }
}

// TestConcurrentRewritesShareTheLargeHold: eight enhanced MR headers of
// ~12 MB charged each, rewritten at once on one Deidentifier whose
// allowance is 1 MiB, keep the heap near one rewrite's (one large slot),
// not eight; each copy is the one a rewrite alone writes.
func TestConcurrentRewritesShareTheLargeHold(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(25)) // HeapInuse near what is live
	const n = 8
	d := boundedDeidentifier(t, 1<<20)
	ins := make([][]byte, n)
	want := make([][32]byte, n)
	var single int64
	for i := range ins {
		ins[i] = enhancedMR(t, 600+i)
		h := sha256.New()
		stop := heapPeak(t)
		if _, err := d.Rewrite(h, bytes.NewReader(ins[i])); err != nil {
			t.Fatalf("rewrite %d alone: %v", i, err)
		}
		single = max(single, stop())
		copy(want[i][:], h.Sum(nil))
	}
	start := make(chan struct{})
	errs := make([]error, n)
	got := make([][32]byte, n)
	var wg sync.WaitGroup
	stop := heapPeak(t)
	for i := range ins {
		wg.Go(func() {
			<-start
			h := sha256.New()
			_, errs[i] = d.Rewrite(h, bytes.NewReader(ins[i]))
			copy(got[i][:], h.Sum(nil))
		})
	}
	close(start)
	wg.Wait()
	peak := stop()
	for i := range ins {
		if errs[i] != nil {
			t.Errorf("rewrite %d at once: %v", i, errs[i])
		} else if got[i] != want[i] {
			t.Errorf("rewrite %d at once wrote another copy than alone", i)
		}
	}
	// One large hold and n allowances (1 MiB charged, ~2 MB live each),
	// with room for garbage; unbounded, the trees are live together
	// (seen 60 to 100 MB).
	limit := single*3/2 + n*(3<<20)
	t.Logf("one rewrite alone peaked %d MB above the start, %d at once: %d MB (limit %d MB)", single>>20, n, peak>>20, limit>>20)
	if peak > limit {
		t.Errorf("%d rewrites at once peaked %d MB above the start, more than %d MB (one alone: %d MB)", n, peak>>20, limit>>20, single>>20)
	}
	if k := len(d.mem.large); k != 0 {
		t.Errorf("%d large slots still taken after the rewrites", k)
	}
}

// TestWaitForLargeSlotStopsWithContext: a rewrite waiting for the large
// slot (held elsewhere) fails promptly with its context's error when the
// context is cancelled or its reader closed, and takes no slot.
func TestWaitForLargeSlotStopsWithContext(t *testing.T) {
	in := enhancedMR(t, 200) // ~4 MB charged, over the 1 MiB allowance
	for _, tt := range []struct {
		name string
		stop func(cancel context.CancelFunc, rc io.ReadCloser)
		want error // what the reader's Read returns
	}{
		{"context cancelled", func(cancel context.CancelFunc, _ io.ReadCloser) { cancel() }, context.Canceled},
		{"reader closed", func(_ context.CancelFunc, rc io.ReadCloser) { _ = rc.Close() }, io.ErrClosedPipe},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := boundedDeidentifier(t, 1<<20)
			if err := d.mem.acquire(t.Context()); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			t.Cleanup(cancel)
			src := &closeRecorder{Reader: bytes.NewReader(in), closed: make(chan struct{})}
			rc, err := d.Reader(ctx, func(context.Context) (io.ReadCloser, error) { return src, nil })
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, rc)
				done <- err
			}()
			tt.stop(cancel, rc)
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) {
					t.Errorf("read ended with %v, want %v", err, tt.want)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the rewrite still waits 30 s after the stop")
			}
			d.mem.release()
			_ = rc.Close()
			<-src.closed
			// A rewrite that stopped waiting never takes the slot later.
			deadline := time.Now().Add(100 * time.Millisecond)
			for time.Now().Before(deadline) {
				if len(d.mem.large) != 0 {
					t.Fatal("a stopped rewrite took the large slot")
				}
				runtime.Gosched()
			}
		})
	}
}

// opens is an open for Reader of the file b.
func opens(b []byte) func(context.Context) (io.ReadCloser, error) {
	return func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

type closeRecorder struct {
	io.Reader
	once   sync.Once
	closed chan struct{}
}

func (c *closeRecorder) Close() error { c.once.Do(func() { close(c.closed) }); return nil }

// TestRewriteReturnsTheLargeSlot: every way a rewrite holding the large
// slot ends gives it back: done, malformed, too large, its reader closed
// early, a panic.
func TestRewriteReturnsTheLargeSlot(t *testing.T) {
	in := enhancedMR(t, 200)
	for _, tt := range []struct {
		name string
		run  func(d *Deidentifier) error
	}{
		{"done", func(d *Deidentifier) error {
			_, err := d.Rewrite(io.Discard, bytes.NewReader(in))
			return err
		}},
		{"malformed", func(d *Deidentifier) error {
			_, err := d.Rewrite(io.Discard, bytes.NewReader(in[:len(in)*3/4]))
			if !errors.Is(err, ErrMalformed) {
				return fmt.Errorf("cut file: %v, want ErrMalformed", err)
			}
			return nil
		}},
		{"too large", func(d *Deidentifier) error {
			_, err := d.Rewrite(io.Discard, bytes.NewReader(enhancedMR(t, 1000)))
			if !errors.Is(err, ErrTooLarge) {
				return fmt.Errorf("20 MB charged: %v, want ErrTooLarge", err)
			}
			return nil
		}},
		{"reader closed early", func(d *Deidentifier) error {
			rc, err := d.Reader(context.Background(), opens(in))
			if err != nil {
				return err
			}
			if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
				return err
			}
			return rc.Close()
		}},
		{"panic", func(d *Deidentifier) (err error) {
			defer func() {
				if recover() == nil {
					err = errors.New("no panic")
				}
			}()
			_, _ = d.Rewrite(panickingWriter{}, bytes.NewReader(in))
			return nil
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := boundedDeidentifier(t, 1<<20)
			if err := tt.run(d); err != nil {
				t.Fatal(err)
			}
			// The reader's rewrite ends on its own goroutine.
			deadline := time.Now().Add(30 * time.Second)
			for len(d.mem.large) != 0 {
				if time.Now().After(deadline) {
					t.Fatal("the large slot is still taken 30 s after the rewrite ended")
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}

type panickingWriter struct{}

func (panickingWriter) Write([]byte) (int, error) { panic("a writer bug") }

// TestWaitForTheLargeSlotIsReported: a rewrite that waits for the large
// slot tells ctx's flow.WithWaitReport how long (the forwarder leaves it out of
// the request's time for the destination); one that does not wait tells
// nothing.
func TestWaitForTheLargeSlotIsReported(t *testing.T) {
	in := enhancedMR(t, 600)
	for _, c := range []struct {
		name string
		held bool // the slot is taken by another rewrite for a second
		want []time.Duration
	}{
		{"slot free", false, nil},
		{"slot held", true, []time.Duration{time.Second}},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := boundedDeidentifier(t, 1<<20)
				if c.held {
					if err := d.mem.acquire(t.Context()); err != nil {
						t.Fatal(err)
					}
				}
				var (
					mu  sync.Mutex
					got []time.Duration
				)
				ctx := flow.WithWaitReport(t.Context(), func(w time.Duration) {
					mu.Lock()
					defer mu.Unlock()
					got = append(got, w)
				})
				done := make(chan error, 1)
				go func() {
					rc, err := d.Reader(ctx, opens(in))
					if err != nil {
						done <- err
						return
					}
					defer rc.Close()
					_, err = io.Copy(io.Discard, rc)
					done <- err
				}()
				if c.held {
					synctest.Wait() // the rewrite waits for the slot
					time.Sleep(time.Second)
					d.mem.release()
				}
				if err := <-done; err != nil {
					t.Fatalf("rewrite: %v", err)
				}
				mu.Lock()
				defer mu.Unlock()
				if !slices.Equal(got, c.want) {
					t.Errorf("reported waits %v, want %v", got, c.want)
				}
			})
		})
	}
}

// A rewrite waiting for the large slot yields no byte for as long as the
// holder's consumer (its STOW-RS request to a slow destination) takes to
// read the holder's header: the wait is a flow.BoundedWait, so the stall
// watch of the waiter's request or measuring pass does not give it up
// as "its source gave no byte" (the study would fail at every delivery,
// blaming an Orthanc that answers).
func TestSlotWaitIsNoSourceStall(t *testing.T) {
	const stall = 300 * time.Millisecond
	d := boundedDeidentifier(t, 1<<20)
	a, b := enhancedMR(t, 600), enhancedMR(t, 601)
	ra, err := d.Reader(t.Context(), opens(a))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ra.Close() })
	// A's first byte: A holds the slot until its header is read.
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(ra, buf[:1]); err != nil {
		t.Fatal(err)
	}
	var slow sync.WaitGroup
	t.Cleanup(slow.Wait)
	slow.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond) // ~640 KB/s
		defer tick.Stop()
		for range tick.C {
			if _, err := ra.Read(buf); err != nil {
				return
			}
		}
	})
	start := time.Now()
	n, err := dicomweb.CountBytes(t.Context(), func(ctx context.Context) (io.ReadCloser, error) {
		return d.Reader(ctx, opens(b))
	}, stall)
	if err != nil {
		t.Fatalf("counting B while A holds the slot: %v (after %s)", err, time.Since(start).Round(time.Millisecond))
	}
	if n == 0 {
		t.Fatal("B counted no byte")
	}
	if waited := time.Since(start); waited < 2*stall {
		t.Fatalf("B done after %s: it did not wait for the slot longer than the stall time-out, the test proves nothing", waited)
	}
}
