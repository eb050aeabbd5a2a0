package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/routing"
)

// Log configures the process's logger.
type Log struct {
	Level  string `env:"LOG_LEVEL" envDefault:"info" desc:"debug, info, warn or error"`
	Format string `env:"LOG_FORMAT" envDefault:"json" desc:"json (one object a line) or text"`
}

// Validate names the variable that is out of range.
func (l *Log) Validate() error {
	var errs []error
	switch strings.ToLower(l.Level) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("LOG_LEVEL=%q: want debug, info, warn or error", l.Level))
	}
	if l.Format != "json" && l.Format != "text" {
		errs = append(errs, fmt.Errorf("LOG_FORMAT=%q: want json or text", l.Format))
	}
	return errors.Join(errs...)
}

// NATS says where JetStream is and how the event stream is kept.
type NATS struct {
	URL             string        `env:"NATS_URL" desc:"NATS server URL(s), comma-separated (required by ingest and forwarder); empty: stowline runs an embedded JetStream server (single-host mode), whose store the forwarder's commands open while it is stopped"`
	CredsFile       string        `env:"NATS_CREDS_FILE" desc:"NATS credentials (.creds) file for an external server"`
	StoreDir        string        `env:"NATS_STORE_DIR" envDefault:"./data/nats" desc:"embedded JetStream storage directory (single-host mode)"`
	Replicas        int           `env:"NATS_REPLICAS" envDefault:"1" desc:"stream replicas: 1 on a single server, 3 on a JetStream cluster"`
	EventsRetention time.Duration `env:"EVENTS_RETENTION" envDefault:"168h" desc:"how long events stay in the stream, forwarded or not (replay window); at least the waits of a failing study's retries (7h0m30s with the forwarder defaults), so none expires before its dead letter"`
	DedupeWindow    time.Duration `env:"EVENTS_DEDUPE_WINDOW" envDefault:"24h" desc:"how long a repeated event for an unchanged study is dropped"`
	// NATSAuth: NKey, user/password and TLS to an external server (natsauth.go).
	NATSAuth
}

// Embedded reports whether this process must run its own JetStream server.
func (n *NATS) Embedded() bool { return n.URL == "" }

