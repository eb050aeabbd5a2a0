package app

import (
	"testing"
	"time"
)

func TestParseSince(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "7d", want: 7 * 24 * time.Hour},
		{in: "36h", want: 36 * time.Hour},
		{in: "90m", want: 90 * time.Minute},
		{in: "0d", bad: true},
		{in: "-1h", bad: true},
		{in: "d", bad: true},
		{in: "week", bad: true},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in)
		if tt.bad != (err != nil) || got != tt.want {
			t.Errorf("parseSince(%q) = %v, %v; want %v (error: %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}
