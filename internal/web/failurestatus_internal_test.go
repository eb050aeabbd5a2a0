package web

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
)

// A dead-letter operation that retrying cannot help answers 409: letters
// of a message kept in part or that this build cannot decode, which a
// replay passes over (it answered 503, "try again", for good), and a
// destination without a consumer, a re-forward over events of a newer
// ingest; NATS not answering is 503, also beside one of those.
func TestFailureStatus(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("replay: 12, 14: %w", deadletter.ErrPartialLetters), http.StatusConflict},
		{fmt.Errorf("replay: 15: %w", deadletter.ErrUnreadableLetters), http.StatusConflict},
		{errors.Join(fmt.Errorf("replay: 12: %w", deadletter.ErrPartialLetters), fmt.Errorf("replay: 15: %w", deadletter.ErrUnreadableLetters)), http.StatusConflict},
		{fmt.Errorf("replay: %w", deadletter.ErrNoConsumer), http.StatusConflict},
		{fmt.Errorf("reforward: 2 events of a newer ingest (event 7: %w)", events.ErrNewerVersion), http.StatusConflict},
		{errors.New("nats: timeout"), http.StatusServiceUnavailable},
		// A re-forward failed part-way over a window holding a newer
		// ingest's events: the failure may pass on a retry.
		{errors.Join(fmt.Errorf("reforward event 101: %w", errors.New("nats: timeout")),
			fmt.Errorf("reforward: 2 events of a newer ingest (event 7: %w)", events.ErrNewerVersion)), http.StatusServiceUnavailable},
	} {
		if got := failureStatus(tt.err); got != tt.want {
			t.Errorf("%v: status %d, want %d", tt.err, got, tt.want)
		}
	}
}
