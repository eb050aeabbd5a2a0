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
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), c.Ingest.Validate())
}

// ForwarderService is what cmd/forwarder reads.
type ForwarderService struct {
	Log
	NATS
	Forwarder
}

// Validate checks every part; the errors name the variables.
func (c *ForwarderService) Validate() error {
	return errors.Join(c.Log.Validate(), c.NATS.Validate(), c.Forwarder.Validate())
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
