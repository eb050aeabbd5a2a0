package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// IngestService is what cmd/ingest reads: the webhook and, unless
// RECONCILE_ENABLED is false, the change-log reconciler of every Orthanc
// source.
type IngestService struct {
	Log
	NATS
	Ingest
	Reconcile
	Orthanc
	Admin
	ListenTLS
}

// Validate checks every part; the errors name the variables.
func (c *IngestService) Validate() error {
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), requireExternalNATS(c.NATS), c.Ingest.Validate(),
		c.reconcileValidate(), c.Orthanc.ruleNamesSources("PRIORITY_RULE", c.Ingest.Priority.Rule),
		c.Admin.Validate(), c.Admin.apartFrom(&c.Ingest), c.ListenTLS.Validate(), replayWindow(&c.NATS, &c.Ingest))
}

// reconcileValidate checks the reconciler and, when it runs or
// PRIORITY_RULE reads studies, the sources.
func (c *IngestService) reconcileValidate() error {
	var errs []error
	if c.Reconcile.Enabled {
		errs = append(errs, c.Reconcile.Validate(), c.Reconcile.adoptsFromOwn(&c.Orthanc))
	}
	if ReadsOrthanc(&c.Ingest.Priority, &c.Reconcile) {
		errs = append(errs, c.Orthanc.Validate())
	}
	return errors.Join(errs...)
}

// ReadsOrthanc reports whether the ingest reads the Orthanc sources: its
// reconciler polls them, or PRIORITY_RULE reads their studies. On a
// single host the forwarder's destinations then leave it a request slot.
func ReadsOrthanc(p *Priority, r *Reconcile) bool {
	return r.Enabled || p.Rule != ""
}

// requireExternalNATS refuses an embedded server for the separate
// commands: an ingest and a forwarder each with its own embedded server
// would never see each other's events.
func requireExternalNATS(n NATS) error {
	if n.Embedded() {
		return errors.New("NATS_URL is required (a separate ingest or forwarder needs a shared NATS server; for a single host run cmd/stowline, which embeds one)")
	}
	return nil
}

// requireNATSOrStore is for the operator's commands (replay,
// destinations, audit, backfill): the deployment's NATS server, or, with
// NATS_URL empty, the store of a single host's embedded server, which
// listens on no port (the command opens it while stowline is stopped).
// A directory holding no store is refused rather than made into an
// empty one, where a forgotten NATS_URL would find no dead letters and
// no consumers.
func requireNATSOrStore(n NATS) error {
	if !n.Embedded() || n.StoreDir == "" {
		return nil
	}
	if fi, err := os.Stat(filepath.Join(n.StoreDir, "jetstream")); err == nil && fi.IsDir() {
		return nil
	}
	return fmt.Errorf("NATS_URL is required (the deployment's NATS server), or, on a single host, NATS_STORE_DIR naming the store of stowline's embedded server, stopped first (no JetStream store in %s)", n.StoreDir)
}

// ForwarderService is what cmd/forwarder reads.
type ForwarderService struct {
	Log
	NATS
	Forwarder
	Orthanc
	Admin
	ListenTLS
}

// Validate checks every part; the errors name the variables.
func (c *ForwarderService) Validate() error {
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), requireExternalNATS(c.NATS), c.Forwarder.Validate(), c.Orthanc.Validate(),
		c.Forwarder.rulesNameSources(&c.Orthanc), c.Orthanc.capsLeaveEachASlot(c.Forwarder.Served(), false),
		c.Admin.Validate(), c.ListenTLS.Validate(), retentionCoversRetries(c.NATS, c.Forwarder))
}

// retentionCoversRetries refuses an event stream that drops a failing
// study's event while it waits for its next delivery: JetStream removes
// it by age, with no dead letter and no advisory.
func retentionCoversRetries(n NATS, f Forwarder) error {
	if f.MaxDeliveries == 0 || f.RetryDelay <= 0 || f.RetryMaxDelay < f.RetryDelay {
		return nil
	}
	if retryWaits(f, n.EventsRetention) > n.EventsRetention {
		return fmt.Errorf("EVENTS_RETENTION=%s: shorter than the waits of a failing study before its dead letter "+
			"(FORWARDER_MAX_DELIVERIES=%d deliveries, FORWARDER_RETRY_DELAY=%s doubling up to FORWARDER_RETRY_MAX_DELAY=%s), "+
			"so its event would expire unseen; want a longer retention, fewer deliveries or shorter delays",
			n.EventsRetention, f.MaxDeliveries, f.RetryDelay, f.RetryMaxDelay)
	}
	return nil
}

