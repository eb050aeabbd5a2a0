package events

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
)

func validEvent() StudyStable {
	return StudyStable{
		Type:             TypeStudyStable,
		Version:          Version,
		Source:           "orthanc-a",
		OrthancStudyID:   "27f7126f-4f66fb14-03f4081b-f9341db2-53925988",
		StudyInstanceUID: "1.2.840.113619.2.1.2411.1031152382.365.1.736169244",
		LastUpdate:       "20261126T101500",
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*StudyStable)
		field  string // "" means valid
	}{
		{"valid", func(*StudyStable) {}, ""},
		{"missing type", func(e *StudyStable) { e.Type = "" }, "type"},
		{"wrong type", func(e *StudyStable) { e.Type = "orthanc.study.deleted" }, "type"},
		{"missing version", func(e *StudyStable) { e.Version = 0 }, "version"},
		{"future version", func(e *StudyStable) { e.Version = 2 }, "version"},
		{"missing source", func(e *StudyStable) { e.Source = "" }, "source"},
		{"source with dot", func(e *StudyStable) { e.Source = "a.b" }, "source"},
		{"source wildcard", func(e *StudyStable) { e.Source = ">" }, "source"},
		{"source star", func(e *StudyStable) { e.Source = "*" }, "source"},
		{"source space", func(e *StudyStable) { e.Source = "a b" }, "source"},
		{"source too long", func(e *StudyStable) { e.Source = strings.Repeat("a", 65) }, "source"},
		{"missing study id", func(e *StudyStable) { e.OrthancStudyID = "" }, "orthancStudyId"},
		{"study id traversal", func(e *StudyStable) { e.OrthancStudyID = "../../tools/reset" }, "orthancStudyId"},
		{"study id query", func(e *StudyStable) { e.OrthancStudyID = "27f7126f-4f66fb14-03f4081b-f9341db2-5392598?" }, "orthancStudyId"},
		{"study id uppercase", func(e *StudyStable) { e.OrthancStudyID = "27F7126F-4F66FB14-03F4081B-F9341DB2-53925988" }, "orthancStudyId"},
		{"study id encoded slash", func(e *StudyStable) { e.OrthancStudyID = "27f7126f%2F4f66fb14-03f4081b-f9341db2-53925988" }, "orthancStudyId"},
		{"missing uid", func(e *StudyStable) { e.StudyInstanceUID = "" }, "studyInstanceUid"},
		{"non-conformant uid Orthanc accepts", func(e *StudyStable) {
			e.StudyInstanceUID = "05fa52f0e599f17b8186ff18fcdf2b5570a52206a75c4d03afebf5c475dc8758"
		}, ""},
		{"uid slash", func(e *StudyStable) { e.StudyInstanceUID = "1.2/../3" }, "studyInstanceUid"},
		{"uid wildcard", func(e *StudyStable) { e.StudyInstanceUID = "1.2.>" }, "studyInstanceUid"},
		{"uid longer than PS3.5's 64, as Orthanc stores it", func(e *StudyStable) { e.StudyInstanceUID = "1." + strings.Repeat("1", 72) }, ""},
		{"uid with a character Orthanc stores", func(e *StudyStable) { e.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.12+34" }, ""},
		{"uid too long", func(e *StudyStable) { e.StudyInstanceUID = "1." + strings.Repeat("1", 255) }, "studyInstanceUid"},
		{"uid percent", func(e *StudyStable) { e.StudyInstanceUID = "1.2%2F3" }, "studyInstanceUid"},
		{"uid backslash", func(e *StudyStable) { e.StudyInstanceUID = `1.2\3` }, "studyInstanceUid"},
		{"uid star", func(e *StudyStable) { e.StudyInstanceUID = "1.2.*" }, "studyInstanceUid"},
		{"uid control character", func(e *StudyStable) { e.StudyInstanceUID = "1.2\n3" }, "studyInstanceUid"},
		{"uid trailing space", func(e *StudyStable) { e.StudyInstanceUID = "1.2.3 " }, "studyInstanceUid"},
		{"missing last update", func(e *StudyStable) { e.LastUpdate = "" }, "lastUpdate"},
		{"bad last update", func(e *StudyStable) { e.LastUpdate = "2026-11-26 10:15" }, "lastUpdate"},
		{"stat", func(e *StudyStable) { e.Priority = PriorityStat }, ""},
		{"routine", func(e *StudyStable) { e.Priority = PriorityRoutine }, ""},
		{"low", func(e *StudyStable) { e.Priority = PriorityLow }, ""},
		{"unknown priority", func(e *StudyStable) { e.Priority = "urgent" }, "priority"},
		{"priority in capitals", func(e *StudyStable) { e.Priority = "STAT" }, "priority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := validEvent()
			tt.mutate(&e)
			err := e.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var fe *fieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("Validate() = %v, want a fieldError on %q", err, tt.field)
			}
			if !errors.Is(err, errInvalid) {
				t.Errorf("errors.Is(%v, errInvalid) = false", err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("message %q does not name the field", err)
			}
		})
	}
}

