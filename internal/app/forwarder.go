package app

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/status"
)

// ForwarderDeps are the forwarder's outside connections, built from config.
type ForwarderDeps struct {
	Sources     *Sources
	Destination *dicomweb.Client
	// Tokens is the destination's OAuth2 token source, nil without OAuth2.
	Tokens *auth.TokenSource
	// TokenWatch observes its token fetches (metrics, status page).
	TokenWatch *status.TokenWatch
}

// SourceFor returns the Orthanc of the event's source. An unknown source
// is an error matching ErrUnknownSource, classified permanent: retrying
// cannot help, so the study is dead-lettered at once and can be replayed
// once the source is configured.
func (d *ForwarderDeps) SourceFor(name string) (forward.Source, error) {
	c, err := d.Sources.Lookup(name)
	if err != nil {
		return nil, &forward.Error{Class: forward.Permanent, Err: err}
	}
	return c, nil
}

// CleanerFor returns the Orthanc of the event's source for buffer mode.
func (d *ForwarderDeps) CleanerFor(name string) (forward.SourceCleaner, error) {
	return d.Sources.Lookup(name)
}

// SourceReady reports whether every Orthanc source answers.
func (d *ForwarderDeps) SourceReady(ctx context.Context) error { return d.Sources.Ready(ctx) }

// NewForwarderDeps builds the Orthanc clients and the STOW-RS client with
// its OAuth2 token source. ctx must live as long as the process: tokens
// are fetched with it.
func NewForwarderDeps(ctx context.Context, fc *config.Forwarder, oc *config.Orthanc, reg prometheus.Registerer, log *slog.Logger) (*ForwarderDeps, error) {
	sources, err := NewSources(oc)
	if err != nil {
		return nil, err
	}

	tw, err := newTokenWatch(fc, reg)
	if err != nil {
		return nil, err
	}
	// The provider, its credentials, TLS: app/destination.go.
	dest, err := newDestination(ctx, fc, tw.Observe, log)
	if err != nil {
		return nil, err
	}
	return &ForwarderDeps{Sources: sources, Destination: dest.STOW, Tokens: dest.Tokens, TokenWatch: tw}, nil
}

// newDestinationTransport is tuned for a few long uploads to one host:
// connections are reused, HTTP/2 is used where offered, and a server that
// never answers is noticed.
func newDestinationTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ExpectContinueTimeout: time.Second,
		// A STOW-RS response comes after the whole body is stored; a
		// large request can take minutes, so no ResponseHeaderTimeout.
	}
}

func ensureConsumer(ctx context.Context, js *JetStream, nc config.NATS, ackWait time.Duration) (jetstream.Consumer, error) {
	return events.EnsureConsumer(ctx, js.JS, Topology(nc, ackWait))
}
