package app

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/orthancapi"
)

// checkUsage heads `forwarder check -h`.
const checkUsage = `Usage: forwarder check [--source NAME] [--destination NAME] [--timeout 30s]

Verifies each source Orthanc and each destination with the live
configuration, before any study flows (with --source or --destination,
only the ones named). A source gets one request with the forwarder's
credentials: GET {ORTHANC_URL}/system; then, for a random instance ID
that names no instance, so that nothing changes, the other requests the
configuration needs: DELETE /instances/{id} in buffer mode
(FORWARDER_DELETE_FROM_SOURCE=true), and where a destination converts
(a transfer syntax list or STOW_DEIDENTIFY) GET
/instances/{id}/metadata?expand and POST /instances/{id}/modify. Orthanc
answers 404 when the user may, 401 or 403 when it may not. A
destination: a credential is obtained the way the forwarder does (an OAuth2 token of OAUTH_PROVIDER,
or AWS credentials for Signature V4), its lifetime and scopes reported
(never the token), and one authenticated request sent:
GET {DICOMWEB_URL}/studies?limit=1. For each destination it prints
whether it receives de-identified copies (STOW_DEIDENTIFY) and, if so,
the fingerprint of its key, which every forwarder serving it logs at
start. It prints a verdict for each and exits non-zero when a check
fails. Like the forwarder, it refuses (exit 2) a variable set but not
read whose name looks like a de-identification setting
(STOW_DEIDENTIFIY) or a routing rule (DESTINATION_AI_MATCHES,
DESTINATION_AI2_MATCH for ai-2), and, with tracing on, an OTEL_* variable the
forwarder would refuse (docs/tracing.md). Logs go to stderr.

`

// RunCheck runs `forwarder check ARGS`.
// environ lists the variables getenv reads (os.Environ()), refused as the
// forwarder refuses them; nil skips that check.
func RunCheck(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) error {
	const program = "forwarder check"
	fs := flag.NewFlagSet(program, flag.ContinueOnError)
	timeout := fs.Duration("timeout", 30*time.Second, "bound on each step (credential, request), above 0")
	only := fs.String("destination", "", "check only this destination (and no source unless --source is set)")
	onlySource := fs.String("source", "", "check only this source Orthanc (and no destination unless --destination is set)")
	var cfg config.CheckCommand
	if done, err := parseCommand(fs, checkUsage, args, getenv, stdout, stderr, &cfg); done || err != nil {
		return err
	}
	if *timeout <= 0 {
		// Taken for "no limit", it expired every step at once, and each
		// source was reported down.
		return &usageError{fmt.Errorf("%s: --timeout %s: out of range: want a duration above 0 (e.g. 30s, the default)", program, *timeout)}
	}
	// The forwarder's own refusal: a check that passes a configuration
	// the forwarder will not start with misleads. Other unread variables
	// are not warned about: check reads fewer than the forwarder (not
	// NATS_, FORWARDER_ADDR), and would name the forwarder's.
	if _, err := unreadVariables(program, environ, &cfg); err != nil {
		return err
	}
	// Tracing variables the forwarder would refuse, for the same reason.
	if err := refuseTracingEnv(program, getenv); err != nil {
		return err
	}
	log := newLogger(stderr, cfg.Log)
	// The build heads the report: a check pasted into a ticket says which
	// forwarder ran it.
	fmt.Fprintf(stdout, "%-12s %s\n\n", "forwarder", readBuild())
	ctx, cancel := context.WithCancel(ctx) // stops background token refreshes on return
	defer cancel()
	var errs []error
	checked := 0 // verdicts printed, for the blank line between them
	if *onlySource != "" || *only == "" {
		sources, err := newSources(&cfg.Orthanc)
		if err != nil {
			return &usageError{fmt.Errorf("%s: invalid configuration: %w", program, err)}
		}
		// Buffer mode applies every destination's rules before it
		// deletes, those this forwarder does not serve too.
		ruled := cfg.Served()
		if cfg.DeleteFromSource {
			ruled = cfg.DestinationList()
		}
		probes := sourceProbes(cfg.DeleteFromSource, cfg.Served(), ruled)
		found := false
		for _, src := range sources.List() {
			if *onlySource != "" && src.Name != *onlySource {
				continue
			}
			found = true
			if checked++; checked > 1 {
				fmt.Fprintln(stdout)
			}
			if err := checkSource(ctx, stdout, src, *timeout, probes); err != nil {
				errs = append(errs, fmt.Errorf("source %s: %w", cmp.Or(src.Name, src.varName), err))
			}
		}
		if !found {
			return &usageError{fmt.Errorf("%s: --source %q is not a configured source: %s", program, *onlySource, sourceNames(sources))}
		}
	}
	if *only != "" || *onlySource == "" {
		found := false
		for _, d := range cfg.Served() {
			if *only != "" && d.Name != *only {
				continue
			}
			found = true
			if checked++; checked > 1 {
				fmt.Fprintln(stdout)
			}
			if err := checkDestination(ctx, stdout, d, *timeout, log); err != nil {
				errs = append(errs, fmt.Errorf("destination %s: %w", d.Name, err))
			}
		}
		if !found {
			return destinationNotFound(program, &cfg.Forwarder, *only)
		}
	}
	return errors.Join(errs...)
}