// Validate names the variable that is out of range.
func (n *NATS) Validate() error {
	var errs []error
	if n.Embedded() && n.StoreDir == "" {
		errs = append(errs, errors.New("NATS_STORE_DIR must not be empty when NATS_URL is empty (embedded JetStream)"))
	}
	if err := validateNATSURLs(n.URL); err != nil {
		errs = append(errs, err)
	}
	if n.Replicas < 1 || n.Replicas > 5 {
		errs = append(errs, fmt.Errorf("NATS_REPLICAS=%d: want 1 to 5", n.Replicas))
	}
	if n.Embedded() && n.Replicas != 1 {
		errs = append(errs, fmt.Errorf("NATS_REPLICAS=%d: the embedded JetStream server is a single node, want 1", n.Replicas))
	}
	if n.EventsRetention < time.Minute {
		errs = append(errs, fmt.Errorf("EVENTS_RETENTION=%s: want at least 1m", n.EventsRetention))
	}
	if n.DedupeWindow <= 0 || n.DedupeWindow > n.EventsRetention {
		errs = append(errs, fmt.Errorf("EVENTS_DEDUPE_WINDOW=%s: want more than 0 and at most EVENTS_RETENTION (%s)", n.DedupeWindow, n.EventsRetention))
	}
	if err := n.authValidate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// MaxIngestPublishTimeout is the longest INGEST_PUBLISH_TIMEOUT: the
// webhook must answer within the HTTP server's write timeout (60 s).
const MaxIngestPublishTimeout = 50 * time.Second

// Ingest configures the webhook service.
type Ingest struct {
	Addr  string `env:"INGEST_ADDR" envDefault:":8080" desc:"listen address of the webhook, health and metrics"`
	Token string `env:"INGEST_TOKEN,required" secret:"true" desc:"bearer token Orthanc's Lua script sends (at least 16 characters, with as many different ones as a quarter of its length, up to 8; a placeholder such as change-me… is refused, and so is a space or tab at either end or a second line, which HTTP cannot carry)"`
	// PreviousToken is accepted too while Orthanc servers move to Token.
	PreviousToken  string        `env:"INGEST_TOKEN_PREVIOUS" secret:"true" desc:"during a rotation of INGEST_TOKEN, the token it replaces, accepted too until every Orthanc sends the new one (stowline_ingest_previous_token_total stops growing); then remove it. Empty: none"`
	PublishTimeout time.Duration `env:"INGEST_PUBLISH_TIMEOUT" envDefault:"10s" desc:"how long a webhook waits for JetStream's acknowledgement before answering 503 (100ms to 50s)"`
	// WebhookSecurity: HMAC signatures and rate limit (webhook.go).
	WebhookSecurity
	// Priority: PRIORITY_RULE (lanes.go).
	Priority
}

// Validate names the variable that is out of range.
func (i *Ingest) Validate() error {
	var errs []error
	if err := validateAddr("INGEST_ADDR", i.Addr); err != nil {
		errs = append(errs, err)
	}
	if err := checkCredential("INGEST_TOKEN", i.Token, 16); err != nil {
		errs = append(errs, err)
	}
	if err := checkHeaderToken("INGEST_TOKEN", i.Token); err != nil {
		errs = append(errs, err)
	}
	if i.PreviousToken != "" {
		errs = append(errs, checkCredential("INGEST_TOKEN_PREVIOUS", i.PreviousToken, 16), checkHeaderToken("INGEST_TOKEN_PREVIOUS", i.PreviousToken))
		if i.PreviousToken == i.Token {
			errs = append(errs, errors.New("INGEST_TOKEN_PREVIOUS equals INGEST_TOKEN: give the new token as INGEST_TOKEN and the one it replaces as INGEST_TOKEN_PREVIOUS, or unset INGEST_TOKEN_PREVIOUS"))
		}
	}
	// The webhook answers 503 once the timeout passes: past the HTTP
	// server's write timeout (60 s) Orthanc would get a closed connection.
	if i.PublishTimeout < 100*time.Millisecond || i.PublishTimeout > MaxIngestPublishTimeout {
		errs = append(errs, fmt.Errorf("INGEST_PUBLISH_TIMEOUT=%s: want 100ms to 50s", i.PublishTimeout))
	}
	if err := i.WebhookSecurity.Validate(); err != nil {
		errs = append(errs, err)
	}
	// The signature then proves only what the bearer token does: whoever
	// holds the token could sign.
	if h := i.WebhookSecurity.HMACSecret; h != "" && (h == i.Token || h == i.PreviousToken) {
		errs = append(errs, errors.New("INGEST_HMAC_SECRET equals INGEST_TOKEN or INGEST_TOKEN_PREVIOUS: give the signing proxy a secret of its own"))
	}
	if _, err := routing.CompileStudyRule(i.Priority.Rule); err != nil {
		errs = append(errs, fmt.Errorf("PRIORITY_RULE: %w", err))
	}
	return errors.Join(errs...)
}

// MaxForwarderShutdownGrace is the longest FORWARDER_SHUTDOWN_GRACE: a
// stop held longer would rather hand the studies to another replica.
const MaxForwarderShutdownGrace = 60 * time.Minute

// Forwarder configures the workers that move studies to the destinations.
type Forwarder struct {
	Addr string `env:"FORWARDER_ADDR" envDefault:":8081" desc:"listen address of the forwarder's health and metrics"`
	// TrustedProxiesRaw is parsed into TrustedProxies by Validate.
	TrustedProxiesRaw []string `env:"FORWARDER_TRUSTED_PROXIES" envSeparator:"," desc:"reverse proxies in front of FORWARDER_ADDR (IP addresses or CIDR prefixes, comma-separated) whose X-Forwarded-For names the client for the admin API's wrong-token throttle and its logs; empty: the peer address is the client"`
	TrustedProxies    []netip.Prefix

	// Destination is the one destination of a deployment that names none
	// (DESTINATIONS unset): the destination called "default".
	Destination
	// Destinations: DESTINATIONS and the DESTINATION_<NAME>_ variables
	// (destinations.go).
	Destinations

	Concurrency   int           `env:"FORWARDER_CONCURRENCY" envDefault:"4" desc:"studies each forwarder process sends at once, per destination it serves"`
	AckWait       time.Duration `env:"FORWARDER_ACK_WAIT" envDefault:"60s" desc:"JetStream ack wait: a study a forwarder stops signalling progress on for this long goes to another replica; a live forwarder signals it every second (every third of the wait if that is shorter). On a JetStream cluster keep it well above an election (4 to 9 s): signals sent while a consumer has no leader are lost, and a shorter wait sends the studies in flight to another replica, which stores them a second time"`
	RetryDelay    time.Duration `env:"FORWARDER_RETRY_DELAY" envDefault:"10s" desc:"first delay before a failed study is retried; it doubles after each failed delivery up to FORWARDER_RETRY_MAX_DELAY, and each delay is drawn at random between half and all of that value"`
	RetryMaxDelay time.Duration `env:"FORWARDER_RETRY_MAX_DELAY" envDefault:"10m" desc:"longest delay between retries of a failed study, unless the destination's Retry-After asks for more (honoured up to an hour)"`

	MaxDeliveries       int           `env:"FORWARDER_MAX_DELIVERIES" envDefault:"48" desc:"deliveries of a study before it is dead-lettered; with the default delays the 47 waits between them add up to 3h30m to 7h (plus the attempts themselves); on a lane FORWARD_WINDOWS limits, retries due while it is closed wait for it to open, spreading them over days (low=02:00-02:30: about two weeks), and the start warns when that may pass EVENTS_RETENTION. 0: transient failures are never dead-lettered, and JetStream stops delivering the event after 1000 deliveries"`
	InstanceRetries     int           `env:"FORWARDER_INSTANCE_RETRIES" envDefault:"3" desc:"rounds, within one delivery, that re-send only the instances the destination refused transiently, or read again the ones the source Orthanc failed to read"`
	DeleteFromSource    bool          `env:"FORWARDER_DELETE_FROM_SOURCE" envDefault:"false" desc:"buffer mode: once a study is stored at the destination and acked, delete the instances that were forwarded from the source Orthanc (not when the study changed since its event); needs an Orthanc user allowed to delete"`
	DeadLetterRetention time.Duration `env:"DEADLETTER_RETENTION" envDefault:"720h" desc:"how long dead-lettered studies are kept for replay"`
	StoredRetention     time.Duration `env:"STORED_RECORD_RETENTION" envDefault:"8760h" desc:"how long the record of what stowline stored of a study (8 bytes an instance, 16 in buffer mode, per destination) is kept after its last write, at least EVENTS_RETENTION and DEADLETTER_RETENTION: a study sent again later (a late instance, a backfill, a replay) finds its instances already stored, and without the record takes those copies for conflicts (STOW_ON_CONFLICT); a start only raises it"`
	ShutdownGrace       time.Duration `env:"FORWARDER_SHUTDOWN_GRACE" envDefault:"30s" desc:"at a stop (SIGTERM), how long the studies in flight may go on before they go back to the queue, for another replica to send again whole (1s to 1h); past it the studies that finished are acked and recorded for up to 5s, NATS drains for up to 5s and traces flush for up to 5s, so the stop timeout of the process supervisor must be at least it plus 15s (Kubernetes terminationGracePeriodSeconds, docker stop_grace_period, systemd TimeoutStopSec)"`
	// Lanes: stat workers and FORWARD_WINDOWS (lanes.go).
	Lanes
}

// Validate names the variable that is out of range.
func (f *Forwarder) Validate() error {
	var errs []error
	if err := validateAddr("FORWARDER_ADDR", f.Addr); err != nil {
		errs = append(errs, err)
	}
	var err error
	if f.TrustedProxies, err = parseTrustedProxies("FORWARDER_TRUSTED_PROXIES", f.TrustedProxiesRaw); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, f.destinationsValidate())
	if f.Concurrency < 1 || f.Concurrency > 256 {
		errs = append(errs, fmt.Errorf("FORWARDER_CONCURRENCY=%d: want 1 to 256", f.Concurrency))
	}
	if f.AckWait < 3*time.Second {
		errs = append(errs, fmt.Errorf("FORWARDER_ACK_WAIT=%s: want at least 3s", f.AckWait))
	}
	if f.RetryDelay <= 0 || f.RetryMaxDelay < f.RetryDelay {
		errs = append(errs, fmt.Errorf("FORWARDER_RETRY_DELAY=%s, FORWARDER_RETRY_MAX_DELAY=%s: want 0 < delay <= max delay", f.RetryDelay, f.RetryMaxDelay))
	}
	if f.MaxDeliveries < 0 {
		errs = append(errs, fmt.Errorf("FORWARDER_MAX_DELIVERIES=%d: want 0 (no limit) or more", f.MaxDeliveries))
	}
	if f.InstanceRetries < 0 || f.InstanceRetries > 10 {
		errs = append(errs, fmt.Errorf("FORWARDER_INSTANCE_RETRIES=%d: want 0 to 10", f.InstanceRetries))
	}
	if f.ShutdownGrace < time.Second || f.ShutdownGrace > MaxForwarderShutdownGrace {
		errs = append(errs, fmt.Errorf("FORWARDER_SHUTDOWN_GRACE=%s: want 1s to %s", f.ShutdownGrace, MaxForwarderShutdownGrace))
	}
	if f.DeadLetterRetention < time.Hour {
		errs = append(errs, fmt.Errorf("DEADLETTER_RETENTION=%s: want at least 1h", f.DeadLetterRetention))
	}
	if f.StoredRetention < 24*time.Hour {
		errs = append(errs, fmt.Errorf("STORED_RECORD_RETENTION=%s: want at least 24h", f.StoredRetention))
	}
	if err := f.Lanes.Validate(); err != nil {
		errs = append(errs, err)
	}
	if f.DeleteFromSource && f.allDeidentify() {
		errs = append(errs, errors.New("FORWARDER_DELETE_FROM_SOURCE=true: every destination receives de-identified copies (STOW_DEIDENTIFY=basic), "+
			"so buffer mode would delete the only identified copy of each instance; add a destination that receives the originals, or turn buffer mode off"))
	}
	return errors.Join(errs...)
}

