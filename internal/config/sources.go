package config

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/reconcile"
	"github.com/stowline/stowline/internal/routing"
)

// Orthanc configures the Orthanc servers stowline reads studies from, the
// "sources". One Orthanc is set with ORTHANC_URL; several are named in
// ORTHANC_SOURCES and each is set with its own ORTHANC_<NAME>_ variables.
type Orthanc struct {
	URL             string        `env:"ORTHANC_URL" envDefault:"http://localhost:8042" desc:"Orthanc REST API base URL (one source; see ORTHANC_SOURCES for several)"`
	Username        string        `env:"ORTHANC_USERNAME" desc:"Orthanc HTTP basic-auth user (empty: no auth)"`
	Password        string        `env:"ORTHANC_PASSWORD" secret:"true" desc:"Orthanc HTTP basic-auth password"`
	SourceName      string        `env:"ORTHANC_SOURCE_NAME" desc:"source name of that Orthanc's events (the Lua script's Stowline.Source); empty: the forwarder takes events of any source, the reconciler and audit use Orthanc's Name as the script does"`
	ResponseTimeout time.Duration `env:"ORTHANC_RESPONSE_TIMEOUT" envDefault:"2m" desc:"how long an Orthanc source may take to start answering a request: to list a large study's instances, to read a file from its storage, or to convert one to a transfer syntax the destination accepts (STOW_TRANSFER_SYNTAXES), which for a large multi-frame instance can take minutes (1s to 1h)"`
	MaxConnections  int           `env:"ORTHANC_MAX_CONNECTIONS" envDefault:"0" desc:"most requests each stowline process has in flight to one Orthanc source at once, file streams included, which Orthanc's HTTP threads (HttpThreadsCount, default 50) share with its viewers; 0: no cap. Applies to every source; ORTHANC_<NAME>_MAX_CONNECTIONS sets one source's (docs/orthanc-access.md)"`
	CAFile          string        `env:"ORTHANC_CA_FILE" desc:"PEM CA certificates trusted, besides the system's, for HTTPS to every Orthanc source (an Orthanc behind a private PKI)"`
	Sources         List          `env:"ORTHANC_SOURCES" desc:"names of several Orthanc sources, comma-separated; each is set with the ORTHANC_<NAME>_ variables below, and ORTHANC_URL, _USERNAME, _PASSWORD and _SOURCE_NAME must then be unset"`
	// SourceAliases: a source renamed while events of its old name are
	// queued or dead-lettered, where the ingest and the forwarders read
	// one configuration (single host, the Helm chart's env): with both
	// names configured the reconciler would queue each study twice.
	SourceAliases List `env:"ORTHANC_SOURCE_ALIASES" desc:"<old name>=<source>, comma-separated: events of a source's former name (queued before it was renamed, or dead-lettered) are read from that configured source's Orthanc; the reconciler and the audit do not read the old name. Set it with RECONCILE_ADOPT_CURSOR_FROM for a rename (docs/guarantees.md), remove it once no queued event or letter carries the old name"`

	// The per-source variables are read by readDynamic, not by the env
	// library (which skips blank fields); these fields declare them for -h
	// and the README. <NAME> is the source name in upper case with '-'
	// written as '_'.
	_ struct{} `env:"ORTHANC_<NAME>_URL" desc:"Orthanc REST API base URL of source <NAME> (required for each name in ORTHANC_SOURCES)"`
	_ struct{} `env:"ORTHANC_<NAME>_USERNAME" desc:"Orthanc HTTP basic-auth user of source <NAME> (empty: no auth)"`
	_ struct{} `env:"ORTHANC_<NAME>_PASSWORD" secret:"true" desc:"Orthanc HTTP basic-auth password of source <NAME>"`
	_ struct{} `env:"ORTHANC_<NAME>_MAX_CONNECTIONS" desc:"ORTHANC_MAX_CONNECTIONS for source <NAME> alone (empty: ORTHANC_MAX_CONNECTIONS)"`

	named        []OrthancSource // filled by readDynamic from ORTHANC_SOURCES
	passwordFile string          // ORTHANC_PASSWORD_FILE, kept by readDynamic
}

