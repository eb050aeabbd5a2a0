package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Priority configures how the ingest picks an event's lane
// (docs/priority-lanes.md).
type Priority struct {
	Rule string `env:"PRIORITY_RULE" desc:"CEL rule over the study (the variables of DESTINATION_<NAME>_MATCH: source, study.description, study.modalities, study.callingAets, ...); a study it is true for goes in the stat lane, ahead of routine studies and backfills. Only for events that name no priority (the Lua script's Stowline.Priority or StowlinePriority hook); reads the study from its source Orthanc (ORTHANC_URL or ORTHANC_<NAME>_URL). A rule that fails on a study leaves it routine. Example: study.description.contains('STAT') || study.description.contains('TRAUMA') (prefer the description and modalities: callingAets and sopClasses read every instance's metadata)"`
}

// Lanes configures the forwarders' priority lanes.
type Lanes struct {
	StatWorkers int            `env:"FORWARDER_STAT_CONCURRENCY" envDefault:"1" desc:"workers per destination, beyond FORWARDER_CONCURRENCY, that take only stat studies, so a stat study never waits for a worker busy with a backfill; 0: stat studies only go first in the shared workers"`
	Windows     ForwardWindows `env:"FORWARD_WINDOWS" desc:"hours a lane is pulled in, comma-separated lane=HH:MM-HH:MM in the process's local time (TZ); a window may cross midnight and a lane may have several; outside its windows a lane is not pulled (studies in flight finish). Lanes: stat, routine, low (alias backfill). Example: low=22:00-07:00"`
	// Zone is only checked: the Go runtime reads TZ itself.
	Zone string `env:"TZ" desc:"the process's time zone, that of FORWARD_WINDOWS: an IANA name (case-sensitive, e.g. Europe/Paris) or a zone file's path; unset: the system's (the images': UTC). With FORWARD_WINDOWS, one this process cannot load is refused: Go would read it as UTC"`
}

// Validate names the variable that is out of range.
func (l *Lanes) Validate() error {
	if l.StatWorkers < 0 || l.StatWorkers > 64 {
		return fmt.Errorf("FORWARDER_STAT_CONCURRENCY=%d: want 0 to 64", l.StatWorkers)
	}
	if len(l.Windows) > 0 {
		if err := checkZone(l.Zone); err != nil {
			return fmt.Errorf("TZ=%q: %w: Go would read FORWARD_WINDOWS in UTC; want an IANA time zone name (case-sensitive, e.g. Europe/Paris) or the path of a zone file", l.Zone, err)
		}
	}
	return nil
}

// checkZone reports whether the Go runtime can load tz as the local time
// zone, as it reads TZ (time.initLocal): a leading ':' is dropped, a path
// names a zone file, UTC and empty are UTC, anything else is a zone name.
// The runtime reads one it cannot load as UTC, without a word.
func checkZone(tz string) error {
	tz = strings.TrimPrefix(tz, ":")
	switch {
	case tz == "" || tz == "UTC":
		return nil
	case tz == "Local":
		// time.LoadLocation's name for the local zone; no zone file.
		return errors.New("not a time zone name")
	case strings.HasPrefix(tz, "/"):
		b, err := os.ReadFile(tz)
		if err != nil {
			return err
		}
		_, err = time.LoadLocationFromTZData(tz, b)
		return err
	}
	_, err := time.LoadLocation(tz)
	return err
}

// ForwardWindows are the hours of the lanes FORWARD_WINDOWS limits, by
// lane (stat, routine, low); a lane without any is always open.
type ForwardWindows map[string][]DailyWindow

// DailyWindow is a span of the day, [From, To) in minutes after midnight;
// From > To crosses midnight.
type DailyWindow struct{ From, To int }

// Contains reports whether the minute of the day m is in the window.
func (w DailyWindow) Contains(m int) bool {
	if w.From < w.To {
		return w.From <= m && m < w.To
	}
	return m >= w.From || m < w.To
}

func (w DailyWindow) String() string {
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.From/60, w.From%60, w.To/60, w.To%60)
}

// Open reports whether lane may be pulled at t, read in t's zone.
func (f ForwardWindows) Open(lane string, t time.Time) bool {
	ws, limited := f[lane]
	if !limited {
		return true
	}
	m := t.Hour()*60 + t.Minute()
	for _, w := range ws {
		if w.Contains(m) {
			return true
		}
	}
	return false
}

// laneAliases maps the names FORWARD_WINDOWS accepts to lanes.
var laneAliases = map[string]string{"stat": "stat", "routine": "routine", "low": "low", "backfill": "low"}

// UnmarshalText parses lane=HH:MM-HH:MM[,lane=HH:MM-HH:MM...].
func (f *ForwardWindows) UnmarshalText(b []byte) error {
	out := ForwardWindows{}
	for item := range strings.SplitSeq(string(b), ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, span, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("%q: want lane=HH:MM-HH:MM, e.g. low=22:00-07:00", item)
		}
		lane, ok := laneAliases[strings.TrimSpace(name)]
		if !ok {
			return fmt.Errorf("%q: unknown lane %q (want stat, routine, low or backfill)", item, strings.TrimSpace(name))
		}
		from, to, ok := strings.Cut(strings.TrimSpace(span), "-")
		if !ok {
			return fmt.Errorf("%q: want lane=HH:MM-HH:MM, e.g. low=22:00-07:00", item)
		}
		var w DailyWindow
		var err error
		if w.From, err = minuteOfDay(from); err != nil {
			return fmt.Errorf("%q: %w", item, err)
		}
		if w.From == minutesPerDay {
			return fmt.Errorf("%q: 24:00 ends a window; start it at 00:00", item)
		}
		if w.To, err = minuteOfDay(to); err != nil {
			return fmt.Errorf("%q: %w", item, err)
		}
		if w.From == w.To {
			return fmt.Errorf("%q: the window is empty (for a lane open all day, leave it out)", item)
		}
		out[lane] = append(out[lane], w)
	}
	*f = out
	return nil
}

// minutesPerDay is 24:00, which may end a window.
const minutesPerDay = 24 * 60

// minuteOfDay parses HH:MM (00:00 to 24:00).
func minuteOfDay(s string) (int, error) {
	t, err := time.Parse("15:04", strings.TrimSpace(s))
	if err == nil {
		return t.Hour()*60 + t.Minute(), nil
	}
	if strings.TrimSpace(s) == "24:00" {
		return minutesPerDay, nil
	}
	return 0, errors.New("times are HH:MM, 00:00 to 24:00")
}

// String writes the windows back as FORWARD_WINDOWS, lanes in order.
func (f ForwardWindows) String() string {
	var parts []string
	for _, lane := range []string{"stat", "routine", "low"} {
		for _, w := range f[lane] {
			parts = append(parts, lane+"="+w.String())
		}
	}
	return strings.Join(parts, ",")
}