// sourceNames lists the configured sources' names for a usage error.
func sourceNames(s *Sources) string {
	var names []string
	for _, src := range s.List() {
		if src.Name != "" {
			names = append(names, src.Name)
		}
	}
	if len(names) == 0 {
		return "this configuration names no source (ORTHANC_URL without ORTHANC_SOURCE_NAME): run it without --source"
	}
	return "the sources are " + strings.Join(names, ", ")
}

// checkSource asks one source Orthanc for /system with the forwarder's
// credentials, then sends each probe, and prints its verdict.
func checkSource(ctx context.Context, stdout io.Writer, src Source, timeout time.Duration, probes []rightProbe) error {
	line := func(k, format string, args ...any) {
		fmt.Fprintf(stdout, "%-12s %s\n", k, fmt.Sprintf(format, args...))
	}
	title := redactURL(src.url) + " (" + src.varName + ")"
	if src.Name != "" {
		title = src.Name + " " + title
	}
	line("source", "%s", title)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	sys, err := src.Client.System(ctx)
	if err != nil {
		prefix := strings.TrimSuffix(src.varName, "URL")
		line("request", "GET /system: %v", err)
		hint := fmt.Sprintf("Orthanc does not answer: check %s and that this host reaches it", src.varName)
		if oe, ok := errors.AsType[*orthancapi.Error](err); ok && oe.NotFromOrthanc == "" && (oe.StatusCode == http.StatusUnauthorized || oe.StatusCode == http.StatusForbidden) {
			hint = fmt.Sprintf("Orthanc refuses the forwarder: check %sUSERNAME with %sPASSWORD or %sPASSWORD_FILE, and that user's rights", prefix, prefix, prefix)
		}
		line("verdict", "FAIL: %s", hint)
		return fmt.Errorf("%s: %w", hint, err)
	}
	line("request", "GET /system -> Orthanc %s, Name %q, in %s", sys.Version, sys.Name, time.Since(start).Round(time.Millisecond))
	var errs []error
	for _, p := range probes {
		if err := p.check(ctx, src, line); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		line("verdict", "OK")
	}
	return errors.Join(errs...)
}

// rightProbe is a request the forwarder needs from a source, sent for an
// instance that does not exist to learn whether its user may make it:
// Orthanc answers 404 when it may (a Lua IncomingHttpRequestFilter, an
// authorization plugin or a proxy decides before the instance is looked
// up), 401 or 403 when it may not, and changes nothing either way.
type rightProbe struct {
	request string // "DELETE /instances/{id}"
	may     string // what a 404 says: "the forwarder may delete (...)"
	needs   string // who needs it, for a refusal's verdict
	send    func(ctx context.Context, c *orthancapi.Client, id string) error
}