// OrthancSource is one configured Orthanc.
type OrthancSource struct {
	// Name is the events' source name. It is empty only in the one-source
	// setup without ORTHANC_SOURCE_NAME: that Orthanc serves every source.
	Name               string
	URL                string
	Username, Password string
	// PasswordFile is the file Password was read from, if it was: the
	// client reads it again when Orthanc refuses the password.
	PasswordFile string
	// MaxConnections caps the requests in flight to it (0: no cap).
	MaxConnections int
	// ownCap: MaxConnections is the source's own
	// ORTHANC_<NAME>_MAX_CONNECTIONS, not ORTHANC_MAX_CONNECTIONS's.
	ownCap bool
	// Var is the prefix of the source's variables ("ORTHANC_" or
	// "ORTHANC_CARDIO_"), for error messages.
	Var string
}

// sourceVarPrefix is the prefix of the variables of a source named in
// ORTHANC_SOURCES: "cardio-2" is configured by ORTHANC_CARDIO_2_URL etc.
func sourceVarPrefix(name string) string {
	return "ORTHANC_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_"
}

// Aliases returns ORTHANC_SOURCE_ALIASES: the configured source each
// former name stands for (Validate checked them).
func (o *Orthanc) Aliases() map[string]string {
	m := map[string]string{}
	for _, a := range o.SourceAliases {
		if old, name, ok := strings.Cut(a, "="); ok {
			m[strings.TrimSpace(old)] = strings.TrimSpace(name)
		}
	}
	return m
}

// SourceList returns the configured sources: the ones ORTHANC_SOURCES names, or
// the one ORTHANC_URL sets.
func (o *Orthanc) SourceList() []OrthancSource {
	if len(o.Sources) > 0 {
		return o.named
	}
	return []OrthancSource{{Name: o.SourceName, URL: o.URL, Username: o.Username, Password: o.Password, PasswordFile: o.passwordFile, MaxConnections: o.MaxConnections, Var: "ORTHANC_"}}
}

// readDynamic reads the ORTHANC_<NAME>_ variables of every name in
// ORTHANC_SOURCES, and keeps the path of each password file.
func (o *Orthanc) readDynamic(getenv func(string) string) error {
	o.named = nil
	o.passwordFile = ""
	if len(o.Sources) == 0 {
		o.passwordFile = getenv("ORTHANC_PASSWORD" + fileSuffix)
		return nil
	}
	var errs []error
	for _, k := range []string{"ORTHANC_URL", "ORTHANC_USERNAME", "ORTHANC_PASSWORD", "ORTHANC_PASSWORD_FILE", "ORTHANC_SOURCE_NAME"} {
		if getenv(k) != "" {
			errs = append(errs, fmt.Errorf("%s is set but ORTHANC_SOURCES names the sources: configure each with ORTHANC_<NAME>_URL, _USERNAME and _PASSWORD instead", k))
		}
	}
	prefixes := map[string]string{}
	for _, name := range o.Sources {
		if !events.ValidSource(name) {
			errs = append(errs, fmt.Errorf("ORTHANC_SOURCES: %q is not a source name (1-64 characters of A-Z a-z 0-9 _ -)", name))
			continue
		}
		p := sourceVarPrefix(name)
		if other, dup := prefixes[p]; dup {
			errs = append(errs, fmt.Errorf("ORTHANC_SOURCES: %q and %q would both be configured by %s* variables: rename one", other, name, p))
			continue
		}
		prefixes[p] = name
		src := OrthancSource{Name: name, URL: getenv(p + "URL"), Username: getenv(p + "USERNAME"), Var: p}
		pw, err := readSecret(getenv, p+"PASSWORD")
		if err != nil {
			errs = append(errs, err)
			pw = standInSecret(p + "PASSWORD") // so Validate still checks the rest
		}
		src.Password, src.PasswordFile = pw, getenv(p+"PASSWORD"+fileSuffix)
		if src.URL == "" {
			errs = append(errs, fmt.Errorf("%sURL is required: ORTHANC_SOURCES names source %q", p, name))
		}
		src.MaxConnections = o.MaxConnections
		if v := getenv(p + "MAX_CONNECTIONS"); v != "" {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				errs = append(errs, fmt.Errorf("%sMAX_CONNECTIONS=%q: want a whole number, 0 for no cap", p, v))
			}
			src.MaxConnections, src.ownCap = n, true
		}
		o.named = append(o.named, src)
	}
	return errors.Join(errs...)
}

