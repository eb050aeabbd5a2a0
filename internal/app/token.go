package app

import (
	"context"
	"fmt"
	"net/url"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/status"
)

// newTokenWatch returns the observer of the destination's token fetches
// (metrics labelled with the destination host, and the status page).
func newTokenWatch(fc *config.Forwarder, reg prometheus.Registerer) (*status.TokenWatch, error) {
	tokenHost, oauth := tokenEndpointHost(fc) // per OAUTH_PROVIDER (app/destination.go)
	return status.NewTokenWatch(urlHost(fc.DICOMwebURL), tokenHost, oauth, reg)
}

// urlHost is the host of a configured URL: a bounded label value that
// holds no path, query or credentials.
func urlHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	return u.Host
}

// TokenReady reports whether the destination's OAuth2 token can be
// obtained (the cached one, or a fresh one from the token endpoint);
// always ready without OAuth2.
func (d *ForwarderDeps) TokenReady(ctx context.Context) error {
	if d.Tokens == nil {
		return nil
	}
	if _, err := d.Tokens.TokenContext(ctx); err != nil {
		return fmt.Errorf("destination token: %w", err)
	}
	return nil
}
