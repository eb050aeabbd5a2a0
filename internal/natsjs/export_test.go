package natsjs

import "time"

// WithFirstStart returns t with a first start that lasts d.
func (t Topology) WithFirstStart(d time.Duration) Topology {
	t.firstStart = d
	return t
}