// allDeidentify reports whether no destination receives the originals.
func (f *Forwarder) allDeidentify() bool {
	for _, d := range f.DestinationList() {
		if !d.Deidentifies() {
			return false
		}
	}
	return true
}

// Destination is one DICOMweb destination's settings. The default
// destination reads them from the variables named here; a destination of
// DESTINATIONS from the same names with the prefix DESTINATION_<NAME>_
// (DICOMWEB_URL is DESTINATION_<NAME>_URL).
type Destination struct {
	DICOMwebURL string `env:"DICOMWEB_URL" desc:"DICOMweb base URL of the destination (required unless DESTINATIONS is set); STOW-RS goes to {DICOMWEB_URL}/studies"`

	OAuthTokenURL     string `env:"OAUTH_TOKEN_URL" desc:"generic: OAuth2 token endpoint (client credentials); empty (and no OAUTH_ISSUER_URL) sends requests without auth"`
	OAuthClientID     string `env:"OAUTH_CLIENT_ID" desc:"OAuth2 client ID (azure: the application ID, or a user-assigned managed identity's client ID)"`
	OAuthClientSecret string `env:"OAUTH_CLIENT_SECRET" secret:"true" desc:"OAuth2 client secret; given as OAUTH_CLIENT_SECRET_FILE, the file is read again for every token, so a rotated secret needs no restart"`
	OAuthScopes       List   `env:"OAUTH_SCOPES" desc:"OAuth2 scopes, separated by spaces or commas (azure default: https://dicom.healthcareapis.azure.com/.default; google default: https://www.googleapis.com/auth/cloud-healthcare)"`

	// OAuthClientSecretFile is OAUTH_CLIENT_SECRET_FILE, kept by
	// readDynamic for the token source to read again (OAuthClientSecret
	// holds what it held at startup).
	OAuthClientSecretFile string
	// DestinationAuth: the identity provider, its grant, token lifecycle
	// and TLS (destination.go).
	DestinationAuth

	StowMaxInstances int      `env:"STOW_MAX_INSTANCES" envDefault:"100" desc:"most instances in one STOW-RS request"`
	StowMaxBytes     ByteSize `env:"STOW_MAX_BYTES" envDefault:"256MiB" desc:"most bytes in one STOW-RS request (e.g. 500MB, 1GiB)"`
	StowParallel     int      `env:"STOW_PARALLEL_REQUESTS" envDefault:"16" desc:"most STOW-RS requests a forwarder process has in flight to the destination, over all its studies; the limit starts here and adapts below it (half tried once, more while throughput grows, halved on 429, 503 or a time-out) and is shared by the replicas serving the destination (each ceil(this / replicas), at least STOW_PARALLEL_MIN); equal to STOW_PARALLEL_MIN: fixed (docs/operations.md)"`
	StowParallelMin  int      `env:"STOW_PARALLEL_MIN" envDefault:"1" desc:"fewest STOW-RS requests in flight the adaptive limit goes down to (1 to STOW_PARALLEL_REQUESTS)"`
	// StowTransferSyntaxes: transfer syntaxes the destination accepts
	// (transfersyntax.go).
	StowTransferSyntaxes List `env:"STOW_TRANSFER_SYNTAXES" desc:"transfer syntax UIDs the destination accepts, comma-separated; an instance in another syntax is converted by Orthanc to the first lossless one of the list (docs/transfer-syntaxes.md). Empty: the STOW_PROFILE's list (azure, aws: docs/destinations.md), else any. Example: 1.2.840.10008.1.2.1,1.2.840.10008.1.2.4.70"`

	// Conflicts: what the destination is (profile.go) and what to do when
	// it already holds an instance with other content.
	StowProfile         string        `env:"STOW_PROFILE" desc:"what the destination is: azure, google, aws, orthanc or generic; sets its conflict answers, replace method, size limit and accepted transfer syntaxes (docs/destinations.md). Default: OAUTH_PROVIDER when that is azure, google or aws, else generic"`
	StowOnConflict      string        `env:"STOW_ON_CONFLICT" envDefault:"skip" desc:"when the destination already holds an instance with other content (a corrected study resent): skip (count it as stored, log and count the conflict), replace (the profile's STOW_REPLACE_METHOD) or deadletter (dead-letter the study at once, class conflict)"`
	StowConflictReasons ConflictRules `env:"STOW_CONFLICT_REASONS" desc:"Failure Reasons that mean a conflict, comma-separated: 45070, 0xB00E, or with @409 only in a 409 answer (0x0110@409, 0xA7xx@409). Default: the profile's (45070,0x0111,0x0110@409,0xA7xx@409)"`
	StowReplaceMethod   string        `env:"STOW_REPLACE_METHOD" desc:"how STOW_ON_CONFLICT=replace replaces an instance: put (STOW-RS with PUT, Azure's upsert), delete (DICOMweb DELETE of the instance, then store) or none. Default: the profile's (azure: put; aws and orthanc: none; google and generic: delete)"`
	StowVerify          string        `env:"STOW_VERIFY" envDefault:"off" desc:"off, or qido: after the STOW-RS answers of a study, ask the destination (QIDO-RS, one paged query a study) for the study's instances and ack only when it lists every SOP Instance UID sent; an unlisted instance is sent again. Buffer mode then deletes only listed instances (docs/verification.md)"`

	// Flow control (docs/operations.md, "Destination outages" and
	// "Bandwidth cap").
	StowBreakerFailures         int           `env:"STOW_BREAKER_FAILURES" envDefault:"5" desc:"consecutive study failures that say the destination is down (no answer: connection refused or reset, time-outs; HTTP 500, 502, 503, 504, 507, and 424 from Azure; instances refused for resources (0xA7xx) after the instance rounds; a success answer that is not DICOMweb; the token endpoint failing or refusing the credentials; the destination refusing every STOW-RS request: a redirect, 401 after a fresh token, 403, 404 or 405 without a STOW-RS answer) that open (after it closed, until a study is stored, for 30 min at most after a close on a stored study: the first such failure) its circuit breaker: the forwarder stops pulling its studies and holds those in hand, unsettled, so an outage spends no delivery; at most FORWARDER_MAX_DELIVERIES is used. 0: no breaker"`
	StowBreakerProbeInterval    time.Duration `env:"STOW_BREAKER_PROBE_INTERVAL" envDefault:"30s" desc:"how long an open circuit breaker waits before it probes the destination (one QIDO-RS query); doubled after each failed probe up to STOW_BREAKER_MAX_PROBE_INTERVAL"`
	StowBreakerMaxProbeInterval time.Duration `env:"STOW_BREAKER_MAX_PROBE_INTERVAL" envDefault:"5m" desc:"longest wait between probes of a destination that stays down"`
	StowMaxBytesPerSecond       ByteSize      `env:"STOW_MAX_BYTES_PER_SECOND" envDefault:"0" desc:"bandwidth cap of the STOW-RS request bodies to the destination, over every study of every replica that serves it: each replica takes an equal share of it, by the forwarders live on the status bucket (e.g. 10MB, 50MiB). 0: no cap"`

	// Deidentify: de-identified copies for the destination (deidentify.go).
	Deidentify
}

