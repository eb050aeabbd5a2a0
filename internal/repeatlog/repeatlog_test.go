package repeatlog

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

func TestFailures(t *testing.T) {
	tests := []struct {
		name   string
		every  time.Duration
		logged []int // the counts logged over 150 failures a second apart
	}{
		{"once a minute", time.Minute, []int{1, 61, 121}},
		{"the first only", 0, []int{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := Failures{Every: tt.every}
				if n := f.Succeeded(); n != 0 {
					t.Errorf("Succeeded without failures = %d, want 0", n)
				}
				var logged []int
				for range 150 {
					if n, log := f.Failed(); log {
						logged = append(logged, n)
					}
					time.Sleep(time.Second)
				}
				if !slices.Equal(logged, tt.logged) {
					t.Errorf("logged at counts %v, want %v", logged, tt.logged)
				}
				if n := f.Succeeded(); n != 150 {
					t.Errorf("Succeeded = %d, want the run's 150", n)
				}
				if n, log := f.Failed(); n != 1 || !log {
					t.Errorf("first failure of a new run: n %d, log %v; want 1, true", n, log)
				}
			})
		})
	}
}
