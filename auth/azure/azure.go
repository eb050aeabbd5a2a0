// Package azure gets Microsoft Entra ID access tokens for Azure Health Data
// Services DICOM: client credentials with a client secret, a certificate
// (a client assertion signed with the certificate's key, carrying the
// x5t#S256 header Entra requires) or a Kubernetes service account token
// Entra trusts (AKS workload identity: the token file is the client
// assertion), or the VM's managed identity through the Instance Metadata
// Service when none is configured.
//
// Entra's error answers (error, error_description with its AADSTS code,
// trace and correlation IDs) reach the auth.TokenError verbatim.
package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"

	"github.com/stowline/stowline/auth"
)

// provider names Entra ID in errors and logs.
const provider = "azure"

const (
	// defaultAuthorityHost is the public cloud's; sovereign clouds have
	// their own (https://login.microsoftonline.us,
	// https://login.partner.microsoftonline.cn).
	defaultAuthorityHost = "https://login.microsoftonline.com"
	// defaultScope is Azure Health Data Services DICOM's.
	defaultScope = "https://dicom.healthcareapis.azure.com/.default"
	// defaultIMDSEndpoint is the managed identity token endpoint of the
	// Azure Instance Metadata Service.
	defaultIMDSEndpoint = "http://169.254.169.254/metadata/identity/oauth2/token"
	// imdsAPIVersion is the IMDS identity API version used.
	imdsAPIVersion = "2018-02-01"
)

// errConfig reports an unusable Config.
var errConfig = fmt.Errorf("%w: azure", auth.ErrInvalidConfig)

// Credential kinds, in the order they are chosen.
const (
	kindSecret           = "client secret"
	kindCertificate      = "client certificate"
	kindWorkloadIdentity = "workload identity"
	kindManagedIdentity  = "managed identity"
)

// The managed identity's retry budget: IMDS answers 410 while it is
// being updated, "available within 70 seconds" (Microsoft), and 429 or
// 5xx meanwhile too; auth's default retries give up after 3.5 s. Waits of
// 1, 2, 4, 8, then 16 s (each drawn in [d/2, d]) add up to 79.5 to 159 s:
// even the shortest draw outlasts an update.
const (
	imdsRetries   = 12
	imdsRetryBase = time.Second
	imdsRetryMax  = 16 * time.Second
)

// Config selects the Entra credential.
type Config struct {
	// TenantID is the directory (tenant) ID or domain; required for a
	// client secret, a certificate or a workload identity.
	TenantID string
	// ClientID is the app registration's application (client) ID, or the
	// user-assigned managed identity's with a workload identity; with a
	// managed identity it selects a user-assigned identity (empty: the
	// system-assigned one).
	ClientID     string
	ClientSecret string
	// ClientSecretFile holds the client secret instead of ClientSecret,
	// read again for every token request (auth.Config.ClientSecretFile),
	// so that a rotated secret needs no restart.
	ClientSecretFile string
	// CertificateKeyFile is a PEM file with the certificate registered on
	// the app and its private key (RSA).
	CertificateKeyFile string
	// FederatedTokenFile is a token of another issuer that the app (or
	// user-assigned managed identity) trusts through a federated
	// credential: the Kubernetes service account token AKS workload
	// identity projects (AZURE_FEDERATED_TOKEN_FILE). It is sent as the
	// client assertion, read again for every token request since the
	// kubelet rotates it.
	FederatedTokenFile string
	// Scopes default to Azure Health Data Services DICOM's
	// (https://dicom.healthcareapis.azure.com/.default). A managed
	// identity takes one scope, as its resource (the scope without
	// "/.default").
	Scopes []string
	// AuthorityHost defaults to the public cloud's,
	// https://login.microsoftonline.com.
	AuthorityHost string
	// IMDSEndpoint defaults to the Instance Metadata Service's.
	IMDSEndpoint string
}

// Kind is the credential Endpoint will use: "client secret", "client
// certificate", "workload identity" or "managed identity".
func (c Config) Kind() string {
	switch {
	case c.ClientSecret != "" || c.ClientSecretFile != "":
		return kindSecret
	case c.CertificateKeyFile != "":
		return kindCertificate
	case c.FederatedTokenFile != "":
		return kindWorkloadIdentity
	}
	return kindManagedIdentity
}

// TokenOptions are the token source options the credential needs: a
// managed identity's longer retries (IMDS may be updating for 70 s).
func (c Config) TokenOptions() []auth.Option {
	if c.Kind() != kindManagedIdentity {
		return nil
	}
	return []auth.Option{auth.WithRetries(imdsRetries, imdsRetryBase, imdsRetryMax)}
}

