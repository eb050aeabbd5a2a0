package config

import "errors"

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
		c.reconcileValidate(), c.Admin.Validate(), c.ListenTLS.Validate())
}

// reconcileValidate checks the reconciler and, when it runs or
// PRIORITY_RULE reads studies, the sources.
func (c *IngestService) reconcileValidate() error {
	var errs []error
	if c.Reconcile.Enabled {
		errs = append(errs, c.Reconcile.Validate())
	}
	if c.Reconcile.Enabled || c.Ingest.Priority.Rule != "" {
		errs = append(errs, c.Orthanc.Validate())
	}
	return errors.Join(errs...)
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
		c.Admin.Validate(), c.ListenTLS.Validate())
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
		c.Admin.Validate(), c.ListenTLS.Validate())
	if c.Reconcile.Enabled {
		err = errors.Join(err, c.Reconcile.Validate())
	}
	if err == nil && c.Ingest.Addr == c.Forwarder.Addr {
		err = errors.New("INGEST_ADDR and FORWARDER_ADDR must differ")
	}
	return err
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
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), requireExternalNATS(c.NATS), c.Orthanc.Validate())
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
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), requireExternalNATS(c.NATS))
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
