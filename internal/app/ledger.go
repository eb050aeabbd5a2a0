package app

import (
	"context"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/ledger"
)

// completedRecorder returns the forwarder's Completed hook: it records
// every completed forward in the ledger bucket, which the audit reads.
func completedRecorder(ctx context.Context, js *JetStream, nc config.NATS) (func(context.Context, *events.StudyStable) error, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	l, err := ledger.Ensure(ctx, js.JS, nc.Replicas)
	if err != nil {
		return nil, err
	}
	return l.Record, nil
}
