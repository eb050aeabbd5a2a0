package config

import "errors"

// IngestService is what cmd/ingest reads.
type IngestService struct {
	Log
	NATS
	Ingest
}

// Validate checks every part; the errors name the variables.
func (c *IngestService) Validate() error {
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), requireExternalNATS(c.NATS), c.Ingest.Validate())
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
}

// Validate checks every part; the errors name the variables.
func (c *ForwarderService) Validate() error {
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), requireExternalNATS(c.NATS), c.Forwarder.Validate())
}

// SingleHost is what cmd/stowline reads: ingest and forwarder in one
// process, on an embedded JetStream server unless NATS_URL is set.
type SingleHost struct {
	Log
	NATS
	Ingest
	Forwarder
}

// Validate checks every part; the errors name the variables.
func (c *SingleHost) Validate() error {
	err := errors.Join(c.Log.Validate(), c.NATS.Validate(), c.Ingest.Validate(), c.Forwarder.Validate())
	if err == nil && c.Ingest.Addr == c.Forwarder.Addr {
		err = errors.New("INGEST_ADDR and FORWARDER_ADDR must differ")
	}
	return err
}

// LogConfig returns the logging part (commands build the logger from it).
func (c *IngestService) LogConfig() Log { return c.Log }

// LogConfig returns the logging part.
func (c *ForwarderService) LogConfig() Log { return c.Log }

// LogConfig returns the logging part.
func (c *SingleHost) LogConfig() Log { return c.Log }

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