// sourceProbes are the rights the configuration needs beyond GET /system:
// DELETE in buffer mode (without it buffer mode would forward every study
// and fill Orthanc's disk all the same), the conversion requests of a
// destination that converts (a transfer syntax list, its profile's, or
// de-identification), which a least-privilege proxy allowing only GET
// would refuse for every instance, and the metadata those and routing
// rules reading an instance's SOP class, syntax or AE title need: the
// rules of ruled (the served destinations', every one's in buffer mode).
func sourceProbes(deletes bool, served, ruled []config.NamedDestination) []rightProbe {
	var probes []rightProbe
	if deletes {
		probes = append(probes, rightProbe{
			request: "DELETE /instances/{id}", may: "the forwarder may delete (FORWARDER_DELETE_FROM_SOURCE=true)",
			needs: "buffer mode (FORWARDER_DELETE_FROM_SOURCE=true) deletes forwarded instances with DELETE /instances/{id}",
			send:  func(ctx context.Context, c *orthancapi.Client, id string) error { return c.DeleteInstance(ctx, id) },
		})
	}
	var converting, routed []string
	for _, d := range served {
		if len(transferSyntaxes(&d)) > 0 || d.Deidentify.Deidentifies() {
			converting = append(converting, d.Name)
		}
	}
	for _, d := range ruled {
		// A rule that does not compile is the destination check's to
		// report.
		if r, err := newRoute(d, nil); err == nil && r != nil && (r.rules.Study.NeedsInstances() || r.rules.Instance.NeedsMetadata()) {
			routed = append(routed, d.Name)
		}
	}
	converts := fmt.Sprintf("destination %s converts instances (a transfer syntax list: STOW_TRANSFER_SYNTAXES or its STOW_PROFILE's, or STOW_DEIDENTIFY)", strings.Join(converting, ", "))
	var readers []string
	if len(converting) > 0 {
		readers = append(readers, converts)
	}
	if len(routed) > 0 {
		readers = append(readers, fmt.Sprintf("the routing rules of destination %s read an instance's SOP class, transfer syntax or calling AE title", strings.Join(routed, ", ")))
	}
	if len(readers) > 0 {
		probes = append(probes, rightProbe{
			request: "GET /instances/{id}/metadata?expand", may: "the forwarder may read an instance's metadata",
			needs: strings.Join(readers, ", and ") + ", read with GET /instances/{id}/metadata?expand",
			send: func(ctx context.Context, c *orthancapi.Client, id string) error {
				_, err := c.InstanceMetadata(ctx, id)
				return err
			},
		})
	}
	if len(converting) > 0 {
		probes = append(probes, rightProbe{
			request: "POST /instances/{id}/modify", may: "the forwarder may convert (Orthanc stores nothing)",
			needs: converts + " with POST /instances/{id}/modify, which stores nothing",
			send: func(ctx context.Context, c *orthancapi.Client, id string) error {
				r, err := c.OpenTranscodedInstance(ctx, id, "1.2.840.10008.1.2.1") // Explicit VR Little Endian
				if err == nil {
					r.Close()
				}
				return err
			},
		})
	}
	return probes
}

// check sends the probe to src and prints what its answer says.
func (p rightProbe) check(ctx context.Context, src Source, line func(k, format string, args ...any)) error {
	id, err := randomOrthancID()
	if err != nil {
		return err
	}
	request := strings.Replace(p.request, "{id}", id, 1)
	err = p.send(ctx, src.Client, id)
	if err == nil || errors.Is(err, orthancapi.ErrNotFound) {
		// nil: the random ID named an instance after all (a chance of
		// one in 2^160); the user may all the same.
		line("request", "%s (no such instance) -> not found: %s", request, p.may)
		return nil
	}
	line("request", "%s (no such instance): %v", request, err)
	method, _, _ := strings.Cut(p.request, " ")
	hint := "Orthanc did not answer the " + method + " check: " + p.needs
	if oe, ok := errors.AsType[*orthancapi.Error](err); ok && oe.NotFromOrthanc == "" && (oe.StatusCode == http.StatusUnauthorized || oe.StatusCode == http.StatusForbidden) {
		hint = fmt.Sprintf("Orthanc refuses %s to %sUSERNAME, and %s: allow it for that user (its Lua IncomingHttpRequestFilter, its authorization plugin or proxy)",
			method, strings.TrimSuffix(src.varName, "URL"), p.needs)
		if method == http.MethodDelete {
			hint += ", or turn buffer mode off"
		}
	}
	line("verdict", "FAIL: %s", hint)
	return fmt.Errorf("%s: %w", hint, err)
}

// randomOrthancID returns an ID in Orthanc's form (five groups of eight
// hex digits, a SHA-1) that names no resource.
func randomOrthancID() (string, error) {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random instance ID: %w", err)
	}
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:16] + "-" + h[16:24] + "-" + h[24:32] + "-" + h[32:40], nil
}

// destinationNotFound is the usage error of a --destination this process
// cannot use: one DESTINATIONS does not name, or one it names that other
// forwarders serve (FORWARDER_DESTINATIONS), whose settings this process
// does not read.
func destinationNotFound(program string, fc *config.Forwarder, name string) error {
	for _, d := range fc.DestinationList() {
		if d.Name == name {
			return &usageError{fmt.Errorf("%s: --destination %q is not served by this process (FORWARDER_DESTINATIONS=%s), which reads only the settings of the destinations it serves: "+
				"run it where %q is served, or with FORWARDER_DESTINATIONS unset", program, name, strings.Join(fc.Serve, ","), name)}
		}
	}
	return &usageError{fmt.Errorf("%s: --destination %q is not a configured destination", program, name)}
}

