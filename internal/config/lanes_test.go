package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Paris whatever the host has: the DST test never skips
)

func TestForwardWindows(t *testing.T) {
	at := func(hhmm string) time.Time {
		tm, err := time.Parse("15:04", hhmm)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	tests := []struct {
		value  string
		lane   string
		open   []string
		closed []string
	}{
		{"", "low", []string{"00:00", "12:00", "23:59"}, nil},
		{"low=22:00-07:00", "low", []string{"22:00", "23:59", "00:00", "06:59"}, []string{"07:00", "12:00", "21:59"}},
		{"low=22:00-07:00", "routine", []string{"12:00", "23:00"}, nil},
		{"backfill=22:00-07:00", "low", []string{"23:00"}, []string{"12:00"}},
		{"routine=08:00-18:00", "routine", []string{"08:00", "17:59"}, []string{"07:59", "18:00", "03:00"}},
		{"low=00:00-06:00, low=12:00-13:00", "low", []string{"00:00", "05:59", "12:30"}, []string{"06:00", "11:59", "13:00"}},
		{"low=20:00-24:00", "low", []string{"20:00", "23:59"}, []string{"00:00", "19:59"}},
		{"low=00:00-24:00", "low", []string{"00:00", "12:00", "23:59"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.value+"/"+tt.lane, func(t *testing.T) {
			var w ForwardWindows
			if err := w.UnmarshalText([]byte(tt.value)); err != nil {
				t.Fatal(err)
			}
			for _, h := range tt.open {
				if !w.Open(tt.lane, at(h)) {
					t.Errorf("%s closed at %s, want open", tt.lane, h)
				}
			}
			for _, h := range tt.closed {
				if w.Open(tt.lane, at(h)) {
					t.Errorf("%s open at %s, want closed", tt.lane, h)
				}
			}
		})
	}
}

func TestForwardWindowsErrors(t *testing.T) {
	for value, want := range map[string]string{
		"low":                 "want lane=HH:MM-HH:MM",
		"low=22:00":           "want lane=HH:MM-HH:MM",
		"urgent=22:00-07:00":  `unknown lane "urgent"`,
		"low=25:00-07:00":     "HH:MM",
		"low=22h-07h":         "HH:MM",
		"low=08:00-08:00":     "empty",
		"low=24:00-07:00":     "24:00 ends a window",
		"low=22:00-07:00,bad": "want lane=",
	} {
		var w ForwardWindows
		err := w.UnmarshalText([]byte(value))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want one saying %q", value, err, want)
		}
	}
}

// TestForwardWindowsVariable: a bad FORWARD_WINDOWS stops the start with
// an error naming the variable.
func TestForwardWindowsVariable(t *testing.T) {
	env := map[string]string{
		"NATS_URL": "nats://localhost:4222", "ORTHANC_URL": "http://orthanc:8042", "DICOMWEB_URL": "http://dest/dicomweb",
		"FORWARD_WINDOWS": "low=22:00-31:00",
	}
	var c ForwarderService
	err := Load(func(k string) string { return env[k] }, &c)
	if err == nil || !strings.Contains(err.Error(), "FORWARD_WINDOWS") {
		t.Fatalf("Load = %v, want an error naming FORWARD_WINDOWS", err)
	}
	env["FORWARD_WINDOWS"] = "backfill=22:00-07:00"
	c = ForwarderService{}
	if err := Load(func(k string) string { return env[k] }, &c); err != nil {
		t.Fatal(err)
	}
	if got := c.Forwarder.Windows.String(); got != "low=22:00-07:00" {
		t.Errorf("windows = %q", got)
	}
	if c.Forwarder.StatWorkers != 1 {
		t.Errorf("FORWARDER_STAT_CONCURRENCY default = %d, want 1", c.Forwarder.StatWorkers)
	}
}

// TestForwardWindowsZone: Go reads a TZ it cannot load (a misspelt or
// lower-case name, a POSIX rule string) silently as UTC, which would
// open the windows hours off; with FORWARD_WINDOWS set, such a TZ stops
// the start with an error naming it.
func TestForwardWindowsZone(t *testing.T) {
	if _, err := time.LoadLocation("Europe/Paris"); err != nil {
		t.Fatal(err)
	}
	zoneFile := filepath.Join(t.TempDir(), "paris")
	if b, err := os.ReadFile("/usr/share/zoneinfo/Europe/Paris"); err == nil {
		if err := os.WriteFile(zoneFile, b, 0o600); err != nil {
			t.Fatal(err)
		}
	} else {
		zoneFile = ""
	}
	notZone := filepath.Join(t.TempDir(), "not-a-zone")
	if err := os.WriteFile(notZone, []byte("Europe/Paris\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, tz, windows string
		err               bool
	}{
		{name: "a zone name", tz: "Europe/Paris", windows: "low=22:00-07:00"},
		{name: "a zone name after a colon", tz: ":Europe/Paris", windows: "low=22:00-07:00"},
		{name: "UTC", tz: "UTC", windows: "low=22:00-07:00"},
		{name: "TZ unset", windows: "low=22:00-07:00"},
		{name: "a zone file", tz: zoneFile, windows: "low=22:00-07:00"},
		{name: "lower case", tz: "europe/paris", windows: "low=22:00-07:00", err: true},
		{name: "an abbreviation", tz: "CEST", windows: "low=22:00-07:00", err: true},
		{name: "a POSIX rule", tz: "CET-1CEST,M3.5.0,M10.5.0/3", windows: "low=22:00-07:00", err: true},
		{name: "Local, which Go reads from no file", tz: "Local", windows: "low=22:00-07:00", err: true},
		{name: "a file that is no zone", tz: notZone, windows: "low=22:00-07:00", err: true},
		{name: "a missing file", tz: notZone + ".gone", windows: "low=22:00-07:00", err: true},
		{name: "no windows: the zone is not used", tz: "CEST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "a zone file" && tt.tz == "" {
				t.Skip("no /usr/share/zoneinfo/Europe/Paris")
			}
			if _, err := time.LoadLocation(tt.tz); tt.name == "lower case" && err == nil {
				t.Skip("zone names are not case-sensitive here (a case-insensitive file system): Go loads it too")
			}
			env := map[string]string{
				"NATS_URL": "nats://localhost:4222", "ORTHANC_URL": "http://orthanc:8042", "DICOMWEB_URL": "http://dest/dicomweb",
				"FORWARD_WINDOWS": tt.windows, "TZ": tt.tz,
			}
			var c ForwarderService
			err := Load(func(k string) string { return env[k] }, &c)
			switch {
			case tt.err && (err == nil || !strings.Contains(err.Error(), "TZ=")):
				t.Fatalf("Load = %v, want an error naming TZ", err)
			case !tt.err && err != nil:
				t.Fatalf("Load = %v", err)
			}
		})
	}
}