// Values of STOW_VERIFY.
const (
	VerifyOff  = "off"
	VerifyQIDO = "qido"
)

// Verifies reports whether the destination's instances are checked over
// QIDO-RS after they were stored (STOW_VERIFY=qido).
func (d *Destination) Verifies() bool { return d.StowVerify == VerifyQIDO }

// validate checks the destination's settings; the errors name the default
// destination's variables (NamedDestination.rename renames them).
func (d *Destination) validate() error {
	var errs []error
	// There is no basic auth to a destination: pointing to variables
	// that do not exist would have them set, ignored, and every study
	// sent without credentials.
	if err := validateHTTPURL("DICOMWEB_URL", d.DICOMwebURL, destinationCredentials); err != nil {
		errs = append(errs, err)
	} else if u, _ := url.Parse(d.DICOMwebURL); path.Base(strings.TrimRight(u.Path, "/")) == "studies" {
		// The STOW-RS endpoint of a provider's example: every request
		// would go to .../studies/studies and every study fail.
		errs = append(errs, fmt.Errorf("DICOMWEB_URL=%q: want the DICOMweb base URL, without /studies: STOW-RS goes to {DICOMWEB_URL}/studies", withoutSecrets(d.DICOMwebURL)))
	}
	if err := d.authValidate(); err != nil {
		errs = append(errs, err)
	}
	if d.StowParallel < 1 || d.StowParallel > 64 {
		errs = append(errs, fmt.Errorf("STOW_PARALLEL_REQUESTS=%d: want 1 to 64", d.StowParallel))
	} else if d.StowParallelMin < 1 || d.StowParallelMin > d.StowParallel {
		errs = append(errs, fmt.Errorf("STOW_PARALLEL_MIN=%d: want 1 to STOW_PARALLEL_REQUESTS (%d)", d.StowParallelMin, d.StowParallel))
	}
	if d.StowMaxInstances < 1 {
		errs = append(errs, fmt.Errorf("STOW_MAX_INSTANCES=%d: want at least 1", d.StowMaxInstances))
	}
	if d.StowMaxBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("STOW_MAX_BYTES=%s: want at least 1MiB", d.StowMaxBytes))
	}
	if err := validateTransferSyntaxes(d.StowTransferSyntaxes); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, d.conflictValidate()...)
	if d.StowVerify != VerifyOff && d.StowVerify != VerifyQIDO {
		errs = append(errs, fmt.Errorf("STOW_VERIFY=%q: want off or qido", d.StowVerify))
	}
	if d.StowBreakerFailures < 0 || d.StowBreakerFailures > 1000 {
		errs = append(errs, fmt.Errorf("STOW_BREAKER_FAILURES=%d: want 0 (no breaker) to 1000", d.StowBreakerFailures))
	}
	if d.StowBreakerProbeInterval < time.Second || d.StowBreakerMaxProbeInterval < d.StowBreakerProbeInterval {
		errs = append(errs, fmt.Errorf("STOW_BREAKER_PROBE_INTERVAL=%s, STOW_BREAKER_MAX_PROBE_INTERVAL=%s: want 1s <= interval <= max interval",
			d.StowBreakerProbeInterval, d.StowBreakerMaxProbeInterval))
	}
	if d.StowMaxBytesPerSecond != 0 && d.StowMaxBytesPerSecond < 1<<10 {
		errs = append(errs, fmt.Errorf("STOW_MAX_BYTES_PER_SECOND=%s: want 0 (no cap) or at least 1KiB", d.StowMaxBytesPerSecond))
	}
	errs = append(errs, d.Deidentify.validate()...)
	if d.Deidentifies() && d.StowOnConflict == OnConflictReplace {
		errs = append(errs, errors.New("STOW_ON_CONFLICT=replace cannot be used with STOW_DEIDENTIFY=basic yet: want skip or deadletter"))
	}
	// Checked here, not when the rewrite is set up: there it failed the
	// forwarder's start after NATS was provisioned, and forwarder check
	// passed it.
	if d.Deidentifies() && len(d.StowTransferSyntaxes) > 0 && !slices.ContainsFunc(d.StowTransferSyntaxes, deident.ReadsSyntax) {
		errs = append(errs, errors.New("STOW_TRANSFER_SYNTAXES lists only Explicit VR Big Endian or deflated syntaxes, which STOW_DEIDENTIFY=basic cannot write: add 1.2.840.10008.1.2.1"))
	}
	return errors.Join(errs...)
}