// checkDestination checks one destination and prints its verdict.
func checkDestination(ctx context.Context, stdout io.Writer, d config.NamedDestination, timeout time.Duration, log *slog.Logger) error {
	title := redactURL(d.DICOMwebURL)
	if d.Var != "" { // one of DESTINATIONS: say which
		title = d.Name + " " + title
	}
	dest, err := newDestination(ctx, &d, nil, nil, log.With("destination", d.Name))
	if err != nil {
		fmt.Fprintf(stdout, "%-12s %s\n%-12s FAIL: %v\n", "destination", title, "verdict", err)
		return err
	}
	fmt.Fprintf(stdout, "%-12s %s\n%-12s %s\n", "destination", title, "provider", describeAuth(dest))
	mode, err := describeDeidentify(&d)
	if err != nil {
		fmt.Fprintf(stdout, "%-12s FAIL: %v\n%-12s FAIL: %v\n", "deidentify", err, "verdict", err)
		return err
	}
	fmt.Fprintf(stdout, "%-12s %s\n", "deidentify", mode)
	report, err := dicomweb.Check(ctx, dicomweb.CheckOptions{
		BaseURL:    d.DICOMwebURL,
		VarName:    d.VarName,
		Client:     dest.HTTP,
		Credential: credentialCheck(dest, &d),
		Timeout:    timeout,
		// The forwarder's own searches, where they differ from the
		// check's: HealthImaging has no study-level instance search.
		SeriesSearch: d.Profile().SeriesSearch,
	})
	report.WriteText(stdout)
	return err
}

// describeDeidentify says whether d receives de-identified copies and,
// if so, the fingerprint of its key (never the key), to compare with the
// key_fingerprint its forwarders log at start.
func describeDeidentify(d *config.NamedDestination) (string, error) {
	if !d.Deidentifies() {
		return "off: the destination receives the originals (" + d.VarName("STOW_DEIDENTIFY") + ")", nil
	}
	k, err := keyer(d)
	if err != nil {
		return "", err
	}
	options := "none"
	if len(d.Options) > 0 {
		options = strings.Join(d.Options, ",")
	}
	return fmt.Sprintf("basic: de-identified copies, key fingerprint %s (%s), options %s, burned-in %s",
		k.Fingerprint(), d.VarName("DEIDENTIFY_KEY_FILE"), options, d.BurnedIn), nil
}

func describeAuth(d *destination) string {
	if d.Credential == "" {
		return d.Provider + " (no authentication)"
	}
	return d.Provider + " (" + d.Credential + ")"
}

// credentialCheck obtains the destination's credential as the forwarder
// would, and describes it.
func credentialCheck(d *destination, fc *config.NamedDestination) func(context.Context) (dicomweb.Credential, error) {
	switch {
	case d.Tokens != nil:
		return func(ctx context.Context) (dicomweb.Credential, error) {
			tok, err := d.Tokens.TokenContext(ctx)
			if err != nil {
				return dicomweb.Credential{}, err
			}
			info := auth.Inspect(tok, time.Now())
			return dicomweb.Credential{
				Kind: "OAuth2 " + info.Type + " token (" + d.Provider + ", " + d.Credential + ")", Source: redactURL(d.Tokens.TokenURL()),
				Lifetime: info.Lifetime, Expiry: info.Expiry, Scopes: info.Scopes, Roles: info.Roles, Audience: info.Audience,
				Requested: fc.OAuthScopes, Issuer: info.Issuer, ClientID: info.ClientID, OAuth: true,
			}, nil
		}
	case d.AWSCredentials != nil:
		return func(ctx context.Context) (dicomweb.Credential, error) {
			creds, err := d.AWSCredentials.Retrieve(ctx)
			if err != nil {
				return dicomweb.Credential{}, fmt.Errorf("AWS credential chain: %w", err)
			}
			c := dicomweb.Credential{Kind: "AWS credentials (" + d.Credential + ")", Source: "the SDK's chain: " + creds.Source}
			if creds.CanExpire {
				c.Expiry, c.Lifetime = creds.Expires, time.Until(creds.Expires)
			}
			return c, nil
		}
	}
	return nil
}
