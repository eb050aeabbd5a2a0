package forward

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
)

// hours opens each lane it names in [from, to) hours.
type hours map[events.Priority][2]int

func (h hours) Open(lane events.Priority, now time.Time) bool {
	w, ok := h[lane]
	return !ok || now.Hour() >= w[0] && now.Hour() < w[1]
}

func lanesOf(ls []Lane) []events.Priority {
	var out []events.Priority
	for _, l := range ls {
		out = append(out, l.Priority)
	}
	return out
}

// TestLanePlanOpen: a worker considers the lanes highest first, a stat
// worker the stat lane only, and a lane outside its window not at all;
// the plan reads the clock it is given at each decision.
func TestLanePlanOpen(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.Local)
	all := []Lane{{Priority: events.PriorityStat}, {Priority: events.PriorityRoutine}, {Priority: events.PriorityLow}}
	tests := []struct {
		name     string
		windows  Windows
		hour     int
		statOnly bool
		want     []events.Priority
	}{
		{"no windows", nil, 12, false, []events.Priority{"stat", "routine", "low"}},
		{"stat worker", nil, 12, true, []events.Priority{"stat"}},
		{"low closed by day", hours{"low": {0, 7}}, 12, false, []events.Priority{"stat", "routine"}},
		{"low open at night", hours{"low": {0, 7}}, 3, false, []events.Priority{"stat", "routine", "low"}},
		{"stat worker ignores low windows", hours{"low": {0, 7}}, 12, true, []events.Priority{"stat"}},
		{"stat closed", hours{"stat": {0, 1}}, 12, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newLanePlan(&Options{Lanes: all, Windows: tt.windows, Concurrency: 4,
				Now: func() time.Time { return now.Add(time.Duration(tt.hour-12) * time.Hour) }})
			if got := lanesOf(p.open(tt.statOnly)); !slices.Equal(got, tt.want) {
				t.Errorf("open = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestLanePlanOpenLeavesAGoneLane: a lane whose consumer was deleted
// (markGone) is not pulled for laneGoneFor, then tried again; marking it
// again meanwhile reports false, so one worker tells of it.
func TestLanePlanOpenLeavesAGoneLane(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.Local)
	all := []Lane{{Priority: events.PriorityStat}, {Priority: events.PriorityRoutine}, {Priority: events.PriorityLow}}
	p := newLanePlan(&Options{Lanes: all, Concurrency: 4, Now: func() time.Time { return now }})
	if !p.markGone(events.PriorityRoutine, now) {
		t.Fatal("markGone of a lane not marked = false, want true")
	}
	if p.markGone(events.PriorityRoutine, now.Add(time.Second)) {
		t.Error("markGone of a lane marked already = true, want false")
	}
	if got, want := lanesOf(p.open(false)), []events.Priority{"stat", "low"}; !slices.Equal(got, want) {
		t.Errorf("open with routine gone = %v, want %v", got, want)
	}
	now = now.Add(laneGoneFor)
	if got, want := lanesOf(p.open(false)), []events.Priority{"stat", "routine", "low"}; !slices.Equal(got, want) {
		t.Errorf("open %s later = %v, want %v", laneGoneFor, got, want)
	}
}

// TestLaneOpenMetric: stowline_forwarder_lane_open follows the windows at
// each scrape, so the queue alerts can leave out a lane waiting for its
// hours.
func TestLaneOpenMetric(t *testing.T) {
	hour := 12
	all := []Lane{{Priority: events.PriorityStat}, {Priority: events.PriorityRoutine}, {Priority: events.PriorityLow}}
	p := newLanePlan(&Options{Lanes: all, Windows: hours{"routine": {19, 24}}, Concurrency: 4,
		Now: func() time.Time { return time.Date(2026, 12, 3, hour, 0, 0, 0, time.Local) }})
	reg := prometheus.NewRegistry()
	if err := p.registerOpen(reg, "archive"); err != nil {
		t.Fatal(err)
	}
	want := func(routine string) string {
		return `# HELP stowline_forwarder_lane_open 1 while the lane may be pulled, 0 outside its FORWARD_WINDOWS hours.
# TYPE stowline_forwarder_lane_open gauge
stowline_forwarder_lane_open{destination="archive",lane="low"} 1
stowline_forwarder_lane_open{destination="archive",lane="routine"} ` + routine + `
stowline_forwarder_lane_open{destination="archive",lane="stat"} 1
`
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want("0"))); err != nil {
		t.Errorf("at noon: %v", err)
	}
	hour = 20
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want("1"))); err != nil {
		t.Errorf("at 20:00: %v", err)
	}
}

