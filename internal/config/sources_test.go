package config

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stowline/stowline/internal/reconcile"
)

func TestOneSourceDefault(t *testing.T) {
	e := baseEnv()
	e["ORTHANC_USERNAME"] = "stowline"
	e["ORTHANC_PASSWORD"] = "orthanc-password"
	var c SingleHost
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatal(err)
	}
	want := []OrthancSource{{Name: "", URL: "http://localhost:8042", Username: "stowline", Password: "orthanc-password", Var: "ORTHANC_"}}
	if got := c.SourceList(); !reflect.DeepEqual(got, want) {
		t.Errorf("SourceList() = %+v, want %+v", got, want)
	}
	if !c.Reconcile.Enabled || c.PollInterval != 10*time.Second || c.LeaseTTL != 15*time.Second {
		t.Errorf("reconcile defaults: %+v", c.Reconcile)
	}

	e["ORTHANC_SOURCE_NAME"] = "orthanc-main"
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatal(err)
	}
	if got := c.SourceList()[0].Name; got != "orthanc-main" {
		t.Errorf("source name = %q", got)
	}
}

func TestNamedSources(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("cardio-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := baseEnv()
	e["ORTHANC_SOURCES"] = "main, cardio-2"
	e["ORTHANC_MAIN_URL"] = "http://orthanc-main:8042"
	e["ORTHANC_CARDIO_2_URL"] = "https://cardio.example.org/orthanc"
	e["ORTHANC_CARDIO_2_USERNAME"] = "stowline"
	e["ORTHANC_CARDIO_2_PASSWORD_FILE"] = pwFile
	var c SingleHost
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatal(err)
	}
	want := []OrthancSource{
		{Name: "main", URL: "http://orthanc-main:8042", Var: "ORTHANC_MAIN_"},
		{Name: "cardio-2", URL: "https://cardio.example.org/orthanc", Username: "stowline", Password: "cardio-secret", PasswordFile: pwFile, Var: "ORTHANC_CARDIO_2_"},
	}
	if got := c.SourceList(); !reflect.DeepEqual(got, want) {
		t.Errorf("SourceList() = %+v, want %+v", got, want)
	}

	// One source: its password file is kept too, for every command
	// that reads Orthanc.
	one := baseEnv()
	one["ORTHANC_USERNAME"], one["ORTHANC_PASSWORD_FILE"], one["NATS_URL"] = "stowline", pwFile, "nats://nats:4222"
	for _, dst := range []interface{ SourceList() []OrthancSource }{&SingleHost{}, &IngestService{}, &Audit{}} {
		if err := Load(mapEnv(one), dst); err != nil {
			t.Fatalf("%T: %v", dst, err)
		}
		if got := dst.SourceList()[0]; got.Password != "cardio-secret" || got.PasswordFile != pwFile {
			t.Errorf("%T: password %q from %q, want cardio-secret from %s", dst, got.Password, got.PasswordFile, pwFile)
		}
	}
}

