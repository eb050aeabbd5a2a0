package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/stowline/stowline/internal/natsjs"
)

// checkedFamilies are the prefixes of the variables Unread checks, where
// a misspelt name would silently leave a default: STOW_PARALLEL_REQUEST;
// INGEST_HMAC_SECRETS_FILE (the webhook then takes unsigned requests);
// EVENTS_RETENTON or NATS_REPLICA (this process then sets the shared
// streams' retention, or replicas, to the default at its start);
// FORWARD_WINDOW (backfills then run through the day) or PRIORITY_RULES
// (stat studies then wait behind routine ones).
// ORTHANC_PASWORD (every Orthanc read then refused) or TLS_LISTEN_CERT
// (the listeners then serve plain HTTP).
// DESTINATION_ is checked for a configuration that has destinations
// (DestinationList). TLS_ and the platforms' prefixes are left out:
// other tools read variables of theirs.
var checkedFamilies = []string{"STOW_", "OAUTH_", "FORWARDER_", "FORWARD_", "PRIORITY_", "INGEST_", "RECONCILE_", "EVENTS_", "DEADLETTER_", "NATS_", "ORTHANC_", "TLS_LISTEN_"}

// orthancImageVars are set for Orthanc's own Docker images (ORTHANC__NAME,
// ORTHANC_JSON), or for deploy/orthanc's configuration
// (ORTHANC_ADMIN_PASSWORD), perhaps in an env file shared with stowline.
var orthancImageVars = regexp.MustCompile(`^ORTHANC_(_|JSON$|ADMIN_PASSWORD$)`)

// natsCLIVars are the nats CLI's own settings (nats --help): set for it
// in the same environment, they are no misspelling.
var natsCLIVars = []string{"NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS", "NATS_NKEY", "NATS_CERT", "NATS_KEY", "NATS_CA", "NATS_TIMEOUT", "NATS_CONTEXT"}

// serviceLink matches the variables Kubernetes sets for every Service
// (FOO_SERVICE_HOST, FOO_PORT_8080_TCP_ADDR, ...): never a misspelling.
var serviceLink = regexp.MustCompile(`_SERVICE_(HOST|PORT)(_|$)|_PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?$`)