func TestMsgIDChangesWithLastUpdate(t *testing.T) {
	a, b := validEvent(), validEvent()
	if a.MsgID() != b.MsgID() {
		t.Fatal("the same study state must give the same Nats-Msg-Id")
	}
	b.LastUpdate = "20261126T101501"
	if a.MsgID() == b.MsgID() {
		t.Fatal("a changed study must give a new Nats-Msg-Id")
	}
	c := validEvent()
	c.Source = "orthanc-b"
	if a.MsgID() == c.MsgID() {
		t.Fatal("the same study ID in two sources must not be de-duplicated")
	}
}

// TestNewStudyStable: the constructor fills the type and version every
// publisher must write, and refuses what Validate refuses.
func TestNewStudyStable(t *testing.T) {
	const id, uid, lu = "6f01183f-4b7f1f2e-8bd7a13d-0b0ea7fe-9885c661", "1.2.3.4", "20261202T183454"
	ev, err := NewStudyStable("main", id, uid, lu)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != TypeStudyStable || ev.Version != Version || ev.ReceivedAt.IsZero() || ev.MsgID() != "main/"+id+"/"+lu {
		t.Errorf("event %+v", ev)
	}
	if _, err := NewStudyStable("main", id, uid, "yesterday"); err == nil || !strings.Contains(err.Error(), "lastUpdate") {
		t.Errorf("a bad LastUpdate: err %v, want one naming lastUpdate", err)
	}
}

