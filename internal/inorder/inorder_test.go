package inorder

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
)

// A Pipeline ends its tasks in the order they were started, however
// they finish, never has more than its limit running, and stops starting
// at the first failed end: that failure is the one reported, and the
// tasks started with it are ended all the same.
func TestPipeline(t *testing.T) {
	tests := []struct {
		name      string
		limit     int
		tasks     int
		fail      map[int]bool // tasks whose work fails
		wantEnded []int
		wantErr   string
	}{
		{name: "all succeed", limit: 4, tasks: 20, wantEnded: seq(0, 20)},
		{name: "one at a time", limit: 1, tasks: 5, wantEnded: seq(0, 5)},
		// Task 5 fails: with a limit of 4, tasks 6 to 8 were started with
		// it (Run ends the oldest only once 4 are not ended, or done).
		{name: "stops at the first failure", limit: 4, tasks: 20, fail: map[int]bool{5: true, 7: true}, wantErr: "task 5"},
		{name: "the first task fails", limit: 1, tasks: 5, fail: map[int]bool{0: true}, wantEnded: []int{0}, wantErr: "task 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var running, most atomic.Int32
			gates := make([]chan struct{}, tt.tasks)
			for i := range gates {
				gates[i] = make(chan struct{})
			}
			// Each group of limit tasks is let go once its last one started,
			// newest first.
			release := func(i int) {
				if i%tt.limit == tt.limit-1 || i == tt.tasks-1 {
					for j := i; j >= 0 && j > i-tt.limit; j-- {
						close(gates[j])
					}
				}
			}
			p := New(tt.limit)
			var ended []int
			started := 0
			for i := range tt.tasks {
				err := p.Run(func() error {
					if n := running.Add(1); n > most.Load() {
						most.Store(n)
					}
					<-gates[i]
					running.Add(-1)
					if tt.fail[i] {
						return fmt.Errorf("task %d", i)
					}
					return nil
				}, func(err error) error {
					ended = append(ended, i)
					return err
				})
				if err != nil {
					if !errors.Is(err, ErrStopped) {
						t.Fatalf("Run = %v, want ErrStopped", err)
					}
					break
				}
				started++
				release(i)
			}
			// Those left waiting for the rest of their group are let go.
			for i := range gates {
				select {
				case <-gates[i]:
				default:
					close(gates[i])
				}
			}
			err := p.Wait()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr) {
				t.Errorf("Wait = %v, want %q", err, tt.wantErr)
			}
			if !slices.IsSorted(ended) || len(ended) != started {
				t.Errorf("ended %v; want the %d started, in order", ended, started)
			}
			if tt.wantEnded != nil && !slices.Equal(ended, tt.wantEnded) {
				t.Errorf("ended %v, want %v", ended, tt.wantEnded)
			}
			if int(most.Load()) > tt.limit {
				t.Errorf("%d tasks ran at once, want at most %d", most.Load(), tt.limit)
			}
		})
	}
}

func seq(from, to int) []int {
	out := make([]int, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// Wait may end the tasks part-way (a replay bounding what it holds):
// Run goes on after it, every task is ended once and in order, and a
// failure that Wait sees stops the run, reported once by the last Wait.
func TestWaitPartWay(t *testing.T) {
	for _, failAt := range []int{-1, 1} {
		t.Run(fmt.Sprintf("task %d fails", failAt), func(t *testing.T) {
			p := New(4)
			var ended []int
			run := func(i int) error {
				return p.Run(func() error {
					if i == failAt {
						return fmt.Errorf("task %d", i)
					}
					return nil
				}, func(err error) error {
					ended = append(ended, i)
					return err
				})
			}
			for i := range 3 {
				if err := run(i); err != nil {
					t.Fatalf("Run(%d) = %v", i, err)
				}
			}
			midErr := p.Wait()
			if failAt >= 0 {
				if midErr == nil || midErr.Error() != "task 1" {
					t.Fatalf("Wait part-way = %v, want task 1", midErr)
				}
				if err := run(3); !errors.Is(err, ErrStopped) {
					t.Errorf("Run after the failure = %v, want ErrStopped", err)
				}
				if err := p.Wait(); err == nil || err.Error() != "task 1" {
					t.Errorf("last Wait = %v, want task 1 again", err)
				}
				if !slices.Equal(ended, seq(0, 3)) {
					t.Errorf("ended %v, want %v", ended, seq(0, 3))
				}
				return
			}
			if midErr != nil {
				t.Fatalf("Wait part-way = %v", midErr)
			}
			for i := 3; i < 6; i++ {
				if err := run(i); err != nil {
					t.Fatalf("Run(%d) after Wait = %v", i, err)
				}
			}
			if err := p.Wait(); err != nil || !slices.Equal(ended, seq(0, 6)) {
				t.Errorf("last Wait = %v, ended %v; want nil, %v", err, ended, seq(0, 6))
			}
		})
	}
}
