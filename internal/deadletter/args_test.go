package deadletter_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
)

func TestParseTime(t *testing.T) {
	midnight := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
	}{
		{"2026-11-01T00:00Z", midnight},
		{"2026-11-01T02:00+02:00", midnight},
		{"2026-11-01T00:00:00Z", midnight},
		{"2026-11-01T00:00:00.5Z", midnight.Add(500 * time.Millisecond)},
		{"2026-11-01T10:30:15", midnight.Add(10*time.Hour + 30*time.Minute + 15*time.Second)},
		{"2026-11-01T10:30", midnight.Add(10*time.Hour + 30*time.Minute)},
		{"2026-11-01", midnight},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := deadletter.ParseTime(tt.in)
			if err != nil {
				t.Fatalf("ParseTime(%q): %v", tt.in, err)
			}
			if !got.Equal(tt.want) || got.Location() != time.UTC {
				t.Errorf("ParseTime(%q) = %v, want %v in UTC", tt.in, got, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "yesterday", "11/01/2026", "2026-13-01", "2026-11-01 10:30"} {
		t.Run("rejects "+bad, func(t *testing.T) {
			if got, err := deadletter.ParseTime(bad); err == nil {
				t.Errorf("ParseTime(%q) = %v, want an error", bad, got)
			} else if !strings.Contains(err.Error(), "2026-11-01") {
				t.Errorf("error %q does not show an accepted form", err)
			}
		})
	}
}

func TestFilterArgs(t *testing.T) {
	orthancID := "5b2a8e4c-1f6d3a90-0c7e2b41-9d8f6a53-e4b1c2d7"
	tests := []struct {
		name  string
		args  deadletter.FilterArgs
		want  deadletter.Filter
		empty bool
	}{
		{"nothing", deadletter.FilterArgs{}, deadletter.Filter{}, true},
		{"all", deadletter.FilterArgs{All: true}, deadletter.Filter{All: true}, false},
		{"seq", deadletter.FilterArgs{Seq: "12"}, deadletter.Filter{Seq: 12}, false},
		{"source", deadletter.FilterArgs{Source: "cardio"}, deadletter.Filter{Source: "cardio"}, false},
		{"study", deadletter.FilterArgs{Study: "1.2.840.113619.2.55"}, deadletter.Filter{StudyInstanceUID: "1.2.840.113619.2.55"}, false},
		{"orthanc id", deadletter.FilterArgs{OrthancStudyID: orthancID}, deadletter.Filter{OrthancStudyID: orthancID}, false},
		{"class", deadletter.FilterArgs{Class: "source-missing"}, deadletter.Filter{Class: forward.SourceMissing}, false},
		{"class of a letter this build cannot decode, as listed", deadletter.FilterArgs{Class: "unreadable-letter"}, deadletter.Filter{Class: deadletter.UnreadableLetter}, false},
		{"reason", deadletter.FilterArgs{Reason: "415"}, deadletter.Filter{ReasonContains: "415"}, false},
		{"since", deadletter.FilterArgs{Since: "2026-11-01"}, deadletter.Filter{Since: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}, false},
		{"several", deadletter.FilterArgs{Class: "permanent", Reason: "HTTP 4"}, deadletter.Filter{Class: forward.Permanent, ReasonContains: "HTTP 4"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.args.Filter()
			if err != nil {
				t.Fatalf("Filter: %v", err)
			}
			if got != tt.want {
				t.Errorf("Filter = %+v, want %+v", got, tt.want)
			}
			if got.Empty() != tt.empty {
				t.Errorf("Empty = %v, want %v", got.Empty(), tt.empty)
			}
		})
	}
}

// Errors name the argument to fix, every one of them at once.
func TestFilterArgsErrors(t *testing.T) {
	tests := []struct {
		name string
		args deadletter.FilterArgs
		want []string
	}{
		{"seq not a number", deadletter.FilterArgs{Seq: "x"}, []string{"seq:"}},
		{"seq zero", deadletter.FilterArgs{Seq: "0"}, []string{"seq:"}},
		{"seq negative", deadletter.FilterArgs{Seq: "-3"}, []string{"seq:"}},
		{"study", deadletter.FilterArgs{Study: "1.2 3"}, []string{"study:"}},
		{"source", deadletter.FilterArgs{Source: "cardio/../x"}, []string{"source:"}},
		{"orthanc id", deadletter.FilterArgs{OrthancStudyID: "not-an-id"}, []string{"orthanc-id:"}},
		{"class lists the classes", deadletter.FilterArgs{Class: "fatal"}, []string{"class:", "transient", "crash"}},
		{"since", deadletter.FilterArgs{Since: "last week"}, []string{"since:"}},
		{"all with a filter", deadletter.FilterArgs{All: true, Class: "permanent"}, []string{"all: cannot be combined"}},
		{"given empty", deadletter.FilterArgs{Destination: "pacs", Blank: []string{"study"}}, []string{"study: empty"}},
		{"every error at once", deadletter.FilterArgs{Seq: "x", Class: "fatal", Since: "soon"}, []string{"seq:", "class:", "since:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.args.Filter()
			if err == nil {
				t.Fatalf("Filter(%+v) succeeded", tt.args)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}