// validateAddr checks a listen address: host:port or :port, the port a
// number of 0 to 65535 (0: the system picks one, as net.Listen does).
// A service name (":http") is refused: it is a typo more often than not.
func validateAddr(name, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("%s=%q: want host:port or :port", name, addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%s=%q: port %q: want a number of 0 to 65535", name, addr, port)
	}
	return nil
}

// validateHTTPURL checks a URL stowline sends requests to: http or
// https, a host name (an empty one, "http://:8042", would dial
// localhost), a port of 1 to 65535 and no fragment. A query is allowed
// (a DICOMweb URL may carry an API key, ?code=...); validateOrthancURL
// refuses one. Credentials in it are refused, the error saying what
// authenticates to that server instead (instead). Errors never quote the
// query or user info.
func validateHTTPURL(name, raw, instead string) error {
	// url.Parse keeps a space in the path or query: a stray one at the
	// end sent every request to .../v1%20/studies, or a wrong API key.
	if i := strings.IndexFunc(raw, unicode.IsSpace); i >= 0 && strings.HasPrefix(strings.TrimLeftFunc(raw[i:], unicode.IsSpace), "#") {
		// systemd's EnvironmentFile and docker --env-file keep an inline
		// comment, copied from the README's examples, in the value.
		return fmt.Errorf("%s=%q: the URL is followed by an inline # comment, which systemd's EnvironmentFile and docker --env-file keep in the value: put the comment on a line of its own", name, withoutSecrets(raw))
	}
	if strings.ContainsFunc(raw, unicode.IsSpace) {
		return fmt.Errorf("%s=%q: the URL holds white space (a stray space at its end?); write one that belongs in it as %%20", name, withoutSecrets(raw))
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%s=%q: want an http:// or https:// URL", name, withoutSecrets(raw))
	}
	if u.User != nil {
		return fmt.Errorf("%s: credentials in the URL are not allowed; %s", name, instead)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%s=%q: the URL has no host name", name, withoutSecrets(raw))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("%s=%q: port %q: want 1 to 65535", name, withoutSecrets(raw), p)
		}
	}
	if strings.ContainsRune(raw, '#') {
		return fmt.Errorf("%s=%q: the URL must not have a fragment (#...)", name, withoutSecrets(raw))
	}
	return nil
}

