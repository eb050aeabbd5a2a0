package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/stowline/stowline/internal/deident"
)

// Values of STOW_DEIDENTIFY.
const (
	DeidentifyOff   = "off"
	DeidentifyBasic = "basic"
)

// Values of STOW_DEIDENTIFY_BURNED_IN.
const (
	DeidentifyBurnedInExclude = "exclude"
	DeidentifyBurnedInInclude = "include"
)

// Options of STOW_DEIDENTIFY_OPTIONS: the PS3.15 profile options.
const (
	DeidentifyRetainDates          = "retain-dates"
	DeidentifyRetainPatientChars   = "retain-patient-characteristics"
	DeidentifyRetainDeviceIdentity = "retain-device-identity"
	DeidentifyCleanDescriptors     = "clean-descriptors"
)

var deidentifyOptions = []string{DeidentifyRetainDates, DeidentifyRetainPatientChars, DeidentifyRetainDeviceIdentity, DeidentifyCleanDescriptors}

// Deidentify is a destination's de-identification (docs/deidentification.md).
type Deidentify struct {
	Mode          string `env:"STOW_DEIDENTIFY" envDefault:"off" desc:"off, or basic: the destination receives de-identified copies (DICOM PS3.15 Basic Application Level Confidentiality Profile, 2023b) with keyed pseudonyms: UIDs map to 2.25 UIDs, Patient ID and Name to a pseudonym, private tags are removed, kept text loses the instance's own names, IDs, station name and dates (every date the copy shifts, removes or empties; docs/deidentification.md). Needs DEIDENTIFY_KEY_FILE"`
	KeyFile       string `env:"DEIDENTIFY_KEY_FILE" desc:"file holding the secret key of the pseudonyms (random, at least 32 bytes: head -c 32 /dev/urandom | base64, never a passphrase); the same key always gives the same pseudonyms, changing it breaks the link between copies sent before and after. Required with STOW_DEIDENTIFY=basic; set, it needs STOW_DEIDENTIFY set (off for a destination meant to receive the originals); never logged"`
	Options       List   `env:"STOW_DEIDENTIFY_OPTIONS" desc:"profile options, comma-separated: retain-dates (dates moved back by a per-patient keyed offset, times kept), retain-patient-characteristics (sex, age, size, weight...), retain-device-identity (station name, serial numbers), clean-descriptors (Study/Series Description, Protocol Name, comments kept with the instance's own identifying values removed). Empty: dates, characteristics, device identity and descriptors are removed"`
	Keep          List   `env:"STOW_DEIDENTIFY_KEEP" desc:"attributes kept despite the profile, comma-separated tags of 8 hex digits (00081030 for Study Description); their text still loses the instance's own identifying values (Patient's Name, IDs...), like every kept text; UIDs, Patient ID and Name cannot be kept; a private tag keeps a block position (00091010: element 10 of whatever Private Creator holds block 10 of group 0009 in each instance, another vendor's too)"`
	Remove        List   `env:"STOW_DEIDENTIFY_REMOVE" desc:"attributes removed besides the profile's, wherever they are, comma-separated tags"`
	BurnedIn      string `env:"STOW_DEIDENTIFY_BURNED_IN" envDefault:"exclude" desc:"exclude: instances whose pixels may show who the patient is (Burned In Annotation, Recognizable Visual Features or Specimen Label in Image YES; an overlay embedded in Pixel Data's high bits; Secondary Capture, Ultrasound, Photoacoustic, VL endoscopic and photographic, ophthalmic and dermoscopic photography: docs/deidentification.md) are not sent and are listed in the study's dead letter; include: send them (pixel data is never de-identified)"`
	PatientPrefix string `env:"STOW_DEIDENTIFY_PATIENT_PREFIX" envDefault:"ANON-" desc:"prefix of the Patient ID pseudonym (prefix + 20 base32 characters); also the Patient's Name"`

	// modeSet: STOW_DEIDENTIFY was given, not defaulted (readDynamic).
	modeSet bool
}

// Deidentifies reports whether the destination receives de-identified copies.
func (d *Deidentify) Deidentifies() bool { return d.Mode == DeidentifyBasic }

// HasOption reports whether STOW_DEIDENTIFY_OPTIONS names o.
func (d *Deidentify) HasOption(o string) bool { return slices.Contains(d.Options, o) }

// validDeidentifyMode reports whether m is a STOW_DEIDENTIFY value.
func validDeidentifyMode(m string) bool { return m == DeidentifyOff || m == DeidentifyBasic }

