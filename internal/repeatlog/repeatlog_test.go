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
				time.Sleep(tt.every)
				if n, log := f.Failed(); n != 1 || !log {
					t.Errorf("first failure of a new run, Every after the last line: n %d, log %v; want 1, true", n, log)
				}
			})
		})
	}
}

// TestFailuresFlapping runs a dependency that fails and recovers, second
// by second: the lines stay those of the interval, not one pair per flap.
func TestFailuresFlapping(t *testing.T) {
	tests := []struct {
		name    string
		every   time.Duration
		seconds int
		// failing says whether the dependency fails at second s.
		failing func(s int) bool
		// The seconds a failure line and a resumed line are logged at.
		failedAt, resumedAt []int
	}{
		{
			// NATS reconnecting every 10 s: down 3 s, up 7 s.
			name: "a flap every 10 s", every: time.Minute, seconds: 180,
			failing:   func(s int) bool { return s%10 < 3 },
			failedAt:  []int{0, 60, 120},
			resumedAt: []int{3, 63, 123},
		},
		{
			// Down for good 30 s after a flap's line: told once the
			// minute since that line has passed, and then once a minute.
			name: "an outage right after a flap", every: time.Minute, seconds: 200,
			failing:   func(s int) bool { return s < 2 || (s >= 30 && s < 190) },
			failedAt:  []int{0, 60, 120, 180},
			resumedAt: []int{2, 190},
		},
		{
			name: "the zero value: each run's first", every: 0, seconds: 30,
			failing:   func(s int) bool { return s%10 < 3 },
			failedAt:  []int{0, 10, 20},
			resumedAt: []int{3, 13, 23},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := Failures{Every: tt.every}
				var failedAt, resumedAt []int
				for s := range tt.seconds {
					if tt.failing(s) {
						if _, log := f.Failed(); log {
							failedAt = append(failedAt, s)
						}
					} else if n := f.Succeeded(); n > 0 {
						resumedAt = append(resumedAt, s)
					}
					time.Sleep(time.Second)
				}
				if !slices.Equal(failedAt, tt.failedAt) {
					t.Errorf("failures logged at seconds %v, want %v", failedAt, tt.failedAt)
				}
				if !slices.Equal(resumedAt, tt.resumedAt) {
					t.Errorf("resumes logged at seconds %v, want %v", resumedAt, tt.resumedAt)
				}
			})
		})
	}
}
