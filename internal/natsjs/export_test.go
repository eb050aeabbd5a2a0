package natsjs

import "time"

// WithFirstStart returns t with a first start that lasts d.
func (t Topology) WithFirstStart(d time.Duration) Topology {
	t.firstStart = d
	return t
}

// WithClock returns t reading the time from now.
func (t Topology) WithClock(now func() time.Time) Topology {
	t.now = now
	return t
}

// WithRefusalClock has c's record of refused subjects read the time from
// now.
func (c *Conn) WithRefusalClock(now func() time.Time) {
	c.refused.mu.Lock()
	defer c.refused.mu.Unlock()
	c.refused.now = now
}

// WithPingInterval returns o with the keepalive pinging every d.
func (o ConnectOptions) WithPingInterval(d time.Duration) ConnectOptions {
	o.pingInterval = d
	return o
}

// WithFirstRetry returns o retrying its first connection after d.
func (o ConnectOptions) WithFirstRetry(d time.Duration) ConnectOptions {
	o.firstRetry = d
	return o
}

// URLsWithoutUser is urlsWithoutUser.
var URLsWithoutUser = urlsWithoutUser

// WaitCures is waitCures.
var WaitCures = waitCures