// TestForwardWindowsAcrossDaylightSaving: windows follow the local wall
// clock (TZ) through the nights clocks change, as priority-lanes.md says:
// a window spanning the change is an hour shorter (spring) or longer
// (autumn), one inside the skipped hour does not open that night, and one
// inside the repeated hour opens twice. Europe/Paris: 2026-03-29 01:00Z
// (02:00 CET becomes 03:00 CEST) and 2026-10-25 01:00Z (03:00 CEST
// becomes 02:00 CET).
func TestForwardWindowsAcrossDaylightSaving(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	utc := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm.In(paris)
	}
	tests := []struct {
		name, value  string
		open, closed []string // instants, UTC
	}{
		{"a night window in spring: 8 h", "low=22:00-07:00",
			[]string{"2026-03-28T21:00:00Z", "2026-03-29T01:00:00Z", "2026-03-29T04:59:00Z"},
			[]string{"2026-03-28T20:59:00Z", "2026-03-29T05:00:00Z"}},
		{"a night window in autumn: 10 h", "low=22:00-07:00",
			[]string{"2026-10-24T20:00:00Z", "2026-10-25T01:30:00Z", "2026-10-25T05:59:00Z"},
			[]string{"2026-10-24T19:59:00Z", "2026-10-25T06:00:00Z"}},
		{"inside the skipped hour: not that night", "low=02:00-02:30",
			nil,
			[]string{"2026-03-29T00:59:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:29:00Z"}},
		{"inside the repeated hour: twice", "low=02:00-02:30",
			[]string{"2026-10-25T00:00:00Z", "2026-10-25T00:29:00Z", "2026-10-25T01:00:00Z", "2026-10-25T01:29:00Z"},
			[]string{"2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"}},
		{"all day", "low=00:00-24:00",
			[]string{"2026-03-29T00:59:00Z", "2026-03-29T01:00:00Z", "2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"},
			nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w ForwardWindows
			if err := w.UnmarshalText([]byte(tt.value)); err != nil {
				t.Fatal(err)
			}
			for _, s := range tt.open {
				if at := utc(s); !w.Open("low", at) {
					t.Errorf("%s closed at %s (%s), want open", tt.value, s, at.Format("15:04 MST"))
				}
			}
			for _, s := range tt.closed {
				if at := utc(s); w.Open("low", at) {
					t.Errorf("%s open at %s (%s), want closed", tt.value, s, at.Format("15:04 MST"))
				}
			}
		})
	}
}

