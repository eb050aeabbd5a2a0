// Package natsjs is stowline's JetStream: the connection (an embedded
// server in single-host mode, or an external cluster), and every stream
// and key-value bucket the services use, named and configured in one
// place (topology.go). The packages that keep data there (deadletter,
// ledger, reconcile, status) are handed the stream or bucket and never
// create one themselves.
package natsjs
