package config

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/routing"
)

// Destinations names the destinations of a deployment with several, each
// configured by its own DESTINATION_<NAME>_ variables.
type Destinations struct {
	Names List `env:"DESTINATIONS" desc:"names of several destinations, comma-separated (letters, digits, - and _; at most 32 characters each). Each is set with the DESTINATION_<NAME>_ variables below, and the default destination's variables (DICOMWEB_URL, OAUTH_*, AZURE_IMDS_ENDPOINT, TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE, TLS_INSECURE_SKIP_VERIFY, STOW_*, DEIDENTIFY_KEY_FILE) must then be unset; AWS_REGION, GOOGLE_APPLICATION_CREDENTIALS, GCE_METADATA_HOST, AZURE_TENANT_ID, AZURE_AUTHORITY_HOST and AZURE_FEDERATED_TOKEN_FILE, which platforms set on their own, are ignored (logged at start). Unset: one destination, named default, set by DICOMWEB_URL and the variables after it; named in DESTINATIONS, it is written default, in lower case"`
	Serve List `env:"FORWARDER_DESTINATIONS" desc:"the destinations this forwarder process serves, comma-separated (default: every destination), so that the forwarders of each destination scale on their own"`

	// The per-destination variables are read by readDynamic; these
	// fields declare them for -h and the README. <NAME> is the
	// destination's name in upper case with '-' written as '_'.
	_ struct{} `env:"DESTINATION_<NAME>_URL" desc:"DICOMweb base URL of destination <NAME> (required for each name in DESTINATIONS)"`
	_ struct{} `env:"DESTINATION_<NAME>_MATCH" desc:"which studies go to destination <NAME>: a CEL expression over source, study.modalities, study.description, study.callingAets, study.institution, study.sopClasses and study.instances (docs/routing.md); empty: every study. Example: 'MR' in study.modalities && source == 'main'"`
	_ struct{} `env:"DESTINATION_<NAME>_INSTANCE_MATCH" desc:"which instances of a selected study go to destination <NAME>: a CEL expression over instance.modality, instance.sopClassUid, instance.transferSyntaxUid, instance.callingAet and instance.seriesDescription; empty: every instance"`
	_ struct{} `env:"DESTINATION_<NAME>_<VARIABLE>" desc:"every other destination variable for destination <NAME>: OAUTH_*, AZURE_*, GOOGLE_APPLICATION_CREDENTIALS, GCE_METADATA_HOST, AWS_REGION, TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE, TLS_INSECURE_SKIP_VERIFY, STOW_*, DEIDENTIFY_KEY_FILE (e.g. DESTINATION_AI_OAUTH_CLIENT_SECRET_FILE). A variable not given takes its default, never another destination's value"`

	named []NamedDestination // filled by readDynamic from DESTINATIONS
	// ignored are the platform variables (platformVars) set alongside
	// DESTINATIONS, which no destination reads.
	ignored []string
}

// IgnoredPlatformVariables names the default destination's variables a
// platform may set on its own (AWS_REGION...) that are set alongside
// DESTINATIONS: ignored rather than refused, so the start says so, in
// case one was meant for a destination (its DESTINATION_<NAME>_ form).
func (d *Destinations) IgnoredPlatformVariables() []string { return d.ignored }

// NamedDestination is one destination with its name and routing rules.
type NamedDestination struct {
	Name string
	// Var is the prefix of its variables ("DESTINATION_AI_"), empty for the
	// default destination of a deployment without DESTINATIONS.
	Var string
	Destination
	// Match and InstanceMatch are its CEL rules; empty selects everything.
	Match, InstanceMatch string
}

// VarName is the name of the destination's variable whose default
// destination's name is name (DICOMWEB_URL, OAUTH_TOKEN_URL...).
func (d NamedDestination) VarName(name string) string {
	if d.Var == "" {
		return name
	}
	if name == "DICOMWEB_URL" {
		return d.Var + "URL"
	}
	return d.Var + name
}

// DestinationVarPrefix is the prefix of the variables of a destination
// named in DESTINATIONS: "ai-2" is configured by DESTINATION_AI_2_URL.
func DestinationVarPrefix(name string) string {
	return "DESTINATION_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_"
}

// DestinationList returns every configured destination: the ones
// DESTINATIONS names, or the default one. The settings of a destination
// this process does not serve (FORWARDER_DESTINATIONS) are not read:
// only its name, rules and de-identification mode are set.
func (f *Forwarder) DestinationList() []NamedDestination {
	if len(f.Names) > 0 {
		return f.named
	}
	return []NamedDestination{{Name: natsjs.DefaultDestination, Destination: f.Destination}}
}

// serves reports whether this process serves the destination named.
func (f *Forwarder) serves(name string) bool {
	return len(f.Serve) == 0 || slices.Contains(f.Serve, name)
}

// Served returns the destinations this process serves
// (FORWARDER_DESTINATIONS, default all), in configuration order.
func (f *Forwarder) Served() []NamedDestination {
	var out []NamedDestination
	for _, d := range f.DestinationList() {
		if f.serves(d.Name) {
			out = append(out, d)
		}
	}
	return out
}

