// Package google gets Google OAuth2 access tokens for the Cloud Healthcare
// API's DICOMweb: with a service-account JSON key through the JWT-bearer
// grant (RFC 7523 §2.1, golang.org/x/oauth2/google), or from the metadata
// server of the GCE VM or GKE node (workload identity) when no key file is
// given. Google service accounts cannot use the client-credentials grant.
package google

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"golang.org/x/oauth2"
	googleoauth "golang.org/x/oauth2/google"
	"golang.org/x/oauth2/jwt"

	"github.com/stowline/stowline/auth"
)

// provider names Google in errors and logs.
const provider = "google"

const (
	// defaultScope is the Cloud Healthcare API's.
	defaultScope = "https://www.googleapis.com/auth/cloud-healthcare"
	// defaultMetadataHost is the GCE metadata server (GCE_METADATA_HOST
	// overrides it, as in Google's own libraries).
	defaultMetadataHost = "metadata.google.internal"
)

// errConfig reports an unusable Config.
var errConfig = fmt.Errorf("%w: google", auth.ErrInvalidConfig)

// Credential kinds.
const (
	kindServiceAccountKey = "service account key"
	kindMetadataServer    = "metadata server"
)

// Config selects the Google credential.
type Config struct {
	// CredentialsFile is a service-account JSON key
	// (GOOGLE_APPLICATION_CREDENTIALS); empty uses the metadata server. It
	// is read again for every token, so a rotated key is picked up.
	CredentialsFile string
	// Scopes default to the Cloud Healthcare API's
	// (https://www.googleapis.com/auth/cloud-healthcare).
	Scopes []string
	// MetadataHost is host[:port] of the metadata server; empty means
	// metadata.google.internal.
	MetadataHost string
}

// Kind is the credential Endpoint will use: "service account key" or
// "metadata server".
func (c Config) Kind() string {
	if c.CredentialsFile != "" {
		return kindServiceAccountKey
	}
	return kindMetadataServer
}

// Endpoint returns the auth.Endpoint of the credential cfg selects.
func Endpoint(cfg Config) (auth.Endpoint, error) {
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{defaultScope}
	}
	if cfg.CredentialsFile == "" {
		return metadataServer(cfg)
	}
	// Read now, so that a bad key fails at startup.
	conf, err := loadKey(cfg.CredentialsFile, cfg.Scopes)
	if err != nil {
		return auth.Endpoint{}, err
	}
	email := conf.Email
	tokenURL := conf.TokenURL
	return auth.Endpoint{
		Provider: provider,
		TokenURL: func() string { return tokenURL },
		Fetch: func(ctx context.Context) (*oauth2.Token, error) {
			conf, err := loadKey(cfg.CredentialsFile, cfg.Scopes)
			if err != nil {
				return nil, err
			}
			if conf.Email != email {
				return nil, fmt.Errorf("%w: %s now holds the key of another service account", errConfig, cfg.CredentialsFile)
			}
			// The JWT-bearer grant: an assertion signed RS256 with the
			// key (iss = the service account, scope, aud = token_uri,
			// iat, exp = iat + 1 h), exchanged at token_uri.
			return conf.TokenSource(ctx).Token()
		},
	}, nil
}

// ServiceAccount is the client_email of the key file, for logs.
func ServiceAccount(file string) (string, error) {
	conf, err := loadKey(file, nil)
	if err != nil {
		return "", err
	}
	return conf.Email, nil
}

func loadKey(file string, scopes []string) (*jwt.Config, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: service account key: %w", errConfig, err)
	}
	conf, err := googleoauth.JWTConfigFromJSON(data, scopes...)
	if err != nil {
		// The library's message names fields, never the key.
		return nil, fmt.Errorf("%w: service account key %s: %w", errConfig, file, err)
	}
	if conf.Email == "" || len(conf.PrivateKey) == 0 {
		return nil, fmt.Errorf("%w: service account key %s lacks client_email or private_key", errConfig, file)
	}
	// x/oauth2 sets iat 10 s back (clock skew) and exp one hour after it:
	// Google's maximum.
	return conf, nil
}

// metadataServer asks the metadata server for a token of the VM's (or the
// GKE workload's) service account.
func metadataServer(cfg Config) (auth.Endpoint, error) {
	host := cfg.MetadataHost
	if host == "" {
		host = defaultMetadataHost
	}
	if strings.ContainsAny(host, "/?#@") {
		return auth.Endpoint{}, fmt.Errorf("%w: metadata host %q: want host or host:port", errConfig, host)
	}
	u := url.URL{Scheme: "http", Host: host, Path: "/computeMetadata/v1/instance/service-accounts/default/token"}
	u.RawQuery = url.Values{"scopes": {strings.Join(cfg.Scopes, ",")}}.Encode()
	target := u.String()
	// The metadata server is the node's own: never through a proxy.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	endpoint := "http://" + host + u.Path
	return auth.Endpoint{
		Provider: provider,
		TokenURL: func() string { return endpoint },
		Fetch:    func(ctx context.Context) (*oauth2.Token, error) { return fetchMetadata(ctx, hc, target) },
	}, nil
}

func fetchMetadata(ctx context.Context, hc *http.Client, target string) (*oauth2.Token, error) {
	body, hdr, err := auth.GetMetadata(ctx, hc, target, "Metadata-Flavor", "Google")
	if err != nil {
		return nil, err
	}
	if hdr.Get("Metadata-Flavor") != "Google" {
		return nil, errors.New("the answer lacks Metadata-Flavor: Google; not a metadata server")
	}
	var t struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &t); err != nil {
		return nil, fmt.Errorf("metadata server answer is not a token: %w", err)
	}
	if t.AccessToken == "" {
		return nil, errors.New("metadata server answer has no access_token")
	}
	tok := &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType}
	if t.ExpiresIn > 0 {
		tok.Expiry = time.Now().Add(time.Duration(t.ExpiresIn) * time.Second)
	}
	return tok, nil
}