// validateOrthancURL checks an Orthanc URL as orthancapi reads it: that
// of validateHTTPURL, without a query.
func validateOrthancURL(name, raw string) error {
	prefix := strings.TrimSuffix(name, "URL")
	if err := validateHTTPURL(name, raw, "set "+prefix+"USERNAME and "+prefix+"PASSWORD"); err != nil {
		return err
	}
	if strings.ContainsRune(raw, '?') {
		return fmt.Errorf("%s=%q: the URL must not have a query (?...)", name, withoutSecrets(raw))
	}
	return nil
}

// validateNATSURLs checks NATS_URL as nats.go reads it (comma-separated,
// nats:// when no scheme is given), so a typo is a configuration error
// whose message quotes no password (url.Parse's error quotes the URL).
func validateNATSURLs(raw string) error {
	if raw == "" {
		return nil
	}
	for entry := range strings.SplitSeq(raw, ",") {
		entry = strings.TrimSpace(entry)
		full := entry
		if !strings.Contains(full, "://") {
			full = "nats://" + full
		}
		u, err := url.Parse(full)
		if err != nil || u.Host == "" || u.Hostname() == "" || !slices.Contains([]string{"nats", "tls", "ws", "wss"}, u.Scheme) {
			return fmt.Errorf("NATS_URL=%q: want nats://host:port (or tls://, ws://, wss://), comma-separated", withoutSecrets(entry))
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
				return fmt.Errorf("NATS_URL=%q: port %q: want 1 to 65535", withoutSecrets(entry), p)
			}
		}
	}
	return nil
}