// destinationKeys are what follows a destination's prefix in the names
// of its variables: URL, its rules, and each destination variable (and a
// secret's _FILE form).
func destinationKeys() []string {
	keys := []string{"URL", "MATCH", "INSTANCE_MATCH"}
	for _, v := range Vars(&Destination{}) {
		if v.Name == "DICOMWEB_URL" {
			continue
		}
		keys = append(keys, v.Name)
		if v.Secret {
			keys = append(keys, v.Name+fileSuffix)
		}
	}
	return keys
}

// sharedVariable finds a variable that the destination of prefix p and
// one already named (prefixes: prefix -> name) would both read: "ai" and
// "ai-instance" both read DESTINATION_AI_INSTANCE_MATCH (ai's instance
// rule, ai-instance's study rule).
func sharedVariable(p string, prefixes map[string]string) (other, variable string, ok bool) {
	keys := destinationKeys()
	for q, name := range prefixes {
		short, long := p, q
		if len(short) > len(long) {
			short, long = long, short
		}
		rest, found := strings.CutPrefix(long, short)
		if !found {
			continue
		}
		// long+k2 == short+k1 when k1 == rest+k2.
		for _, k1 := range keys {
			if k2, found := strings.CutPrefix(k1, rest); found && slices.Contains(keys, k2) {
				return name, short + k1, true
			}
		}
	}
	return "", "", false
}

// platformVars are default-destination variables a platform may set on
// its own (EKS and ECS set AWS_REGION, AKS workload identity the AZURE_
// ones, some GCP set-ups GOOGLE_APPLICATION_CREDENTIALS): with
// DESTINATIONS they are ignored rather than refused, each destination
// reading its DESTINATION_<NAME>_ form.
var platformVars = map[string]bool{
	"AWS_REGION": true, "GOOGLE_APPLICATION_CREDENTIALS": true, "GCE_METADATA_HOST": true,
	"AZURE_TENANT_ID": true, "AZURE_AUTHORITY_HOST": true, "AZURE_FEDERATED_TOKEN_FILE": true,
}

// readDynamic reads the DESTINATION_<NAME>_ variables of every name in
// DESTINATIONS. Each destination reads only its own variables, so a
// secret never reaches another destination.
func (f *Forwarder) readDynamic(getenv func(string) string) error {
	f.named, f.ignored = nil, nil
	if err := f.Destination.readDynamic(getenv); err != nil {
		return err
	}
	if len(f.Names) == 0 {
		return nil
	}
	var errs []error
	var set []string
	for _, v := range Vars(&Destination{}) {
		if platformVars[v.Name] {
			if getenv(v.Name) != "" {
				f.ignored = append(f.ignored, v.Name)
			}
			continue
		}
		if getenv(v.Name) != "" || (v.Secret && getenv(v.Name+fileSuffix) != "") {
			set = append(set, v.Name)
		}
	}
	if len(set) > 0 {
		errs = append(errs, fmt.Errorf("%s: set, but DESTINATIONS names the destinations: configure each with its DESTINATION_<NAME>_ variables instead (the default destination's variables are not shared)", strings.Join(set, ", ")))
	}
	prefixes := map[string]string{}
	for _, name := range f.Names {
		if !natsjs.ValidDestination(name) {
			errs = append(errs, fmt.Errorf("DESTINATIONS: %q is not a destination name (1-%d characters of A-Z a-z 0-9 _ -)", name, natsjs.MaxDestinationName))
			continue
		}
		// DEFAULT (default in another case) is not refused here: a
		// deployment that earlier builds let make it forwards through it,
		// and only JetStream tells whether its consumer exists (the
		// forwarder's start refuses a new one beside default's:
		// app.checkRenamedDestinations).
		p := DestinationVarPrefix(name)
		if other, dup := prefixes[p]; dup {
			errs = append(errs, fmt.Errorf("DESTINATIONS: %q and %q would both be configured by %s* variables: rename one", other, name, p))
			continue
		}
		if other, v, ok := sharedVariable(p, prefixes); ok {
			errs = append(errs, fmt.Errorf("DESTINATIONS: %q and %q would both read %s: rename one", other, name, v))
			continue
		}
		prefixes[p] = name
		d := NamedDestination{Name: name, Var: p, Match: getenv(p + "MATCH"), InstanceMatch: getenv(p + "INSTANCE_MATCH")}
		f.named = append(f.named, d)
		if !f.serves(name) {
			// Another forwarder group sends to it: this one needs only its
			// name and rules, never its credentials, and whether it
			// receives originals (buffer mode deletes an instance only
			// once a destination that does holds it).
			f.named[len(f.named)-1].Deidentify.Mode = getenv(d.VarName("STOW_DEIDENTIFY"))
			continue
		}
		own := func(key string) string { return getenv(d.VarName(key)) }
		if err := Load(own, &f.named[len(f.named)-1].Destination); err != nil {
			errs = append(errs, d.rename(err))
		}
		if f.named[len(f.named)-1].DICOMwebURL == "" {
			errs = append(errs, fmt.Errorf("%sURL is required: DESTINATIONS names destination %q", p, name))
		}
	}
	return errors.Join(errs...)
}