// Validate names the variable that is out of range.
func (o *Orthanc) Validate() error {
	var errs []error
	if o.SourceName != "" && !events.ValidSource(o.SourceName) {
		errs = append(errs, fmt.Errorf("ORTHANC_SOURCE_NAME=%q: want 1-64 characters of A-Z a-z 0-9 _ -", o.SourceName))
	}
	if o.ResponseTimeout < time.Second || o.ResponseTimeout > time.Hour {
		errs = append(errs, fmt.Errorf("ORTHANC_RESPONSE_TIMEOUT=%s: want 1s to 1h", o.ResponseTimeout))
	}
	if o.CAFile != "" {
		if _, err := NewTLSConfig(TLSFiles{CAFile: o.CAFile}, nil); err != nil {
			errs = append(errs, fmt.Errorf("ORTHANC_CA_FILE: %w", err))
		}
	}
	if o.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("ORTHANC_MAX_CONNECTIONS=%d: want 0 (no cap) or more", o.MaxConnections))
	}
	errs = append(errs, o.validateAliases())
	for _, s := range o.SourceList() {
		if s.URL == "" {
			continue // reported by readDynamic
		}
		// One inherited from ORTHANC_MAX_CONNECTIONS is reported above,
		// under the name the operator set.
		if s.MaxConnections < 0 && s.ownCap {
			errs = append(errs, fmt.Errorf("%sMAX_CONNECTIONS=%d: want 0 (no cap) or more", s.Var, s.MaxConnections))
		}
		if err := validateOrthancURL(s.Var+"URL", s.URL); err != nil {
			errs = append(errs, err)
		}
		if s.Password != "" && s.Username == "" {
			errs = append(errs, fmt.Errorf("%sPASSWORD is set but %sUSERNAME is empty", s.Var, s.Var))
		}
		if s.Username != "" && s.Password == "" {
			// Else Orthanc refuses every request, found only at the
			// first study.
			errs = append(errs, fmt.Errorf("%sUSERNAME is set but %sPASSWORD and %sPASSWORD_FILE are empty", s.Var, s.Var, s.Var))
		}
		// Basic auth joins them with a colon: one in the user name (a
		// "user:password" put there) splits elsewhere, and Orthanc
		// refuses every request. Not quoted: it may hold the password.
		if strings.ContainsRune(s.Username, ':') {
			errs = append(errs, fmt.Errorf("%sUSERNAME holds a colon, which HTTP basic auth cannot carry in a user name: give the user name alone, and the password as %sPASSWORD", s.Var, s.Var))
		}
	}
	return errors.Join(errs...)
}

// sourceNames are the configured sources' names: none for the one
// Orthanc without ORTHANC_SOURCE_NAME, which takes every source's events.
func (o *Orthanc) sourceNames() map[string]bool {
	names := map[string]bool{}
	for _, s := range o.SourceList() {
		if s.Name != "" {
			names[s.Name] = true
		}
	}
	return names
}

// ruleNamesSources refuses a rule (the variable, its CEL) that compares
// source with a name no configured source has. A rule sees only the
// configured names (an alias's old name is read as its source's), so
// source == 'mian' is never true: the destination would get none of
// those studies, silently, and buffer mode would delete them from the
// source once the other destinations hold them. Not checked with one
// Orthanc without a name, which takes every source's events; a rule
// that does not compile is reported where it is compiled.
func (o *Orthanc) ruleNamesSources(variable, expr string) error {
	names := o.sourceNames()
	if len(names) == 0 || strings.TrimSpace(expr) == "" {
		return nil
	}
	rule, err := routing.CompileStudyRule(expr)
	if err != nil {
		return nil
	}
	aliases := o.Aliases()
	var errs []error
	seen := map[string]bool{}
	for _, name := range rule.ComparedSources() {
		if names[name] || seen[name] {
			continue
		}
		seen[name] = true
		if to, ok := aliases[name]; ok {
			errs = append(errs, fmt.Errorf("%s compares source with %q, a former name (ORTHANC_SOURCE_ALIASES %s=%s): a rule sees the source's name, %q", variable, name, name, to, to))
			continue
		}
		errs = append(errs, fmt.Errorf("%s compares source with %q, which is not a configured source (%s): a rule sees only those names: compared with it, == never holds and != always does",
			variable, name, strings.Join(slices.Sorted(maps.Keys(names)), ", ")))
	}
	return errors.Join(errs...)
}

