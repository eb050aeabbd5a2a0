package faultproxy

import (
	"io"
	"slices"
	"sync"
	"time"
)

// bodyMeter measures the STOW request bodies that pass: bytes, and when
// each body's bytes arrived.
type bodyMeter struct {
	mu        sync.Mutex
	bytes     int64
	intervals [][2]time.Time
}

// meteredBody counts what the destination reads of one request body.
type meteredBody struct {
	r           io.ReadCloser
	m           *bodyMeter
	first, last time.Time
	n           int64
	once        sync.Once
}

func (b *meteredBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		now := time.Now()
		if b.first.IsZero() {
			b.first = now
		}
		b.last, b.n = now, b.n+int64(n)
	}
	if err != nil {
		b.done()
	}
	return n, err
}

func (b *meteredBody) Close() error {
	b.done()
	return b.r.Close()
}

func (b *meteredBody) done() {
	b.once.Do(func() {
		if b.n == 0 {
			return
		}
		b.m.mu.Lock()
		defer b.m.mu.Unlock()
		b.m.bytes += b.n
		b.m.intervals = append(b.m.intervals, [2]time.Time{b.first, b.last})
	})
}

// BodyRate returns the bytes of the STOW request bodies that passed and
// the time some body was arriving (the union over the requests of the
// time from each one's first byte to its last): bytes/busy is the rate
// the destination received while stowline was sending.
func (p *Proxy) BodyRate() (bytes int64, busy time.Duration) {
	m := &p.meter
	m.mu.Lock()
	defer m.mu.Unlock()
	iv := slices.Clone(m.intervals)
	slices.SortFunc(iv, func(a, b [2]time.Time) int { return a[0].Compare(b[0]) })
	var end time.Time
	for _, in := range iv {
		switch {
		case end.IsZero() || in[0].After(end):
			busy += in[1].Sub(in[0])
			end = in[1]
		case in[1].After(end):
			busy += in[1].Sub(end)
			end = in[1]
		}
	}
	return m.bytes, busy
}
