package status

import "time"

// WithScrapeReuse replaces scrapeReuse, for tests that change JetStream
// between scrapes.
func WithScrapeReuse(d time.Duration) QueueOption {
	return func(c *QueueCollector) { c.reuse = d }
}