// TestLanePlanClosed: the status names each lane outside its window now,
// with the first minute its window opens: later today, or tomorrow.
func TestLanePlanClosed(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 30, 15, 0, time.Local)
	all := []Lane{{Priority: events.PriorityStat}, {Priority: events.PriorityRoutine}, {Priority: events.PriorityLow}}
	p := newLanePlan(&Options{Lanes: all, Windows: hours{"routine": {22, 24}, "low": {0, 7}, "stat": {12, 13}}, Concurrency: 4,
		Now: func() time.Time { return now }})
	want := []ClosedLane{
		{Lane: events.PriorityRoutine, Opens: time.Date(2026, 12, 3, 22, 0, 0, 0, time.Local)},
		{Lane: events.PriorityLow, Opens: time.Date(2026, 12, 4, 0, 0, 0, 0, time.Local)},
	}
	got := p.closed()
	if !slices.EqualFunc(got, want, func(a, b ClosedLane) bool { return a.Lane == b.Lane && a.Opens.Equal(b.Opens) }) {
		t.Errorf("closed = %v, want %v", got, want)
	}
	if got := newLanePlan(&Options{Lanes: all, Concurrency: 4}).closed(); got != nil {
		t.Errorf("closed without windows = %v, want none", got)
	}
}

// TestLanePlanTake: the low lane takes at most Concurrency-1 workers (one
// with a single worker), the others any number; a released place is free
// again.
func TestLanePlanTake(t *testing.T) {
	for _, tt := range []struct{ concurrency, maxLow int }{{1, 1}, {2, 1}, {4, 3}} {
		p := newLanePlan(&Options{Concurrency: tt.concurrency, Lanes: []Lane{{Priority: events.PriorityLow}}})
		var releases []func()
		for range tt.maxLow {
			release, ok := p.take(events.PriorityLow)
			if !ok {
				t.Fatalf("concurrency %d: low refused below its %d workers", tt.concurrency, tt.maxLow)
			}
			releases = append(releases, release)
		}
		if _, ok := p.take(events.PriorityLow); ok {
			t.Errorf("concurrency %d: low took a worker beyond %d", tt.concurrency, tt.maxLow)
		}
		for range 10 {
			if _, ok := p.take(events.PriorityRoutine); !ok {
				t.Errorf("concurrency %d: routine refused", tt.concurrency)
			}
		}
		releases[0]()
		if _, ok := p.take(events.PriorityLow); !ok {
			t.Errorf("concurrency %d: low refused after a release", tt.concurrency)
		}
	}
}

// TestElsewhere: a lane's delivery belongs to another lane when its
// subject is another lane's or a triage subject; one no lane knows (a
// newer build's) stays with the lane that delivered it.
func TestElsewhere(t *testing.T) {
	topo := natsjs.DefaultTopology()
	p := &lanePlan{filters: map[events.Priority][]string{}}
	for _, lane := range events.Priorities {
		p.filters[lane] = topo.LaneConsumerConfig("default", lane, nil).FilterSubjects
	}
	for _, tc := range []struct {
		lane    events.Priority
		subject string
		want    bool
	}{
		{events.PriorityRoutine, "stowline.study.stable.a", false},
		{events.PriorityRoutine, "stowline.dest.default.a.routine", false},
		{events.PriorityRoutine, "stowline.dest.default.a", true},
		{events.PriorityRoutine, "stowline.study.stable.a.low", true},
		{events.PriorityRoutine, "stowline.study.stable.a.stat", true},
		{events.PriorityRoutine, "stowline.study.stable.a.triage", true},
		{events.PriorityRoutine, "stowline.study.stable.a.urgent", false},
		{events.PriorityLow, "stowline.dest.default.a", false},
		{events.PriorityStat, "stowline.dest.default.a.stat", false},
	} {
		if got := p.elsewhere(tc.lane, tc.subject); got != tc.want {
			t.Errorf("%s lane, subject %s: elsewhere = %v, want %v", tc.lane, tc.subject, got, tc.want)
		}
	}
	if (&lanePlan{}).elsewhere(events.PriorityRoutine, "stowline.dest.default.a") {
		t.Error("a plan without filters (one consumer, no lanes) sent an event elsewhere")
	}
}

// countedMetadata is a delivery that counts the reads of its metadata.
type countedMetadata struct {
	jetstream.Msg
	meta  *jetstream.MsgMetadata
	reads int
}

func (m *countedMetadata) Metadata() (*jetstream.MsgMetadata, error) {
	m.reads++
	return m.meta, nil
}

// A pulled event's metadata is parsed once, for its age in the stream
// and its hold on the lane's age both.
func TestPulledReadsMetadataOnce(t *testing.T) {
	f := newForwarder(t, newMemSource(1), "http://127.0.0.1:1", nil)
	m := &countedMetadata{meta: &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: 7}, Timestamp: time.Now()}}
	f.pulled(events.PriorityRoutine, m, func() {})()
	if m.reads != 1 {
		t.Errorf("metadata read %d times, want once", m.reads)
	}
}