// capsLeaveEachASlot refuses a cap of requests to a source
// (ORTHANC_MAX_CONNECTIONS, or the source's own) below the slots its
// share of them keeps free: one for each destination the process serves,
// and one more for its ingest's reads (the reconciler, PRIORITY_RULE) on
// a single host. Below it a destination that stops reading its STOW-RS
// requests mid-body holds, until its stall check (5 minutes), the slots
// the others need, and their studies fail meanwhile.
func (o *Orthanc) capsLeaveEachASlot(served []NamedDestination, ingestReads bool) error {
	need, names := len(served), make([]string, len(served))
	for i, d := range served {
		names[i] = d.Name
	}
	who := "a slot for each destination this process serves (" + strings.Join(names, ", ") + ")"
	sizing := "the sum of the destinations' STOW_PARALLEL_REQUESTS"
	if ingestReads {
		need++
		who += " and one for its ingest's reads of Orthanc (the reconciler, PRIORITY_RULE)"
		sizing += ", plus one for the ingest"
	}
	var errs []error
	reported := false
	for _, s := range o.SourceList() {
		if s.MaxConnections <= 0 || s.MaxConnections >= need {
			continue
		}
		variable := s.Var + "MAX_CONNECTIONS"
		if !s.ownCap {
			// Inherited: reported once, under the name the operator set.
			if reported {
				continue
			}
			variable, reported = "ORTHANC_MAX_CONNECTIONS", true
		}
		errs = append(errs, fmt.Errorf("%s=%d: below %d, %s: a destination that stops reading its requests mid-body would hold the slots the others need until its stall check; "+
			"want %d or more, or 0 for no cap (better %s, so that none waits for another's)",
			variable, s.MaxConnections, need, who, need, sizing))
	}
	return errors.Join(errs...)
}

// validateAliases checks ORTHANC_SOURCE_ALIASES: each entry a former
// name, not configured, for a configured source.
func (o *Orthanc) validateAliases() error {
	if len(o.SourceAliases) == 0 {
		return nil
	}
	names := o.sourceNames()
	if len(names) == 0 {
		return errors.New("ORTHANC_SOURCE_ALIASES is set, but the one Orthanc has no name (ORTHANC_SOURCE_NAME): it takes every source's events already; unset it")
	}
	var errs []error
	seen := map[string]bool{}
	for _, a := range o.SourceAliases {
		old, name, ok := strings.Cut(a, "=")
		old, name = strings.TrimSpace(old), strings.TrimSpace(name)
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("ORTHANC_SOURCE_ALIASES: %q: want <old name>=<source>, e.g. MyOrthanc=main", a))
		case !events.ValidSource(old):
			errs = append(errs, fmt.Errorf("ORTHANC_SOURCE_ALIASES: %q: %q is not a source name (1-64 characters of A-Z a-z 0-9 _ -)", a, old))
		case names[old]:
			errs = append(errs, fmt.Errorf("ORTHANC_SOURCE_ALIASES: %q: %q is a configured source: an alias names a former one", a, old))
		case !names[name]:
			errs = append(errs, fmt.Errorf("ORTHANC_SOURCE_ALIASES: %q: %q is not a configured source (ORTHANC_SOURCES, or ORTHANC_SOURCE_NAME)", a, name))
		case seen[old]:
			errs = append(errs, fmt.Errorf("ORTHANC_SOURCE_ALIASES: %q is given twice", old))
		}
		seen[old] = true
	}
	return errors.Join(errs...)
}

