package config

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestDeidentify(t *testing.T) {
	key := keyFile(t)
	shortKey := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(shortKey, []byte("0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A key must be random, as the tokens: a guessed one recomputes every
	// pseudonym. Long enough is not random enough.
	binaryKey := make([]byte, 48) // trailing newlines are trimmed
	if _, err := rand.Read(binaryKey); err != nil {
		t.Fatal(err)
	}
	oneCharacter, placeholder, binary := writeKey(t, strings.Repeat("k", 40)), writeKey(t, "changeme-Zq3vXk9pL2mRt7wYc4hN8sBd"), writeKey(t, string(binaryKey))
	tests := []struct {
		name string
		env  map[string]string
		err  string // substring of the error; "" means valid
	}{
		{name: "off by default", env: nil},
		{name: "key of one character", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": oneCharacter},
			err: "DEIDENTIFY_KEY_FILE: want a random value (it has fewer than 8 different characters), e.g. head -c 24 /dev/urandom | base64 (file " + oneCharacter + ": the pseudonyms' key must be random"},
		{name: "placeholder key", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": placeholder},
			err: `DEIDENTIFY_KEY_FILE: the value is a placeholder from an example ("changeme")`},
		{name: "random binary key", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": binary}},
		{name: "basic with a key", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key}},
		{name: "all options and lists", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key,
			"STOW_DEIDENTIFY_OPTIONS": "retain-dates,retain-patient-characteristics,retain-device-identity,clean-descriptors",
			"STOW_DEIDENTIFY_KEEP":    "00081030,0008103E", "STOW_DEIDENTIFY_REMOVE": "00181030", "STOW_DEIDENTIFY_BURNED_IN": "include"}},
		{name: "unknown mode", env: map[string]string{"STOW_DEIDENTIFY": "full"}, err: `STOW_DEIDENTIFY="full": want off or basic`},
		{name: "basic without a key", env: map[string]string{"STOW_DEIDENTIFY": "basic"}, err: "DEIDENTIFY_KEY_FILE is required"},
		{name: "key file missing", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key + ".gone"}, err: "DEIDENTIFY_KEY_FILE: read the de-identification key: open " + key + ".gone"},
		{name: "key file too short", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": shortKey}, err: "DEIDENTIFY_KEY_FILE: " + shortKey + ": de-identification key is too short"},
		// One key given to every destination: those meant to receive
		// the originals say so, and their key is not read.
		{name: "key file missing, deidentification off", env: map[string]string{"STOW_DEIDENTIFY": "off", "DEIDENTIFY_KEY_FILE": key + ".gone"}},
		// A key with STOW_DEIDENTIFY forgotten (or misspelt, which Unread
		// reports) says copies were meant: the default, off, sent the
		// originals.
		{name: "key file without STOW_DEIDENTIFY", env: map[string]string{"DEIDENTIFY_KEY_FILE": key},
			err: "DEIDENTIFY_KEY_FILE: set, but STOW_DEIDENTIFY is not, so the destination would receive the originals"},
		// Options say de-identified copies were meant: with
		// STOW_DEIDENTIFY forgotten, the originals went out.
		{name: "options without basic", env: map[string]string{"DEIDENTIFY_KEY_FILE": key, "STOW_DEIDENTIFY_OPTIONS": "retain-dates", "STOW_DEIDENTIFY_KEEP": "00081030"},
			err: "STOW_DEIDENTIFY_KEEP, STOW_DEIDENTIFY_OPTIONS: set, but STOW_DEIDENTIFY=off, so the destination receives the originals"},
		{name: "burned-in and prefix without basic", env: map[string]string{"STOW_DEIDENTIFY": "off", "STOW_DEIDENTIFY_BURNED_IN": "include", "STOW_DEIDENTIFY_PATIENT_PREFIX": "STUDY-"},
			err: "STOW_DEIDENTIFY_BURNED_IN, STOW_DEIDENTIFY_PATIENT_PREFIX: set, but STOW_DEIDENTIFY=off"},
		{name: "remove without basic", env: map[string]string{"STOW_DEIDENTIFY_REMOVE": "00181030"}, err: "STOW_DEIDENTIFY_REMOVE: set, but STOW_DEIDENTIFY=off"},
		{name: "the defaults, written out, without basic", env: map[string]string{"STOW_DEIDENTIFY": "off", "STOW_DEIDENTIFY_BURNED_IN": "exclude", "STOW_DEIDENTIFY_PATIENT_PREFIX": "ANON-"}},
		{name: "unknown option", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_DEIDENTIFY_OPTIONS": "retain-uids"}, err: `STOW_DEIDENTIFY_OPTIONS: "retain-uids"`},
		{name: "clean descriptors", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_DEIDENTIFY_OPTIONS": "clean-descriptors"}},
		{name: "bad tag", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_DEIDENTIFY_KEEP": "StudyDescription"}, err: `STOW_DEIDENTIFY_KEEP: "StudyDescription"`},
		// What the profile refuses is refused here, at startup (exit 2),
		// not by the forwarder after NATS is provisioned (exit 1).
		{name: "Patient ID kept", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_DEIDENTIFY_KEEP": "00100020"}, err: "STOW_DEIDENTIFY_KEEP, STOW_DEIDENTIFY_REMOVE: de-identification options: (0010,0020) cannot be kept"},
		{name: "a UID kept", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_DEIDENTIFY_KEEP": "0020000D"}, err: "(0020,000D) cannot be kept"},
		{name: "SOP Instance UID removed", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_DEIDENTIFY_REMOVE": "00080018"}, err: "cannot be removed"},
		{name: "prefix with a backslash", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_DEIDENTIFY_PATIENT_PREFIX": `A\B`}, err: "STOW_DEIDENTIFY_PATIENT_PREFIX"},
		{name: "burned-in value", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_DEIDENTIFY_BURNED_IN": "yes"}, err: "STOW_DEIDENTIFY_BURNED_IN"},
		{name: "with qido verification", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_VERIFY": "qido"}},
		{name: "only syntaxes the rewrite cannot write", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_TRANSFER_SYNTAXES": "1.2.840.10008.1.2.2,1.2.840.10008.1.2.1.99"}, err: "STOW_TRANSFER_SYNTAXES lists only Explicit VR Big Endian or deflated syntaxes"},
		{name: "a syntax the rewrite writes among them", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_TRANSFER_SYNTAXES": "1.2.840.10008.1.2.2,1.2.840.10008.1.2.4.70"}},
		{name: "not with replace", env: map[string]string{"STOW_DEIDENTIFY": "basic", "DEIDENTIFY_KEY_FILE": key, "STOW_ON_CONFLICT": "replace", "STOW_PROFILE": "azure"}, err: "STOW_ON_CONFLICT=replace cannot be used with STOW_DEIDENTIFY=basic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			for k, v := range tt.env {
				e[k] = v
			}
			var c SingleHost
			err := Load(mapEnv(e), &c)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Forwarder.Deidentifies(); got != (tt.env["STOW_DEIDENTIFY"] == "basic") {
				t.Errorf("Deidentifies() = %v", got)
			}
		})
	}
}

// STOW_DEIDENTIFY_BURNED_IN reaches the profile: only include sends the
// instances whose pixels may show who the patient is; exclude, and the
// default, keep them back.
func TestDeidentifyBurnedIn(t *testing.T) {
	key := keyFile(t)
	tests := []struct {
		name     string
		burnedIn string // "": unset
		want     bool
	}{
		{name: "default", want: false},
		{name: "exclude", burnedIn: "exclude", want: false},
		{name: "include", burnedIn: "include", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			e["STOW_DEIDENTIFY"] = "basic"
			e["DEIDENTIFY_KEY_FILE"] = key
			if tt.burnedIn != "" {
				e["STOW_DEIDENTIFY_BURNED_IN"] = tt.burnedIn
			}
			var c SingleHost
			if err := Load(mapEnv(e), &c); err != nil {
				t.Fatal(err)
			}
			opts, err := c.Forwarder.DeidentOptions()
			if err != nil {
				t.Fatal(err)
			}
			if opts.IncludeBurnedIn != tt.want {
				t.Errorf("IncludeBurnedIn = %v, want %v", opts.IncludeBurnedIn, tt.want)
			}
		})
	}
}

func TestDeidentifyPerDestination(t *testing.T) {
	e := destEnv(t)
	e["DESTINATION_AI_2_STOW_DEIDENTIFY"] = "basic"
	e["DESTINATION_AI_2_DEIDENTIFY_KEY_FILE"] = keyFile(t)
	e["DESTINATION_AI_2_STOW_DEIDENTIFY_OPTIONS"] = "retain-dates"
	var c SingleHost
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatal(err)
	}
	ds := c.DestinationList()
	if ds[0].Deidentifies() || !ds[1].Deidentifies() || !slices.Equal(ds[1].Options, []string{"retain-dates"}) || ds[1].PatientPrefix != "ANON-" {
		t.Errorf("archive %+v, ai-2 %+v", ds[0].Deidentify, ds[1].Deidentify)
	}
	e["DESTINATION_AI_2_DEIDENTIFY_KEY_FILE"] = "/nonexistent/key"
	err := Load(mapEnv(e), &c)
	if err == nil || !strings.Contains(err.Error(), "DESTINATION_AI_2_DEIDENTIFY_KEY_FILE: read the de-identification key: open /nonexistent/key") {
		t.Errorf("err = %v, want it to name DESTINATION_AI_2_DEIDENTIFY_KEY_FILE", err)
	}
	delete(e, "DESTINATION_AI_2_DEIDENTIFY_KEY_FILE")
	err = Load(mapEnv(e), &c)
	if err == nil || !strings.Contains(err.Error(), "DESTINATION_AI_2_DEIDENTIFY_KEY_FILE is required") {
		t.Errorf("err = %v, want it to name DESTINATION_AI_2_DEIDENTIFY_KEY_FILE", err)
	}
	// The options of ai-2 given, its STOW_DEIDENTIFY forgotten.
	delete(e, "DESTINATION_AI_2_STOW_DEIDENTIFY")
	err = Load(mapEnv(e), &c)
	if want := "DESTINATION_AI_2_STOW_DEIDENTIFY_OPTIONS: set, but DESTINATION_AI_2_STOW_DEIDENTIFY=off"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want %q", err, want)
	}
	// Its key alone, its STOW_DEIDENTIFY misspelt: refused; an explicit
	// off is a choice, and loads.
	delete(e, "DESTINATION_AI_2_STOW_DEIDENTIFY_OPTIONS")
	e["DESTINATION_AI_2_STOW_DEIDENTIFIY"] = "basic"
	e["DESTINATION_AI_2_DEIDENTIFY_KEY_FILE"] = keyFile(t)
	err = Load(mapEnv(e), &c)
	if want := "DESTINATION_AI_2_DEIDENTIFY_KEY_FILE: set, but DESTINATION_AI_2_STOW_DEIDENTIFY is not"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want %q", err, want)
	}
	e["DESTINATION_AI_2_STOW_DEIDENTIFY"] = "off"
	if err := Load(mapEnv(e), &c); err != nil || c.DestinationList()[1].Deidentifies() {
		t.Errorf("explicit off with a key: err = %v, deidentifies %v", err, c.DestinationList()[1].Deidentifies())
	}
}

// writeKey writes a de-identification key file holding key.
func writeKey(t *testing.T, key string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// keyFile is a readable de-identification key file.
func keyFile(t *testing.T) string {
	t.Helper()
	return writeKey(t, "Zq3vXk9pL2mRt7wYc4hN8sBd6fGj1aEu")
}
