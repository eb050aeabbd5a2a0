package dicomweb

import (
	"fmt"
	"time"
)

// The Client's options only tests set.

// withTimeouts replaces the stall and response time-outs, for tests.
func withTimeouts(stall, response time.Duration) Option {
	return func(c *Client) error {
		c.stallTimeout, c.responseTimeout = stall, response
		return nil
	}
}

// withMaxResponseBytes bounds the response body the client reads to n
// (default defaultMaxResponseBytes, raised by answerBytesPerInstance for
// a STOW-RS request of many instances). A larger success response fails
// with errResponseTooLarge; a larger error response is cut.
func withMaxResponseBytes(n int64) Option {
	return func(c *Client) error {
		if n <= 0 {
			return fmt.Errorf("stow: max response bytes must be positive, got %d", n)
		}
		c.maxResponseBytes, c.perInstance = n, 0
		return nil
	}
}

// withBufferSize sets the size of the pooled copy buffer (default
// DefaultBufferSize).
func withBufferSize(n int) Option {
	return func(c *Client) error {
		if n < 512 {
			return fmt.Errorf("stow: buffer size must be at least 512, got %d", n)
		}
		c.bufferSize = n
		return nil
	}
}

// withBoundaryFunc replaces newBoundary, for tests. Store does not search
// the content for the delimiter (see boundaryRandomBytes): a boundary that
// is not newBoundary's may be cut short by the content.
func withBoundaryFunc(f func() (string, error)) Option {
	return func(c *Client) error {
		if f == nil {
			return fmt.Errorf("stow: nil boundary func")
		}
		c.newBoundary = f
		return nil
	}
}