// Reconcile configures the change-log reconciler that runs with the ingest.
type Reconcile struct {
	Enabled      bool          `env:"RECONCILE_ENABLED" envDefault:"true" desc:"poll each Orthanc source's change log (GET /changes) so that a study whose webhook was lost is still forwarded"`
	PollInterval time.Duration `env:"RECONCILE_POLL_INTERVAL" envDefault:"10s" desc:"how often the reconciler reads each source's change log"`
	LeaseTTL     time.Duration `env:"RECONCILE_LEASE_TTL" envDefault:"15s" desc:"one ingest replica polls a source at a time; another takes over when it has not renewed its lease for this long"`
	// AdoptCursor: one configured source carries another name's cursor
	// over only when told (another deployment on the NATS may own it,
	// and another source of this ingest may match it too).
	AdoptCursor string `env:"RECONCILE_ADOPT_CURSOR_FROM" desc:"<new source>:<old source>: the configured Orthanc source (one of ORTHANC_SOURCES, or ORTHANC_SOURCE_NAME) that was reconciled under the old source name before its name changed (ORTHANC_SOURCE_NAME set or changed, ORTHANC_URL moved into ORTHANC_SOURCES): that source, without a cursor of its own, continues the old name's, if it points into its Orthanc's change log; no other source does"`
}

// CursorAdoption is RECONCILE_ADOPT_CURSOR_FROM split at its colon, the
// one parse of it (Validate's, adoptsFromOwn's and the reconciler's):
// the zero value when it is unset or has none (refused by Validate).
func (r *Reconcile) CursorAdoption() reconcile.CursorAdoption {
	to, from, ok := strings.Cut(r.AdoptCursor, ":")
	if !ok {
		return reconcile.CursorAdoption{}
	}
	return reconcile.CursorAdoption{To: to, From: from}
}

// adoptsFromOwn checks RECONCILE_ADOPT_CURSOR_FROM against the sources:
// the adopting one must be a configured source, the old name none.
func (r *Reconcile) adoptsFromOwn(o *Orthanc) error {
	a := r.CursorAdoption()
	if a == (reconcile.CursorAdoption{}) {
		return nil
	}
	names := o.sourceNames()
	var errs []error
	if !names[a.To] {
		errs = append(errs, fmt.Errorf("RECONCILE_ADOPT_CURSOR_FROM=%q: %q is not a configured source (ORTHANC_SOURCES, or ORTHANC_SOURCE_NAME)", r.AdoptCursor, a.To))
	}
	if names[a.From] {
		errs = append(errs, fmt.Errorf("RECONCILE_ADOPT_CURSOR_FROM=%q: %q is one of the configured sources: name the source's old name", r.AdoptCursor, a.From))
	}
	return errors.Join(errs...)
}

// webhookFailingMaxInterval is the longest RECONCILE_POLL_INTERVAL
// StowlineWebhookFailing sees: it needs a study stored by the reconciler
// in every 30 minutes, and a poll's own time and the scrape interval
// come on top of the interval.
const webhookFailingMaxInterval = 25 * time.Minute

// AlertWarning says when RECONCILE_POLL_INTERVAL is too long for
// StowlineWebhookFailing to fire; nil otherwise. A warning at start, not
// a refusal: the setting accepts up to 1h, and an upgrade must not stop
// the sites that set more.
func (r *Reconcile) AlertWarning() error {
	if !r.Enabled || r.PollInterval <= webhookFailingMaxInterval {
		return nil
	}
	return fmt.Errorf("RECONCILE_POLL_INTERVAL=%s: above %s the alert StowlineWebhookFailing cannot fire (it needs a study the reconciler queued in every 30 minutes), so a broken Lua script webhook goes unalerted; "+
		"StowlineReconcilerFailing waits two intervals (docs/operations.md)", r.PollInterval, webhookFailingMaxInterval)
}

// Validate names the variable that is out of range.
func (r *Reconcile) Validate() error {
	var errs []error
	if r.PollInterval < 100*time.Millisecond || r.PollInterval > time.Hour {
		errs = append(errs, fmt.Errorf("RECONCILE_POLL_INTERVAL=%s: want 100ms to 1h", r.PollInterval))
	}
	if r.LeaseTTL < time.Second || r.LeaseTTL > 10*time.Minute {
		errs = append(errs, fmt.Errorf("RECONCILE_LEASE_TTL=%s: want 1s to 10m", r.LeaseTTL))
	}
	if r.AdoptCursor != "" {
		// Without the colon a is zero, and "" is no source name.
		a := r.CursorAdoption()
		if !events.ValidSource(a.To) || !events.ValidSource(a.From) || a.To == a.From {
			errs = append(errs, fmt.Errorf("RECONCILE_ADOPT_CURSOR_FROM=%q: want <new source>:<old source>, two different source names, e.g. main:MyOrthanc", r.AdoptCursor))
		}
	}
	return errors.Join(errs...)
}