// TestPriorityOnTheWire: an event without a priority (every event written
// before lanes) decodes as routine, and a routine event is written as it
// was, so old and new builds read each other's events.
func TestPriorityOnTheWire(t *testing.T) {
	old := `{"type":"orthanc.study.stable","version":1,"source":"orthanc-a","orthancStudyId":"27f7126f-4f66fb14-03f4081b-f9341db2-53925988","studyInstanceUid":"1.2.3","lastUpdate":"20261126T101500"}`
	ev, err := Decode([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Priority != "" || ev.Priority.Lane() != PriorityRoutine {
		t.Errorf("priority = %q (lane %q), want empty (routine)", ev.Priority, ev.Priority.Lane())
	}
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "priority") {
		t.Errorf("a routine event is written with a priority: %s", data)
	}
	stat, err := Decode([]byte(strings.Replace(old, `"version":1`, `"version":1,"priority":"stat"`, 1)))
	if err != nil || stat.Priority != PriorityStat {
		t.Fatalf("Decode(stat) = %+v, %v", stat, err)
	}
	if stat.MsgID() != ev.MsgID() {
		t.Errorf("MsgID depends on the priority: %q vs %q", stat.MsgID(), ev.MsgID())
	}
}

func TestParsePriority(t *testing.T) {
	tests := []struct {
		in   string
		want Priority
		ok   bool
	}{
		{"", PriorityRoutine, true},
		{"stat", PriorityStat, true},
		{"routine", PriorityRoutine, true},
		{"low", PriorityLow, true},
		{"backfill", "", false},
		{"Stat", "", false},
		{" stat", "", false},
	}
	for _, tt := range tests {
		got, err := ParsePriority(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParsePriority(%q) = %q, %v; want %q, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// An event of a newer version is told apart from another invalid one.
func TestNewerVersion(t *testing.T) {
	e := validEvent()
	e.Version = Version + 1
	if err := e.Validate(); !errors.Is(err, ErrNewerVersion) || !errors.Is(err, errInvalid) {
		t.Errorf("Validate() = %v, want ErrNewerVersion and errInvalid", err)
	}
	e.Version = -1
	if err := e.Validate(); errors.Is(err, ErrNewerVersion) {
		t.Errorf("version -1: %v is ErrNewerVersion", err)
	}
}

// A newer build may change a field's shape: its event is still one to
// leave to it, not an invalid one to drop.
func TestDecodeNewerVersionWithAnotherShape(t *testing.T) {
	data := []byte(`{"type":"orthanc.study.stable","version":` + strconv.Itoa(Version+1) + `,"source":"main","receivedAt":1764700000,"orthancStudyId":{"id":"x"}}`)
	if _, err := Decode(data); !errors.Is(err, ErrNewerVersion) {
		t.Errorf("Decode = %v, want ErrNewerVersion", err)
	}
	if _, err := Decode([]byte(`{"type":"orthanc.study.stable","version":1,"receivedAt":1764700000}`)); err == nil || errors.Is(err, ErrNewerVersion) {
		t.Errorf("a current event of a wrong shape: %v, want invalid", err)
	}
}

// Only a StudyStable event is left to a newer build for its version:
// something else with a higher version is invalid, as Validate says,
// and dead-lettered rather than given back until its deliveries run out.
func TestDecodeNewerVersionOfAnotherType(t *testing.T) {
	newer := strconv.Itoa(Version + 1)
	tests := map[string]string{
		"another type": `{"type":"orthanc.study.deleted","version":` + newer + `,"source":"main"}`,
		"no type":      `{"version":` + newer + `}`,
	}
	for name, data := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Decode([]byte(data))
			if err == nil || errors.Is(err, ErrNewerVersion) || !errors.Is(err, errInvalid) {
				t.Errorf("Decode = %v, want invalid, not ErrNewerVersion", err)
			}
		})
	}
}

// Events queued by other builds of version 1 are read: the first build's
// (no priority), and a later one's with a field this build does not know
// (a rollback). Refused, the forwarder would terminate them unread.
func TestDecodeEventsOfOtherBuilds(t *testing.T) {
	for name, data := range map[string]string{
		"first build": `{"type":"orthanc.study.stable","version":1,"source":"orthanc","orthancStudyId":"5b2a8e4c-1f6d3a90-0c7e2b41-9d8f6a53-e4b1c2d7",` +
			`"studyInstanceUid":"1.2.826.0.1.3680043.2.1143.7","lastUpdate":"20261126T101500","receivedAt":"2026-11-26T10:15:02Z"}`,
		"a later build": `{"type":"orthanc.study.stable","version":1,"source":"orthanc","orthancStudyId":"5b2a8e4c-1f6d3a90-0c7e2b41-9d8f6a53-e4b1c2d7",` +
			`"studyInstanceUid":"1.2.826.0.1.3680043.2.1143.7","lastUpdate":"20261126T101500","priority":"stat","origin":{"aet":"CT1"}}`,
	} {
		ev, err := Decode([]byte(data))
		if err != nil {
			t.Errorf("%s: Decode = %v", name, err)
			continue
		}
		if ev.OrthancStudyID != "5b2a8e4c-1f6d3a90-0c7e2b41-9d8f6a53-e4b1c2d7" || ev.LastUpdate != "20261126T101500" {
			t.Errorf("%s: decoded %+v", name, ev)
		}
	}
}

func TestValidUID(t *testing.T) {
	tests := []struct {
		uid  string
		want bool
	}{
		{"1.2.840.10008.1.2.1", true},
		{"2.25.0", true},
		{"", false},
		{"1..2", false},
		{"1.2.", false},
		{"1.2.03", false},
		{"1.2.a", false},
		{"1." + strings.Repeat("9", 62), true},
		{"1." + strings.Repeat("9", 63), false},
	}
	for _, tc := range tests {
		if got := ValidUID(tc.uid); got != tc.want {
			t.Errorf("ValidUID(%q) = %v, want %v", tc.uid, got, tc.want)
		}
	}
}
