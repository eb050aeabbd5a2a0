package natsjs

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrStorageFull marks a write JetStream refused for want of storage: the
// server's max_file_store (by default three quarters of the disk free at
// its start), the account's storage limit, or a stream's or bucket's cap.
// Nothing was stored; the write succeeds again once space is freed.
var ErrStorageFull = errors.New("JetStream's storage is full (free space on the NATS server, or raise its max_file_store, the account's or the stream's limit)")

// JetStream's error codes for a refused write or stream (nats-server's
// errors.json).
const (
	errCodeAccountResources = 10002 // resource limits exceeded for account
	errCodeInsufficient     = 10023 // insufficient resources (the server's limits)
	errCodeMemoryResources  = 10028 // insufficient memory resources available
	errCodeStorageResources = 10047 // insufficient storage resources available
	errCodeStoreFailed      = 10077 // storing failed: {err}, a stream's cap among others
)

// StorageFull returns err wrapping ErrStorageFull when it is JetStream's
// refusal of a write for want of storage, err itself otherwise: the
// refusal's own text ("insufficient resources") does not say which
// resource, and operators took it for NATS being down.
func StorageFull(err error) error {
	var api *jetstream.APIError
	if err == nil || errors.Is(err, ErrStorageFull) || !errors.As(err, &api) {
		return err
	}
	switch api.ErrorCode {
	case errCodeAccountResources, errCodeInsufficient, errCodeStorageResources:
	case errCodeStoreFailed:
		// A stream's cap: nats-server's ErrMaxBytes, ErrMaxMsgs and, with
		// DiscardNewPerSubject, ErrMaxMsgsPerSubject.
		switch api.Description {
		case "maximum bytes exceeded", "maximum messages exceeded", "maximum messages per subject exceeded":
		default:
			return err
		}
	default:
		return err
	}
	return fmt.Errorf("%w: %w", ErrStorageFull, err)
}
