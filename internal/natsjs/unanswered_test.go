package natsjs_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// Only a request JetStream did not answer is asked again: a refusal (full
// store, permissions, a refused value) would hold the worker for nothing.
func TestUnanswered(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{fmt.Errorf("ledger: %w", jetstream.ErrNoStreamResponse), true},
		{fmt.Errorf("ledger: %w", nats.ErrTimeout), true},
		{fmt.Errorf("ledger: %w", nats.ErrNoResponders), true},
		{fmt.Errorf("ledger: %w", context.DeadlineExceeded), true},
		{&jetstream.APIError{Code: 503, Description: "JetStream system temporarily unavailable"}, true},
		{fmt.Errorf("ledger: %w", natsjs.ErrStorageFull), false},
		{fmt.Errorf("ledger: %w", nats.ErrPermissionViolation), false},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}, false},
		{errors.New("ledger: invalid source or study ID"), false},
	} {
		if got := natsjs.Unanswered(tt.err); got != tt.want {
			t.Errorf("Unanswered(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