// withoutSecrets is a URL that did not parse, fit for an error: what may
// be user info (before the last @ after the scheme) and the query (an API
// key) are left out.
func withoutSecrets(raw string) string {
	// User info first: a password may hold a '?'.
	start := 0
	if j := strings.Index(raw, "://"); j >= 0 {
		start = j + 3
	}
	if at := strings.LastIndexByte(raw, '@'); at >= start {
		if strings.ContainsAny(raw[start:at], "?#") {
			// The @ may be the query's (an e-mail address): nothing
			// after the scheme can be told safe.
			return raw[:start] + "…"
		}
		raw = raw[:start] + "…" + raw[at:]
	}
	if q := strings.IndexByte(raw, '?'); q >= 0 {
		raw = raw[:q] + "?…"
	}
	return raw
}

// List is a list of words separated by commas or white space.
type List []string

// UnmarshalText splits on commas and white space, dropping empty words.
func (l *List) UnmarshalText(b []byte) error {
	*l = strings.FieldsFunc(string(b), func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n'
	})
	return nil
}

// ByteSize is a size in bytes written as 1048576, 500MB or 1GiB.
type ByteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

// UnmarshalText parses a number with an optional unit.
func (s *ByteSize) UnmarshalText(b []byte) error {
	text := strings.TrimSpace(string(b))
	mult := int64(1)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(text, u.suffix); ok {
			text, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return fmt.Errorf("%q is not a size (want e.g. 1048576, 500MB or 1GiB)", string(b))
	}
	*s = ByteSize(n * mult)
	return nil
}

func (s ByteSize) String() string {
	for _, u := range byteUnits[:4] {
		if s >= ByteSize(u.mult) && int64(s)%u.mult == 0 && int64(s)/u.mult < 1024 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}