func (d *Deidentify) validate() []error {
	var errs []error
	if !validDeidentifyMode(d.Mode) {
		return []error{fmt.Errorf("STOW_DEIDENTIFY=%q: want off or basic", d.Mode)}
	}
	if d.Mode == DeidentifyOff {
		return d.unusedOptions()
	}
	if d.BurnedIn != DeidentifyBurnedInExclude && d.BurnedIn != DeidentifyBurnedInInclude {
		errs = append(errs, fmt.Errorf("STOW_DEIDENTIFY_BURNED_IN=%q: want exclude or include", d.BurnedIn))
	}
	if d.KeyFile == "" {
		errs = append(errs, errors.New("DEIDENTIFY_KEY_FILE is required with STOW_DEIDENTIFY=basic: the pseudonyms are keyed with it"))
	} else if key, err := deident.ReadKeyFile(d.KeyFile); err != nil {
		// Read as the forwarder reads it, so that a short key is a
		// configuration error (exit 2), not a failure once NATS is set up.
		errs = append(errs, fmt.Errorf("DEIDENTIFY_KEY_FILE: %w", err))
	} else if err := checkCredential("DEIDENTIFY_KEY_FILE", bytesAsText(key), deident.MinKeyLen); err != nil {
		// As the tokens: a guessed key recomputes every pseudonym, and
		// its fingerprint checks a guess with one HMAC.
		errs = append(errs, fmt.Errorf("%w (file %s: the pseudonyms' key must be random, docs/deidentification.md)", err, d.KeyFile))
	}
	for _, o := range d.Options {
		switch {
		case slices.Contains(deidentifyOptions, o):
		default:
			errs = append(errs, fmt.Errorf("STOW_DEIDENTIFY_OPTIONS: %q: want %s", o, strings.Join(deidentifyOptions, ", ")))
		}
	}
	for _, l := range []struct {
		name string
		tags List
	}{{"STOW_DEIDENTIFY_KEEP", d.Keep}, {"STOW_DEIDENTIFY_REMOVE", d.Remove}} {
		for _, t := range l.tags {
			if !validTag(t) {
				errs = append(errs, fmt.Errorf("%s: %q: want a tag as 8 hex digits (GGGGEEEE)", l.name, t))
			}
		}
	}
	if len(errs) == 0 {
		// What the profile refuses (a UID or the Patient ID kept, the
		// SOP Instance UID removed) is a configuration error too: it
		// failed the forwarder's start after NATS was provisioned, exit 1.
		if _, err := d.DeidentOptions(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(d.PatientPrefix) > 44 || strings.ContainsFunc(d.PatientPrefix, func(r rune) bool { return r < 0x20 || r > 0x7E || r == '\\' }) {
		errs = append(errs, fmt.Errorf("STOW_DEIDENTIFY_PATIENT_PREFIX=%q: want at most 44 printable ASCII characters, no backslash (a Patient ID value)", d.PatientPrefix))
	}
	return errs
}

// unusedOptions refuses de-identification options given without
// STOW_DEIDENTIFY=basic: they say de-identified copies were meant, and a
// forgotten (or misspelt, or another destination's) STOW_DEIDENTIFY
// sent the originals, identified. DEIDENTIFY_KEY_FILE is refused only
// with STOW_DEIDENTIFY unset: a site may give every destination the same
// key, and then says STOW_DEIDENTIFY=off where originals are meant.
func (d *Deidentify) unusedOptions() []error {
	var errs []error
	if d.KeyFile != "" && !d.modeSet {
		errs = append(errs, errors.New("DEIDENTIFY_KEY_FILE: set, but STOW_DEIDENTIFY is not, so the destination would receive the originals, identified: "+
			"set STOW_DEIDENTIFY=basic for de-identified copies, or STOW_DEIDENTIFY=off if it is meant to receive the originals"))
	}
	var set []string
	for name, isSet := range map[string]bool{
		"STOW_DEIDENTIFY_OPTIONS":        len(d.Options) > 0,
		"STOW_DEIDENTIFY_KEEP":           len(d.Keep) > 0,
		"STOW_DEIDENTIFY_REMOVE":         len(d.Remove) > 0,
		"STOW_DEIDENTIFY_BURNED_IN":      d.BurnedIn != DeidentifyBurnedInExclude,
		"STOW_DEIDENTIFY_PATIENT_PREFIX": d.PatientPrefix != defaultPatientPrefix,
	} {
		if isSet {
			set = append(set, name)
		}
	}
	if len(set) == 0 {
		return errs
	}
	slices.Sort(set)
	return append(errs, fmt.Errorf("%s: set, but STOW_DEIDENTIFY=off, so the destination receives the originals, identified: "+
		"set STOW_DEIDENTIFY=basic (with DEIDENTIFY_KEY_FILE), or unset them", strings.Join(set, ", ")))
}

// defaultPatientPrefix is STOW_DEIDENTIFY_PATIENT_PREFIX's default.
const defaultPatientPrefix = "ANON-"

// DeidentOptions returns the de-identification profile's options these
// settings ask for, checked as the profile checks them.
func (d *Deidentify) DeidentOptions() (deident.Options, error) {
	opts := deident.Options{
		RetainDates:                  d.HasOption(DeidentifyRetainDates),
		RetainPatientCharacteristics: d.HasOption(DeidentifyRetainPatientChars),
		RetainDeviceIdentity:         d.HasOption(DeidentifyRetainDeviceIdentity),
		CleanDescriptors:             d.HasOption(DeidentifyCleanDescriptors),
		IncludeBurnedIn:              d.BurnedIn == DeidentifyBurnedInInclude,
	}
	for _, l := range []struct {
		name string
		in   List
		out  *[]deident.Tag
	}{{"STOW_DEIDENTIFY_KEEP", d.Keep, &opts.Keep}, {"STOW_DEIDENTIFY_REMOVE", d.Remove, &opts.Remove}} {
		for _, s := range l.in {
			t, err := deident.ParseTag(s)
			if err != nil {
				return opts, fmt.Errorf("%s: %w", l.name, err)
			}
			*l.out = append(*l.out, t)
		}
	}
	if err := deident.CheckOptions(opts); err != nil {
		return opts, fmt.Errorf("STOW_DEIDENTIFY_KEEP, STOW_DEIDENTIFY_REMOVE: %w", err)
	}
	return opts, nil
}

// validTag: 8 hex digits, with or without "(", ",", ")".
func validTag(s string) bool {
	h := strings.NewReplacer("(", "", ")", "", ",", "").Replace(s)
	if len(h) != 8 {
		return false
	}
	for _, c := range h {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return true
}

// bytesAsText is b with each byte a character of its own, so that
// checkCredential counts a binary key's different bytes: as UTF-8, every
// invalid byte reads as the same U+FFFD.
func bytesAsText(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}