// retryWaits is the longest a failing study waits, in all, between its
// deliveries (each delay is drawn at most at its nominal value), counted
// until it passes limit (so a huge setting neither loops long nor
// overflows).
func retryWaits(f Forwarder, limit time.Duration) time.Duration {
	var waits time.Duration
	d := f.RetryDelay
	for range f.MaxDeliveries - 1 {
		waits += d
		if waits > limit {
			break
		}
		d = min(2*d, f.RetryMaxDelay)
	}
	return waits
}

// RetentionWarning says, naming the variables, when a lane's
// FORWARD_WINDOWS may spread a failing study's deliveries past
// retention (EVENTS_RETENTION), its event then expiring before its dead
// letter; nil otherwise. A warning at start, not a refusal as
// retentionCoversRetries: it is an estimate, and the stream alerts
// (StowlineEventsNearRetention) before an event expires.
func (f *Forwarder) RetentionWarning(retention time.Duration) error {
	lane, waits := f.windowedRetryWaits(retention)
	if waits < retention {
		return nil
	}
	return fmt.Errorf("EVENTS_RETENTION=%s: a failing study of the %s lane, pulled only in its FORWARD_WINDOWS hours (%s), "+
		"may take %s or more between its first delivery and its last (FORWARDER_MAX_DELIVERIES=%d, FORWARDER_RETRY_DELAY=%s doubling up to "+
		"FORWARDER_RETRY_MAX_DELAY=%s, each retry due while the lane is closed waiting for it to open), so its event may expire before "+
		"its dead letter; want a longer EVENTS_RETENTION, longer windows or fewer deliveries",
		retention, lane, f.Windows.String(), waits.Round(time.Hour), f.MaxDeliveries, f.RetryDelay, f.RetryMaxDelay)
}

// windowedRetryWaits is, of the lanes FORWARD_WINDOWS limits, the one
// whose failing study spans its deliveries the longest, and that span:
// a retry due while its lane is closed waits for the lane to open, so a
// short window spreads the deliveries over days. Each delay counts at
// its nominal value, from the worst minute of the lane's windows to
// start in; the attempts themselves and the wait in the queue before
// the first come on top. Counted until the span passes limit. "" and 0
// without windows or without a dead letter (FORWARDER_MAX_DELIVERIES=0).
func (f *Forwarder) windowedRetryWaits(limit time.Duration) (lane string, waits time.Duration) {
	if f.MaxDeliveries == 0 || f.RetryDelay <= 0 || f.RetryMaxDelay < f.RetryDelay {
		return "", 0
	}
	for _, l := range []string{"stat", "routine", "low"} {
		ws, limited := f.Windows[l]
		if !limited {
			continue
		}
		if w := windowedWaits(f, ws, limit); w > waits {
			lane, waits = l, w
		}
	}
	return lane, waits
}

// maxWindowedSteps bounds windowedWaits' work for a setting of very many
// deliveries with tiny delays: what it counted by then is a lower bound.
const maxWindowedSteps = 1 << 21

// windowedWaits is the longest span of a failing study's deliveries in a
// lane pulled only in ws, over the minutes of the day it may start in.
func windowedWaits(f *Forwarder, ws []DailyWindow, limit time.Duration) time.Duration {
	open := func(t time.Duration) bool {
		m := int(t/time.Minute) % minutesPerDay
		return slices.ContainsFunc(ws, func(w DailyWindow) bool { return w.Contains(m) })
	}
	// opens is t, or the start of the next window after it.
	opens := func(t time.Duration) time.Duration {
		if open(t) {
			return t
		}
		m := int(t / time.Minute)
		next := minutesPerDay
		for _, w := range ws {
			next = min(next, (w.From-m%minutesPerDay+minutesPerDay)%minutesPerDay)
		}
		return time.Duration(m+next) * time.Minute
	}
	var longest time.Duration
	steps := 0
	for m := range minutesPerDay {
		start := time.Duration(m) * time.Minute
		if !open(start) {
			continue
		}
		t, d := start, f.RetryDelay
		for range f.MaxDeliveries - 1 {
			t = opens(t + d)
			d = min(2*d, f.RetryMaxDelay)
			if steps++; t-start > limit || steps > maxWindowedSteps {
				break
			}
		}
		longest = max(longest, t-start)
		if longest > limit || steps > maxWindowedSteps {
			break
		}
	}
	return longest
}

// SingleHost is what cmd/stowline reads: ingest, reconciler and forwarder
// in one process, on an embedded JetStream server unless NATS_URL is set.
type SingleHost struct {
	Log
	NATS
	Ingest
	Reconcile
	Forwarder
	Orthanc
	Admin
	ListenTLS
}