// A failing study of a lane FORWARD_WINDOWS limits waits for the lane to
// open before each retry due while it is closed, so its deliveries span
// days: a short window with the default EVENTS_RETENTION let its event
// expire before its dead letter, and the start said nothing. It warns
// now, naming the variables. Without windows the waits are 7h0m30s.
func TestRetentionWarningCountsForwardWindows(t *testing.T) {
	for _, tc := range []struct {
		windows   string
		retention string
		// The estimated span: at least min and at most max.
		wantLane string
		min, max time.Duration
		warn     bool
	}{
		{"", "168h", "", 0, 0, false},
		{"stat=00:00-24:00", "168h", "stat", 7*time.Hour + 30*time.Second, 7*time.Hour + 30*time.Second, false},
		// A night's window holds the whole sequence but for the last
		// minutes of it.
		{"low=22:00-07:00", "168h", "low", 20 * time.Hour, 30 * time.Hour, false},
		{"low=02:00-03:00", "168h", "low", 6 * 24 * time.Hour, 8 * 24 * time.Hour, true},
		{"low=02:00-03:00", "240h", "low", 6 * 24 * time.Hour, 8 * 24 * time.Hour, false},
		// The review's case: about 1 day per 3 attempts at the 10 min cap.
		{"backfill=02:00-02:30", "168h", "low", 12 * 24 * time.Hour, 16 * 24 * time.Hour, true},
		{"backfill=02:00-02:30", "720h", "low", 12 * 24 * time.Hour, 16 * 24 * time.Hour, false},
		{"routine=20:00-21:00,low=02:00-02:30", "168h", "low", 12 * 24 * time.Hour, 16 * 24 * time.Hour, true},
		{"stat=02:00-02:30", "168h", "stat", 12 * 24 * time.Hour, 16 * 24 * time.Hour, true},
		{"low=02:00-02:30,low=14:00-14:30", "168h", "low", 6 * 24 * time.Hour, 8 * 24 * time.Hour, true},
	} {
		t.Run(tc.windows+" "+tc.retention, func(t *testing.T) {
			e := baseEnv()
			e["FORWARD_WINDOWS"] = tc.windows
			e["EVENTS_RETENTION"] = tc.retention
			var c SingleHost
			if err := Load(mapEnv(e), &c); err != nil {
				t.Fatal(err)
			}
			lane, waits := c.windowedRetryWaits(30 * 24 * time.Hour)
			if lane != tc.wantLane || waits < tc.min || waits > tc.max {
				t.Errorf("windowedRetryWaits() = %q, %s; want %q, %s to %s", lane, waits, tc.wantLane, tc.min, tc.max)
			}
			err := c.RetentionWarning(c.EventsRetention)
			if (err != nil) != tc.warn {
				t.Fatalf("RetentionWarning() = %v, want a warning: %v", err, tc.warn)
			}
			if err == nil {
				return
			}
			for _, name := range []string{"EVENTS_RETENTION=" + c.EventsRetention.String(), "FORWARD_WINDOWS", "FORWARDER_MAX_DELIVERIES=48", tc.wantLane + " lane"} {
				if !strings.Contains(err.Error(), name) {
					t.Errorf("RetentionWarning() = %v, want it to name %s", err, name)
				}
			}
		})
	}
}