func TestSourceErrorsNameTheVariable(t *testing.T) {
	tests := []struct {
		name string
		set  map[string]string
		want string
	}{
		{"missing url", map[string]string{"ORTHANC_SOURCES": "main"}, "ORTHANC_MAIN_URL is required"},
		{"bad url", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "orthanc:8042"}, "ORTHANC_MAIN_URL"},
		{"credentials in url", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://u:p@o:8042"}, "ORTHANC_MAIN_URL"},
		{"query in url", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://o:8042?x=1"}, "ORTHANC_MAIN_URL"},
		{"bad port in url", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://o:99999"}, "ORTHANC_MAIN_URL"},
		{"no host in url", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://:8042"}, "ORTHANC_MAIN_URL"},
		{"password without user", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MAIN_PASSWORD": "x"}, "ORTHANC_MAIN_USERNAME"},
		{"password twice", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MAIN_PASSWORD": "x", "ORTHANC_MAIN_PASSWORD_FILE": "/nonexistent"}, "ORTHANC_MAIN_PASSWORD and ORTHANC_MAIN_PASSWORD_FILE"},
		{"bad name", map[string]string{"ORTHANC_SOURCES": "main,a.b"}, `"a.b" is not a source name`},
		{"clashing names", map[string]string{"ORTHANC_SOURCES": "a-b,a_b", "ORTHANC_A_B_URL": "http://o:8042"}, "ORTHANC_A_B_"},
		{"url and sources", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_URL": "http://x:8042"}, "ORTHANC_URL is set but ORTHANC_SOURCES"},
		{"bad source name", map[string]string{"ORTHANC_SOURCE_NAME": "a b"}, "ORTHANC_SOURCE_NAME"},
		{"poll interval", map[string]string{"RECONCILE_POLL_INTERVAL": "1ms"}, "RECONCILE_POLL_INTERVAL"},
		{"lease ttl", map[string]string{"RECONCILE_LEASE_TTL": "100ms"}, "RECONCILE_LEASE_TTL"},
		{"adopt cursor without target", map[string]string{"RECONCILE_ADOPT_CURSOR_FROM": "MyOrthanc"}, "want <new source>:<old source>"},
		{"bad adopt cursor from", map[string]string{"ORTHANC_SOURCE_NAME": "main", "RECONCILE_ADOPT_CURSOR_FROM": "main:a b"}, "RECONCILE_ADOPT_CURSOR_FROM"},
		{"adopt cursor without new source", map[string]string{"ORTHANC_SOURCE_NAME": "main", "RECONCILE_ADOPT_CURSOR_FROM": ":MyOrthanc"}, "want <new source>:<old source>"},
		{"adopt cursor from itself", map[string]string{"ORTHANC_SOURCE_NAME": "main", "RECONCILE_ADOPT_CURSOR_FROM": "main:main"}, "two different source names"},
		{"adopt cursor to another source", map[string]string{"ORTHANC_SOURCE_NAME": "main", "RECONCILE_ADOPT_CURSOR_FROM": "mr:MyOrthanc"}, `"mr" is not a configured source`},
		{"adopt cursor from a source", map[string]string{"ORTHANC_SOURCES": "main,mr", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MR_URL": "http://p:8042", "RECONCILE_ADOPT_CURSOR_FROM": "main:mr"}, `"mr" is one of the configured sources`},
		{"bad bool", map[string]string{"RECONCILE_ENABLED": "perhaps"}, "RECONCILE_ENABLED"},
		{"negative max connections", map[string]string{"ORTHANC_MAX_CONNECTIONS": "-1"}, "ORTHANC_MAX_CONNECTIONS=-1"},
		{"fractional max connections", map[string]string{"ORTHANC_MAX_CONNECTIONS": "2.5"}, "ORTHANC_MAX_CONNECTIONS"},
		// Named as set, not as the source that inherits it.
		{"negative max connections with sources", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MAX_CONNECTIONS": "-1"}, "ORTHANC_MAX_CONNECTIONS=-1"},
		{"negative source max connections", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MAIN_MAX_CONNECTIONS": "-3"}, "ORTHANC_MAIN_MAX_CONNECTIONS=-3"},
		{"word as source max connections", map[string]string{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MAIN_MAX_CONNECTIONS": "ten"}, `ORTHANC_MAIN_MAX_CONNECTIONS="ten"`},
		{"alias without equals", map[string]string{"ORTHANC_SOURCE_NAME": "main", "ORTHANC_SOURCE_ALIASES": "MyOrthanc"}, "want <old name>=<source>"},
		{"alias of no source", map[string]string{"ORTHANC_SOURCE_NAME": "main", "ORTHANC_SOURCE_ALIASES": "MyOrthanc=mr"}, `"mr" is not a configured source`},
		{"alias that is a source", map[string]string{"ORTHANC_SOURCES": "main,mr", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MR_URL": "http://p:8042", "ORTHANC_SOURCE_ALIASES": "mr=main"}, `"mr" is a configured source`},
		{"alias twice", map[string]string{"ORTHANC_SOURCE_NAME": "main", "ORTHANC_SOURCE_ALIASES": "old=main,old=main"}, `"old" is given twice`},
		{"bad alias name", map[string]string{"ORTHANC_SOURCE_NAME": "main", "ORTHANC_SOURCE_ALIASES": "a.b=main"}, `"a.b" is not a source name`},
		{"alias of the unnamed Orthanc", map[string]string{"ORTHANC_SOURCE_ALIASES": "old=main"}, "the one Orthanc has no name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			for k, v := range tt.set {
				e[k] = v
			}
			err := Load(mapEnv(e), &SingleHost{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestMaxConnectionsPerSource: ORTHANC_MAX_CONNECTIONS caps every
// source, ORTHANC_<NAME>_MAX_CONNECTIONS one of them; unset, none.
func TestMaxConnectionsPerSource(t *testing.T) {
	tests := []struct {
		name string
		set  map[string]string
		want map[string]int // source name -> cap
	}{
		{"one source unset", map[string]string{}, map[string]int{"": 0}},
		{"one source", map[string]string{"ORTHANC_MAX_CONNECTIONS": "12"}, map[string]int{"": 12}},
		{"named unset", map[string]string{"ORTHANC_SOURCES": "main,mr", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MR_URL": "http://p:8042"},
			map[string]int{"main": 0, "mr": 0}},
		{"named, one overridden", map[string]string{"ORTHANC_SOURCES": "main,mr", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MR_URL": "http://p:8042",
			"ORTHANC_MAX_CONNECTIONS": "20", "ORTHANC_MR_MAX_CONNECTIONS": "0"}, map[string]int{"main": 20, "mr": 0}},
		{"named, only one capped", map[string]string{"ORTHANC_SOURCES": "main,mr", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MR_URL": "http://p:8042",
			"ORTHANC_MAIN_MAX_CONNECTIONS": " 8 "}, map[string]int{"main": 8, "mr": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			for k, v := range tt.set {
				e[k] = v
			}
			var c SingleHost
			if err := Load(mapEnv(e), &c); err != nil {
				t.Fatal(err)
			}
			got := map[string]int{}
			for _, s := range c.SourceList() {
				got[s.Name] = s.MaxConnections
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("caps = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestCursorAdoptionHandedParsed: a RECONCILE_ADOPT_CURSOR_FROM the
// configuration accepts reaches the reconciler split, as it was checked.
func TestCursorAdoptionHandedParsed(t *testing.T) {
	for _, tt := range []struct {
		name, value string
		want        reconcile.CursorAdoption
	}{
		{"unset", "", reconcile.CursorAdoption{}},
		{"renamed", "main:MyOrthanc", reconcile.CursorAdoption{To: "main", From: "MyOrthanc"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			e["ORTHANC_SOURCE_NAME"], e["RECONCILE_ADOPT_CURSOR_FROM"] = "main", tt.value
			var c SingleHost
			if err := Load(mapEnv(e), &c); err != nil {
				t.Fatal(err)
			}
			if got := c.Reconcile.CursorAdoption(); got != tt.want {
				t.Errorf("CursorAdoption() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReconcileDisabledIgnoresItsSettings(t *testing.T) {
	e := baseEnv()
	e["NATS_URL"] = "nats://127.0.0.1:4222"
	e["RECONCILE_ENABLED"] = "false"
	e["RECONCILE_POLL_INTERVAL"] = "1ms"
	e["ORTHANC_URL"] = "not a url"
	var c IngestService
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatalf("an ingest without reconciler must not check the reconciler's settings: %v", err)
	}
	e["RECONCILE_ENABLED"] = "true"
	err := Load(mapEnv(e), &IngestService{})
	for _, want := range []string{"RECONCILE_POLL_INTERVAL", "ORTHANC_URL"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("enabled reconciler: err = %v, want it to name %s", err, want)
		}
	}
}

// A RECONCILE_POLL_INTERVAL too long for StowlineWebhookFailing is
// warned about at start, not refused (an upgrade would stop the sites
// that set one); the reconciler off, it is not.
func TestReconcileIntervalAlertWarning(t *testing.T) {
	for _, tt := range []struct {
		enabled, interval string
		warn              bool
	}{
		{"true", "10s", false},
		{"true", "25m", false},
		{"true", "26m", true},
		{"true", "40m", true},
		{"true", "1h", true},
		{"false", "1h", false},
	} {
		t.Run(tt.enabled+" "+tt.interval, func(t *testing.T) {
			e := baseEnv()
			e["RECONCILE_ENABLED"], e["RECONCILE_POLL_INTERVAL"] = tt.enabled, tt.interval
			var c SingleHost
			if err := Load(mapEnv(e), &c); err != nil {
				t.Fatalf("RECONCILE_POLL_INTERVAL=%s refused: %v", tt.interval, err)
			}
			err := c.Reconcile.AlertWarning()
			if (err != nil) != tt.warn {
				t.Fatalf("AlertWarning() = %v, want a warning: %v", err, tt.warn)
			}
			if err != nil && (!strings.Contains(err.Error(), "StowlineWebhookFailing") || !strings.Contains(err.Error(), "RECONCILE_POLL_INTERVAL="+tt.interval)) {
				t.Errorf("AlertWarning() = %v, want it to name the alert and the setting", err)
			}
		})
	}
}

func TestUsageListsSourcePattern(t *testing.T) {
	var buf bytes.Buffer
	Usage(&buf, "ingest", &IngestService{})
	for _, want := range []string{"ORTHANC_SOURCES", "ORTHANC_<NAME>_URL", "ORTHANC_<NAME>_PASSWORD_FILE", "RECONCILE_LEASE_TTL"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("ingest -h does not list %s", want)
		}
	}
}

// A rule comparing source with a name no configured source has is never
// true (or always, with !=): refused at start in every process that
// reads the rule, naming the variable and the name.
func TestRulesNameConfiguredSources(t *testing.T) {
	two := map[string]string{"ORTHANC_SOURCES": "main,cardio", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_CARDIO_URL": "http://p:8042",
		"NATS_URL": "nats://nats:4222", "DESTINATIONS": "archive,ai", "DESTINATION_ARCHIVE_URL": "https://a.example.org/dicomweb", "DESTINATION_AI_URL": "https://b.example.org/dicomweb"}
	commands := map[string]func() any{
		"single host": func() any { return &SingleHost{} },
		"ingest":      func() any { return &IngestService{} },
		"forwarder":   func() any { return &ForwarderService{} },
		"check":       func() any { return &CheckCommand{} },
	}
	tests := []struct {
		name string
		set  map[string]string
		want string // "" loads
		// reads: the commands that read the variable; the others load.
		reads []string
	}{
		{"match typo", map[string]string{"DESTINATION_AI_MATCH": "source == 'cardo'"},
			`DESTINATION_AI_MATCH compares source with "cardo", which is not a configured source (cardio, main): a rule sees only those names: compared with it, == never holds and != always does`, []string{"single host", "forwarder", "check"}},
		{"match in a list", map[string]string{"DESTINATION_AI_MATCH": "source in ['main', 'mr'] && 'MR' in study.modalities"},
			`DESTINATION_AI_MATCH compares source with "mr"`, []string{"single host", "forwarder", "check"}},
		{"match of a former name", map[string]string{"DESTINATION_AI_MATCH": "source != 'MyOrthanc'", "ORTHANC_SOURCE_ALIASES": "MyOrthanc=main"},
			`DESTINATION_AI_MATCH compares source with "MyOrthanc", a former name (ORTHANC_SOURCE_ALIASES MyOrthanc=main): a rule sees the source's name, "main"`, []string{"single host", "forwarder", "check"}},
		{"priority typo", map[string]string{"PRIORITY_RULE": "source == 'mian' && study.description.contains('STAT')"},
			`PRIORITY_RULE compares source with "mian"`, []string{"single host", "ingest"}},
		{"configured names", map[string]string{"DESTINATION_AI_MATCH": "source in ['main', 'cardio']", "PRIORITY_RULE": "'cardio' == source"}, "", nil},
		// One Orthanc without a name takes every source's events.
		{"unnamed Orthanc", map[string]string{"ORTHANC_SOURCES": "", "ORTHANC_MAIN_URL": "", "ORTHANC_CARDIO_URL": "",
			"DESTINATION_AI_MATCH": "source == 'anything'", "PRIORITY_RULE": "source == 'else'"}, "", nil},
	}
	for _, tt := range tests {
		for cmd, c := range commands {
			t.Run(tt.name+"/"+cmd, func(t *testing.T) {
				e := baseEnv()
				maps.Copy(e, two)
				maps.Copy(e, tt.set)
				delete(e, "DICOMWEB_URL")
				if cmd == "single host" {
					delete(e, "NATS_URL")
				}
				err := Load(mapEnv(e), c())
				if tt.want == "" || !slices.Contains(tt.reads, cmd) {
					if err != nil {
						t.Fatalf("Load() = %v, want no error", err)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Load() = %v, want an error containing %q", err, tt.want)
				}
			})
		}
	}
}

// A cap of requests to a source below one slot for each destination
// served (and one for the single host's ingest reads) would let a hung
// destination hold the slots the others need: refused at start.
func TestCapLeavesEachDestinationASlot(t *testing.T) {
	two := map[string]string{"NATS_URL": "nats://nats:4222", "DESTINATIONS": "archive,ai",
		"DESTINATION_ARCHIVE_URL": "https://a.example.org/dicomweb", "DESTINATION_AI_URL": "https://b.example.org/dicomweb"}
	sources := map[string]string{"ORTHANC_SOURCES": "main,mr", "ORTHANC_MAIN_URL": "http://o:8042", "ORTHANC_MR_URL": "http://p:8042"}
	tests := []struct {
		name   string
		single bool // SingleHost, else ForwarderService
		set    map[string]string
		want   string // "" loads
	}{
		{"forwarder, one slot each", false, map[string]string{"ORTHANC_MAX_CONNECTIONS": "2"}, ""},
		{"forwarder below", false, map[string]string{"ORTHANC_MAX_CONNECTIONS": "1"},
			"ORTHANC_MAX_CONNECTIONS=1: below 2, a slot for each destination this process serves (archive, ai):"},
		{"forwarder serving one", false, map[string]string{"ORTHANC_MAX_CONNECTIONS": "1", "FORWARDER_DESTINATIONS": "ai"}, ""},
		{"no cap", false, map[string]string{"ORTHANC_MAX_CONNECTIONS": "0"}, ""},
		{"single host with its reconciler", true, map[string]string{"ORTHANC_MAX_CONNECTIONS": "2"},
			"ORTHANC_MAX_CONNECTIONS=2: below 3, a slot for each destination this process serves (archive, ai) and one for its ingest's reads of Orthanc"},
		{"single host without reads", true, map[string]string{"ORTHANC_MAX_CONNECTIONS": "2", "RECONCILE_ENABLED": "false"}, ""},
		{"single host, one destination", true, map[string]string{"ORTHANC_MAX_CONNECTIONS": "1", "DESTINATIONS": "", "DESTINATION_ARCHIVE_URL": "",
			"DESTINATION_AI_URL": "", "DICOMWEB_URL": "https://a.example.org/dicomweb"}, "ORTHANC_MAX_CONNECTIONS=1: below 2"},
		// Inherited by every source: named once, as set.
		{"inherited", false, mergedEnv(sources, map[string]string{"ORTHANC_MAX_CONNECTIONS": "1"}), "ORTHANC_MAX_CONNECTIONS=1: below 2"},
		{"a source's own", false, mergedEnv(sources, map[string]string{"ORTHANC_MR_MAX_CONNECTIONS": "1"}), "ORTHANC_MR_MAX_CONNECTIONS=1: below 2"},
		// The same value as the global one, set for the source: named too,
		// or raising the global as told fails the next start again.
		{"a source's own equal to the global", false, mergedEnv(sources, map[string]string{"ORTHANC_MAX_CONNECTIONS": "1", "ORTHANC_MR_MAX_CONNECTIONS": "1"}),
			"ORTHANC_MR_MAX_CONNECTIONS=1: below 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			delete(e, "DICOMWEB_URL")
			maps.Copy(e, two)
			maps.Copy(e, tt.set)
			var c any = &ForwarderService{}
			if tt.single {
				delete(e, "NATS_URL")
				c = &SingleHost{}
			}
			err := Load(mapEnv(e), c)
			checkLoadError(t, err, tt.want)
			if tt.want == "" {
				return
			}
			want := 1
			if tt.set["ORTHANC_MAX_CONNECTIONS"] != "" && tt.set["ORTHANC_MR_MAX_CONNECTIONS"] != "" {
				want = 2
			}
			if n := strings.Count(err.Error(), "MAX_CONNECTIONS="); n != want {
				t.Errorf("Load() = %v: %d caps named, want %d", err, n, want)
			}
			if strings.Contains(err.Error(), "plus one for the ingest") != tt.single {
				t.Errorf("Load() = %v: the ingest's slot counted in a forwarder, or not on a single host", err)
			}
		})
	}
}

func mergedEnv(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}

// forwarder check, run before an upgrade, refuses the cap the forwarder
// would refuse.
func TestCheckRefusesTheForwardersCap(t *testing.T) {
	two := map[string]string{"DESTINATIONS": "archive,ai", "DESTINATION_ARCHIVE_URL": "https://a.example.org/dicomweb",
		"DESTINATION_AI_URL": "https://b.example.org/dicomweb"}
	const nats = "nats://nats:4222"
	for _, tt := range []struct {
		name string
		set  map[string]string
		want string // "" loads
	}{
		{"a forwarder", map[string]string{"NATS_URL": nats, "ORTHANC_MAX_CONNECTIONS": "1"}, "ORTHANC_MAX_CONNECTIONS=1: below 2"},
		{"a forwarder, one slot each", map[string]string{"NATS_URL": nats, "ORTHANC_MAX_CONNECTIONS": "2"}, ""},
		// NATS_URL empty: a single host's, whose reconciler (on by
		// default) takes a slot too; it refused at start what check
		// passed.
		{"a single host", map[string]string{"ORTHANC_MAX_CONNECTIONS": "2"},
			"ORTHANC_MAX_CONNECTIONS=2: below 3, a slot for each destination this process serves (archive, ai) and one for its ingest's reads of Orthanc"},
		{"a single host without its reconciler", map[string]string{"ORTHANC_MAX_CONNECTIONS": "2", "RECONCILE_ENABLED": "false"}, ""},
		{"a single host's PRIORITY_RULE", map[string]string{"ORTHANC_MAX_CONNECTIONS": "2", "RECONCILE_ENABLED": "false",
			"PRIORITY_RULE": "'CT' in study.modalities"}, "below 3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			checkLoadError(t, Load(mapEnv(mergedEnv(two, tt.set)), &CheckCommand{}), tt.want)
		})
	}
}

// checkLoadError checks Load's error: none when want is "", else one
// containing want.
func checkLoadError(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("Load() = %v, want no error", err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Load() = %v, want an error containing %q", err, want)
	}
}