// Unread returns, sorted, the variables of environ ("NAME=value"; values
// are not looked at) that look like settings of cfg, a loaded
// configuration, but that it does not read: a misspelt name, or a variable
// of a destination DESTINATIONS does not name. Only the families cfg reads
// are checked, so a process sharing an env file with another role is not
// told about the other's variables.
func Unread(environ []string, cfg any) []string {
	known := map[string]bool{}
	add := func(name string, secret bool) {
		known[name] = true
		if secret {
			known[name+fileSuffix] = true
		}
	}
	vars := Vars(cfg)
	for _, v := range vars {
		if !strings.Contains(v.Name, "<") {
			add(v.Name, v.Secret)
		}
	}
	var families []string
	for _, f := range checkedFamilies {
		for name := range known {
			if strings.HasPrefix(name, f) {
				families = append(families, f)
				break
			}
		}
	}
	d, hasDestinations := cfg.(interface{ DestinationList() []NamedDestination })
	if hasDestinations {
		// DESTINATIONS_: a per-destination variable under the list's name.
		families = append(families, "DESTINATION_", "DESTINATIONS_")
		for _, nd := range d.DestinationList() {
			if nd.Var == "" {
				continue
			}
			for _, k := range destinationKeys() {
				known[nd.Var+k] = true
			}
		}
	}
	if s, ok := cfg.(interface{ SourceList() []OrthancSource }); ok {
		for _, src := range s.SourceList() {
			for _, v := range vars {
				if key, ok := strings.CutPrefix(v.Name, "ORTHANC_<NAME>_"); ok {
					add(src.Var+key, v.Secret)
				}
			}
		}
	}
	// Whatever its prefix or case, a de-identification variable misspelt
	// (DEIDENTIFY_KEYFILE, stow_deidentify) is checked by a process that
	// de-identifies.
	deidentifies := known["STOW_DEIDENTIFY"]
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if known[name] || serviceLink.MatchString(name) || slices.Contains(natsCLIVars, name) || orthancImageVars.MatchString(name) || slices.Contains(out, name) {
			continue
		}
		if deidentifies && StopsStart(name) || hasDestinations && isRuleName(name) {
			out = append(out, name)
			continue
		}
		for _, f := range families {
			if strings.HasPrefix(name, f) {
				out = append(out, name)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// deidentName matches the name of a de-identification variable, misspelt
// too: DEIDENT anywhere, or DEID at the start of a word (STOW_DEIDENITFY,
// DEIDENTIFY's letters swapped after DEID), in any case (stow_deidentify).
// DEID inside a word (NODEID) is another tool's.
var deidentName = regexp.MustCompile(`(?i)deident|(^|[^a-zA-Z0-9])deid`)

// StopsStart reports whether name, a variable Unread returned, must stop
// the start rather than be warned about: a de-identification variable
// not read (DESTINATION_RESEARCH_STOW_DEIDENTIFIY) left its destination
// receiving the originals, identified.
func StopsStart(name string) bool { return deidentName.MatchString(name) }

// isRuleName reports whether name looks like a destination's routing
// rule, misspelt too: a name starting DEST (any case), so a misspelt
// prefix too (DESTINATIONS_AI_MATCH, DESTINATON_AI_MATCH,
// DESTINATIONAI_MATCH), with a word ('_' or '-' between words) that
// holds MATCH with two letters swapped (DESTINATION_AI_MACTH,
// destination_ai_instance_mtach, DESTINATION_AI_MATCHES), or that is
// MATCH with one letter left out or added (DESTINATION_AI_MATH, _MACH,
// _ATCH, _MATTCH). Those short forms count as a whole word only:
// DESTINATION_MACHINE_URL is a destination's, not a rule.
func isRuleName(name string) bool {
	upper := strings.ToUpper(name)
	if !strings.HasPrefix(upper, "DEST") {
		return false
	}
	for _, word := range strings.FieldsFunc(upper, func(r rune) bool { return r == '_' || r == '-' }) {
		if ruleWord.MatchString(word) || oneEditOf(word, "MATCH") {
			return true
		}
	}
	return false
}

// ruleWord matches a word holding MATCH, or it with two letters swapped
// or the last left out, anywhere in it (AIMATCH, MATCHES, MTACH).
var ruleWord = regexp.MustCompile(`MATC|MTCH|MACTH|MATHC|MTACH|AMTCH`)

// oneEditOf reports whether word is want with one letter left out or
// added, or two adjacent ones swapped; want itself too. Not one letter
// changed: BATCH, WATCH or PATCH may name a destination.
func oneEditOf(word, want string) bool {
	switch len(word) - len(want) {
	case 0:
		var diff []int
		for i := range word {
			if word[i] != want[i] {
				diff = append(diff, i)
			}
		}
		return len(diff) == 0 ||
			len(diff) == 2 && diff[1] == diff[0]+1 && word[diff[0]] == want[diff[1]] && word[diff[1]] == want[diff[0]]
	case 1:
		word, want = want, word
		fallthrough
	case -1:
		// word is want with one letter left out.
		for i := range want {
			if want[:i]+want[i+1:] == word {
				return true
			}
		}
	}
	return false
}

// UnreadRule returns, for name, a variable Unread returned for cfg, an
// error naming it and the destinations it could be for when it looks
// like a routing rule (isRuleName); nil otherwise. Such a variable must
// stop the start: a destination whose rule is not read takes every
// study, identified (DESTINATION_AI_MATCHES sent an AI vendor every
// modality).
func UnreadRule(name string, cfg any) error {
	d, ok := cfg.(interface{ DestinationList() []NamedDestination })
	if !ok || !isRuleName(name) {
		return nil
	}
	var named []NamedDestination
	for _, nd := range d.DestinationList() {
		if nd.Var != "" {
			named = append(named, nd)
		}
	}
	if len(named) == 0 {
		return fmt.Errorf("%s: set but not read, a routing rule with DESTINATIONS unset: only the destinations DESTINATIONS names have rules, and the one destination, %q, takes every study (docs/routing.md)", name, natsjs.DefaultDestination)
	}
	// The destinations whose name, letters and digits only, starts what
	// follows DESTINATION (AI2 for ai-2), or a misspelt prefix: DESTINATIONS,
	// or the first word (DESTINATON_); else every one.
	upper := alnumUpper(name)
	var rests []string
	if r, ok := strings.CutPrefix(upper, "DESTINATION"); ok {
		rests = append(rests, r)
		if r, ok := strings.CutPrefix(r, "S"); ok {
			rests = append(rests, r)
		}
	}
	if i := strings.IndexAny(name, "_-"); i >= 0 {
		rests = append(rests, alnumUpper(name[i+1:]))
	}
	var could []NamedDestination
	for _, rest := range rests {
		for _, nd := range named {
			if strings.HasPrefix(rest, alnumUpper(nd.Name)) {
				could = append(could, nd)
			}
		}
		if len(could) > 0 {
			break
		}
	}
	if len(could) == 0 {
		could = named
	}
	var dests []string
	for _, nd := range could {
		dests = append(dests, fmt.Sprintf("%q (%sMATCH, %sINSTANCE_MATCH)", nd.Name, nd.Var, nd.Var))
	}
	return fmt.Errorf("%s: set but not read: a misspelt routing rule, or one of a destination DESTINATIONS does not name (then remove it); "+
		"a destination whose rule is not read takes every study. Its destination could be %s", name, strings.Join(dests, " or "))
}

// alnumUpper is s in upper case, its letters and digits only.
func alnumUpper(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return -1
	}, s)
}
