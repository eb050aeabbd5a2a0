package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/config"
	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/forward"
	"github.com/stowline/stowline/orthancapi"
	"github.com/stowline/stowline/stow"
)

// ForwarderDeps are the forwarder's outside connections, built from config.
type ForwarderDeps struct {
	Orthanc     *orthancapi.Client
	Destination *stow.Client
}

// SourceFor returns the one configured Orthanc, whatever the event's
// source name (several sources are configured by name in a later version).
func (d *ForwarderDeps) SourceFor(string) (forward.Source, error) { return d.Orthanc, nil }

// SourceReady reports whether Orthanc answers.
func (d *ForwarderDeps) SourceReady(ctx context.Context) error {
	if _, err := d.Orthanc.System(ctx); err != nil {
		return fmt.Errorf("orthanc: %w", err)
	}
	return nil
}

// NewForwarderDeps builds the Orthanc client and the STOW-RS client with
// its OAuth2 token source. ctx must live as long as the process: tokens
// are fetched with it.
func NewForwarderDeps(ctx context.Context, fc *config.Forwarder, reg prometheus.Registerer, log *slog.Logger) (*ForwarderDeps, error) {
	var oopts []orthancapi.Option
	if fc.OrthancUsername != "" {
		oopts = append(oopts, orthancapi.WithBasicAuth(fc.OrthancUsername, fc.OrthancPassword))
	}
	oc, err := orthancapi.New(fc.OrthancURL, oopts...)
	if err != nil {
		return nil, fmt.Errorf("ORTHANC_URL: %w", err)
	}

	transport := newDestinationTransport()
	var rt http.RoundTripper = transport
	if fc.OAuthTokenURL == "" {
		log.Warn("OAUTH_TOKEN_URL is empty: STOW-RS requests are sent without authentication", "dicomweb_url", fc.DICOMwebURL)
	} else {
		ts, err := auth.NewTokenSource(ctx, auth.Config{
			TokenURL:     fc.OAuthTokenURL,
			ClientID:     fc.OAuthClientID,
			ClientSecret: fc.OAuthClientSecret,
			Scopes:       fc.OAuthScopes,
		}, auth.WithHTTPClient(&http.Client{Timeout: 30 * time.Second, Transport: newDestinationTransport()}))
		if err != nil {
			return nil, fmt.Errorf("OAuth2 client credentials: %w", err)
		}
		rt = auth.Transport(ts, transport)
		log.Info("STOW-RS requests use OAuth2 client credentials", "token_url", fc.OAuthTokenURL, "client_id", fc.OAuthClientID)
	}
	dest, err := stow.New(fc.DICOMwebURL, &http.Client{Transport: rt})
	if err != nil {
		return nil, fmt.Errorf("DICOMWEB_URL: %w", err)
	}
	return &ForwarderDeps{Orthanc: oc, Destination: dest}, nil
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