// TokenURL is the v2.0 token endpoint of the tenant, or the IMDS endpoint.
func (c Config) TokenURL() string {
	if c.Kind() == kindManagedIdentity {
		return orDefault(c.IMDSEndpoint, defaultIMDSEndpoint)
	}
	return strings.TrimSuffix(orDefault(c.AuthorityHost, defaultAuthorityHost), "/") +
		"/" + url.PathEscape(c.TenantID) + "/oauth2/v2.0/token"
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Endpoint returns the auth.Endpoint of the credential cfg selects.
func Endpoint(cfg Config) (auth.Endpoint, error) {
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{defaultScope}
	}
	if cfg.Kind() == kindSecret && cfg.CertificateKeyFile != "" {
		return auth.Endpoint{}, fmt.Errorf("%w: a client secret or a certificate, not both", errConfig)
	}
	if cfg.FederatedTokenFile != "" && cfg.Kind() != kindWorkloadIdentity {
		return auth.Endpoint{}, fmt.Errorf("%w: a federated token file (workload identity) or a %s, not both", errConfig, cfg.Kind())
	}
	if cfg.Kind() == kindManagedIdentity {
		return managedIdentity(cfg)
	}
	if cfg.TenantID == "" || strings.ContainsAny(cfg.TenantID, "/?#") {
		return auth.Endpoint{}, fmt.Errorf("%w: a tenant ID is required (a GUID or a domain)", errConfig)
	}
	if cfg.ClientID == "" {
		return auth.Endpoint{}, fmt.Errorf("%w: a client ID is required with a %s", errConfig, cfg.Kind())
	}
	ac := auth.Config{
		Provider:         provider,
		TokenURL:         cfg.TokenURL(),
		ClientID:         cfg.ClientID,
		ClientSecret:     cfg.ClientSecret,
		ClientSecretFile: cfg.ClientSecretFile,
		Scopes:           cfg.Scopes,
		// Entra's documented requests carry client_id and client_secret
		// in the form.
		AuthStyle: oauth2.AuthStyleInParams,
	}
	switch cfg.Kind() {
	case kindCertificate:
		key, err := auth.NewAssertionKey(cfg.CertificateKeyFile, "", auth.WithAlgorithm(jose.PS256), auth.WithCertificateRequired())
		if err != nil {
			return auth.Endpoint{}, err
		}
		ac.Assertion = key
	case kindWorkloadIdentity:
		f, err := auth.NewAssertionFile(cfg.FederatedTokenFile)
		if err != nil {
			return auth.Endpoint{}, err
		}
		ac.Assertion = f
	}
	return auth.ClientCredentials(ac)
}

// managedIdentity asks IMDS for a token of the VM's (or the selected
// user-assigned) managed identity.
func managedIdentity(cfg Config) (auth.Endpoint, error) {
	if len(cfg.Scopes) != 1 {
		return auth.Endpoint{}, fmt.Errorf("%w: a managed identity takes one scope, got %d", errConfig, len(cfg.Scopes))
	}
	endpoint := orDefault(cfg.IMDSEndpoint, defaultIMDSEndpoint)
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return auth.Endpoint{}, fmt.Errorf("%w: IMDS endpoint %q is not an http(s) URL", errConfig, endpoint)
	}
	q := u.Query()
	q.Set("api-version", imdsAPIVersion)
	q.Set("resource", strings.TrimSuffix(cfg.Scopes[0], "/.default"))
	if cfg.ClientID != "" {
		q.Set("client_id", cfg.ClientID)
	}
	u.RawQuery = q.Encode()
	// IMDS is link-local: never through a proxy.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	target := u.String()
	return auth.Endpoint{
		Provider: provider,
		TokenURL: func() string { return endpoint },
		Fetch:    func(ctx context.Context) (*oauth2.Token, error) { return fetchIMDS(ctx, hc, target) },
		// Microsoft's managed identity documentation: 404 "IMDS is
		// updating", 410 "IMDS is being updated, available within 70 s";
		// both to be retried, not taken as a refusal.
		RetryStatuses: []int{http.StatusNotFound, http.StatusGone},
	}, nil
}

// imdsToken is IMDS's answer; its numbers are strings.
type imdsToken struct {
	AccessToken string      `json:"access_token"`
	TokenType   string      `json:"token_type"`
	ExpiresIn   json.Number `json:"expires_in"`
	ExpiresOn   json.Number `json:"expires_on"`
	Resource    string      `json:"resource"`
}

func fetchIMDS(ctx context.Context, hc *http.Client, target string) (*oauth2.Token, error) {
	body, _, err := auth.GetMetadata(ctx, hc, target, "Metadata", "true")
	if err != nil {
		return nil, err
	}
	var t imdsToken
	if err := json.Unmarshal(body, &t); err != nil {
		return nil, fmt.Errorf("IMDS answer is not a token: %w", err)
	}
	if t.AccessToken == "" {
		return nil, errors.New("IMDS answer has no access_token")
	}
	tok := &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType}
	if secs, err := strconv.ParseInt(t.ExpiresIn.String(), 10, 64); err == nil && secs > 0 {
		tok.Expiry = time.Now().Add(time.Duration(secs) * time.Second)
	} else if on, err := strconv.ParseInt(t.ExpiresOn.String(), 10, 64); err == nil && on > 0 {
		tok.Expiry = time.Unix(on, 0)
	}
	return tok.WithExtra(map[string]any{"resource": t.Resource}), nil
}
