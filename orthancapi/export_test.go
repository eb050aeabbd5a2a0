package orthancapi

// SetMaxJSONElementBytes replaces c's bound on one element of a JSON
// array answer, so that tests refuse one without sending megabytes.
func SetMaxJSONElementBytes(c *Client, n int64) { c.maxJSONElementBytes = n }
