package natsjs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestRetryRead: HeldAlone asked for each held event once, so one timeout
// or leader election during the audit failed the destination's whole
// read for the run. A transient failure is asked again, up to
// readAttempts times; any other answer is returned at once.
func TestRetryRead(t *testing.T) {
	leaderElection := &jetstream.APIError{Code: 503, ErrorCode: jsErrCodeClusterNotAvail, Description: "JetStream system temporarily unavailable"}
	for _, tt := range []struct {
		name    string
		answers []error // of the successive calls; nil: the read succeeds
		calls   int
		fails   error // errors.Is the returned error; nil: none
	}{
		{"first answer", []error{nil}, 1, nil},
		{"a timeout, then the answer", []error{context.DeadlineExceeded, nil}, 2, nil},
		{"no responders, then the answer", []error{fmt.Errorf("get: %w", nats.ErrNoResponders), nil}, 2, nil},
		{"a leader election, a nats timeout, then the answer", []error{leaderElection, nats.ErrTimeout, nil}, 3, nil},
		{"timeouts throughout", append(slices.Repeat([]error{context.DeadlineExceeded}, readAttempts), nil), readAttempts, context.DeadlineExceeded},
		{"no such event: not asked again", []error{jetstream.ErrMsgNotFound, nil}, 1, jetstream.ErrMsgNotFound},
		{"refused: not asked again", []error{nats.ErrPermissionViolation, nil}, 1, nats.ErrPermissionViolation},
	} {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			got, err := retryRead(t.Context(), 0, func(ctx context.Context) (int, error) {
				if _, ok := ctx.Deadline(); !ok {
					t.Error("a read without its own deadline")
				}
				calls++
				if err := tt.answers[calls-1]; err != nil {
					return 0, err
				}
				return 42, nil
			})
			if calls != tt.calls {
				t.Errorf("%d calls, want %d", calls, tt.calls)
			}
			if tt.fails == nil && (err != nil || got != 42) {
				t.Errorf("= %d, %v; want 42", got, err)
			}
			if tt.fails != nil && !errors.Is(err, tt.fails) {
				t.Errorf("err = %v, want %v", err, tt.fails)
			}
		})
	}
}

// TestRetryReadStopsWithItsContext: a read whose context ends is not
// asked again.
func TestRetryReadStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	calls := 0
	_, err := retryRead(ctx, 0, func(context.Context) (int, error) {
		calls++
		cancel()
		return 0, context.Canceled
	})
	if calls != 1 || !errors.Is(err, context.Canceled) {
		t.Errorf("%d calls, err %v; want 1 call, context.Canceled", calls, err)
	}
}

// TestSubjectCovers: nats-server's SubjectMatchesFilter, which
// aloneSubjects asks whether every subject matching the first (wildcards
// and all) matches the second, answers as it expects.
func TestSubjectCovers(t *testing.T) {
	for _, tt := range []struct {
		filter, subject string
		want            bool
	}{
		{">", "stowline.dest.ai.*", true},
		{"stowline.>", "stowline.dest.ai.*", true},
		{"stowline.dest.ai.*", "stowline.dest.ai.*", true},
		{"stowline.dest.*.*", "stowline.dest.ai.*", true},
		{"stowline.dest.ai.*", "stowline.dest.ai.main", true},
		{"stowline.dest.ai.main", "stowline.dest.ai.*", false},
		{"stowline.dest.ai.*", "stowline.dest.ai.>", false},
		{"stowline.dest.ai.*", "stowline.dest.ai.*.stat", false},
		{"stowline.dest.ai.*.stat", "stowline.dest.ai.*", false},
		{"stowline.dest.ai.>", "stowline.dest.ai", false},
		{"stowline.study.stable.*.low", "stowline.dest.ai.*", false},
		{"stowline.dest.pacs.*", "stowline.dest.ai.*", false},
	} {
		if got := server.SubjectMatchesFilter(tt.subject, tt.filter); got != tt.want {
			t.Errorf("SubjectMatchesFilter(%q, %q) = %v, want %v", tt.subject, tt.filter, got, tt.want)
		}
	}
}