// Validate checks every part; the errors name the variables.
func (c *SingleHost) Validate() error {
	err := errors.Join(c.Log.Validate(), c.NATS.Validate(), c.Ingest.Validate(), c.Forwarder.Validate(), c.Orthanc.Validate(),
		c.Forwarder.rulesNameSources(&c.Orthanc), c.Orthanc.ruleNamesSources("PRIORITY_RULE", c.Ingest.Priority.Rule),
		c.Orthanc.capsLeaveEachASlot(c.Forwarder.Served(), ReadsOrthanc(&c.Ingest.Priority, &c.Reconcile)),
		c.Admin.Validate(), c.Admin.apartFrom(&c.Ingest), c.ListenTLS.Validate(), replayWindow(&c.NATS, &c.Ingest))
	if c.Reconcile.Enabled {
		err = errors.Join(err, c.Reconcile.Validate(), c.Reconcile.adoptsFromOwn(&c.Orthanc))
	}
	if err == nil && c.Ingest.Addr == c.Forwarder.Addr {
		err = errors.New("INGEST_ADDR and FORWARDER_ADDR must differ")
	}
	if err == nil && c.NATS.Embedded() {
		// No other process reaches the embedded server: a destination
		// this one does not serve would queue its studies for nobody.
		var unserved []string
		for _, d := range c.DestinationList() {
			if !c.Forwarder.serves(d.Name) {
				unserved = append(unserved, d.Name)
			}
		}
		if len(unserved) > 0 {
			err = fmt.Errorf("FORWARDER_DESTINATIONS=%s leaves %s unserved, and with the embedded JetStream server (NATS_URL empty) no other forwarder can serve it: "+
				"leave FORWARDER_DESTINATIONS empty, or set NATS_URL to a shared NATS server", strings.Join(c.Serve, ","), strings.Join(unserved, ", "))
		}
	}
	return errors.Join(err, retentionCoversRetries(c.NATS, c.Forwarder))
}

// Audit is what `forwarder audit` reads: it compares the studies in every
// Orthanc source with the completed forwards recorded in JetStream.
type Audit struct {
	Log
	NATS
	Orthanc
}

// Validate checks every part; the errors name the variables.
func (c *Audit) Validate() error {
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), requireNATSOrStore(c.NATS), c.Orthanc.Validate())
}

// LogConfig returns the logging part (commands build the logger from it).
func (c *IngestService) LogConfig() Log { return c.Log }

// LogConfig returns the logging part.
func (c *ForwarderService) LogConfig() Log { return c.Log }

// LogConfig returns the logging part.
func (c *SingleHost) LogConfig() Log { return c.Log }

// LogConfig returns the logging part.
func (c *Audit) LogConfig() Log { return c.Log }

// ReplayCommand is what `forwarder replay` reads: it works on the shared
// NATS server of a running deployment.
type ReplayCommand struct {
	Log
	NATS
}

// Validate checks every part; the errors name the variables.
func (c *ReplayCommand) Validate() error {
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), requireNATSOrStore(c.NATS))
}

// LogConfig returns the logging part.
func (c *ReplayCommand) LogConfig() Log { return c.Log }

// readDynamic reads the variables named by ORTHANC_SOURCES and
// DESTINATIONS.
func (c *ForwarderService) readDynamic(getenv func(string) string) error {
	return errors.Join(c.Orthanc.readDynamic(getenv), c.Forwarder.readDynamic(getenv))
}

// readDynamic reads the variables named by ORTHANC_SOURCES and
// DESTINATIONS.
func (c *SingleHost) readDynamic(getenv func(string) string) error {
	return errors.Join(c.Orthanc.readDynamic(getenv), c.Forwarder.readDynamic(getenv))
}

// replayWindow refuses, with INGEST_HMAC_SECRET, an EVENTS_DEDUPE_WINDOW
// shorter than twice INGEST_HMAC_MAX_SKEW: a request signed at T is
// accepted while the ingest's clock is within the skew either side of T,
// so a copy taken off the wire may be replayed up to twice the skew after
// the original was stored; past the dedupe window its event is no longer
// dropped as a duplicate, and replaying it queued the study again.
func replayWindow(n *NATS, i *Ingest) error {
	if i.HMACSecret == "" || n.DedupeWindow >= 2*i.HMACMaxSkew {
		return nil
	}
	return fmt.Errorf("EVENTS_DEDUPE_WINDOW=%s is shorter than twice INGEST_HMAC_MAX_SKEW=%s (%s): a signed request is accepted while the ingest's clock is within the skew either side of its timestamp, so a copy replayed up to %s after the original would queue its study again; raise EVENTS_DEDUPE_WINDOW or lower INGEST_HMAC_MAX_SKEW", n.DedupeWindow, i.HMACMaxSkew, 2*i.HMACMaxSkew, 2*i.HMACMaxSkew)
}