// readDynamic keeps the path of OAUTH_CLIENT_SECRET_FILE: the token
// source reads the secret from it for every token, so that a rotated
// secret needs no restart. It also notes whether STOW_DEIDENTIFY was
// given at all: its default, off, is no choice (unusedOptions).
func (d *Destination) readDynamic(getenv func(string) string) error {
	d.OAuthClientSecretFile = getenv("OAUTH_CLIENT_SECRET" + fileSuffix)
	d.modeSet = getenv("STOW_DEIDENTIFY") != ""
	return nil
}

// missingRequired reports DICOMWEB_URL missing in a deployment without
// DESTINATIONS.
func (f *Forwarder) missingRequired(getenv func(string) string) error {
	if getenv("DESTINATIONS") == "" && getenv("DICOMWEB_URL") == "" {
		return errDICOMwebURLRequired
	}
	return nil
}

var errDICOMwebURLRequired = errors.New("DICOMWEB_URL is required (or DESTINATIONS, with DESTINATION_<NAME>_URL for each)")

// destinationsValidate checks every destination and the rules; the
// errors name each destination's own variables.
func (f *Forwarder) destinationsValidate() error {
	var errs []error
	names := map[string]bool{}
	if len(f.Names) == 0 {
		if f.DICOMwebURL == "" {
			errs = append(errs, errDICOMwebURLRequired)
		} else if err := f.Destination.validate(); err != nil {
			errs = append(errs, err)
		}
		names[natsjs.DefaultDestination] = true
	}
	for _, d := range f.named {
		names[d.Name] = true
		if f.serves(d.Name) {
			if d.DICOMwebURL != "" { // a missing URL is reported by readDynamic
				if err := d.Destination.validate(); err != nil {
					errs = append(errs, d.rename(err))
				}
			}
		} else if m := d.Deidentify.Mode; m != "" && !validDeidentifyMode(m) {
			// Read raw by readDynamic; buffer mode trusts it.
			errs = append(errs, fmt.Errorf("%sSTOW_DEIDENTIFY=%q: want off or basic (buffer mode reads it for every destination)", d.Var, m))
		}
		if _, err := routing.CompileStudyRule(d.Match); err != nil {
			errs = append(errs, fmt.Errorf("%sMATCH: %w", d.Var, err))
		}
		if _, err := routing.CompileInstanceRule(d.InstanceMatch); err != nil {
			errs = append(errs, fmt.Errorf("%sINSTANCE_MATCH: %w", d.Var, err))
		}
	}
	for _, s := range f.Serve {
		if !names[s] {
			known := make([]string, 0, len(names))
			for n := range names {
				known = append(known, n)
			}
			sort.Strings(known)
			errs = append(errs, fmt.Errorf("FORWARDER_DESTINATIONS: %q is not a configured destination (%s)", s, strings.Join(known, ", ")))
		}
	}
	return errors.Join(errs...)
}

// rulesNameSources checks the names each destination's rule compares
// source with against the configured sources (ruleNamesSources).
func (f *Forwarder) rulesNameSources(o *Orthanc) error {
	var errs []error
	for _, d := range f.named {
		errs = append(errs, o.ruleNamesSources(d.Var+"MATCH", d.Match))
	}
	return errors.Join(errs...)
}

// destinationVars are the default destination's variable names.
var destinationVars = func() map[string]bool {
	out := map[string]bool{}
	for _, v := range Vars(&Destination{}) {
		out[v.Name] = true
	}
	return out
}()

// destinationVarPattern matches those names (and their _FILE forms) in a
// message.
var destinationVarPattern = func() *regexp.Regexp {
	var names []string
	for n := range destinationVars {
		names = append(names, regexp.QuoteMeta(n))
	}
	sort.Slice(names, func(i, j int) bool { return len(names[i]) > len(names[j]) })
	return regexp.MustCompile(`\b(` + strings.Join(names, "|") + `)(` + fileSuffix + `)?\b`)
}()

// rename makes err name the destination's own variables.
func (d NamedDestination) rename(err error) error {
	if err == nil || d.Var == "" {
		return err
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		// One by one, to keep the secretVarErrors Load tells apart.
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, d.rename(e))
		}
		return errors.Join(out...)
	}
	msg := destinationVarPattern.ReplaceAllStringFunc(err.Error(), func(m string) string {
		base, file := strings.CutSuffix(m, fileSuffix)
		if file && !destinationVars[base] {
			base, file = m, false // a name that itself ends in _FILE
		}
		out := d.VarName(base)
		if file {
			out += fileSuffix
		}
		return out
	})
	if _, ok := err.(secretVarError); ok {
		return secretVarError{errors.New(msg)}
	}
	return errors.New(msg)
}
