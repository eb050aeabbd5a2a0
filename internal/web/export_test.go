package web

import "time"

// SetReplayTimeout shortens the status page's replay bound.
func SetReplayTimeout(h *StatusPage, d time.Duration) { h.replayTimeout = d }
