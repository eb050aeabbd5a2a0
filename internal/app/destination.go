package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"

	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/auth/awssig"
	"github.com/stowline/stowline/auth/azure"
	"github.com/stowline/stowline/auth/google"
	"github.com/stowline/stowline/internal/bandwidth"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/tracing"
)

// tokenFetchTimeout bounds one request to a token endpoint.
const tokenFetchTimeout = 30 * time.Second

// destination is the DICOMweb destination with its authentication.
type destination struct {
	// STOW is the STOW-RS client.
	STOW *dicomweb.Client
	// HTTP is the authenticated client (for `forwarder check`).
	HTTP *http.Client
	// Tokens is the OAuth2 token source; nil for aws and without auth.
	Tokens *auth.TokenSource
	// AWSCredentials is the SigV4 credential chain (aws only).
	AWSCredentials aws.CredentialsProvider
	// Bandwidth is the destination's STOW_MAX_BYTES_PER_SECOND bucket,
	// every request of this process draws on (a no-op without a cap).
	Bandwidth *bandwidth.Limiter
	// Provider and Credential describe the authentication, for logs:
	// e.g. "azure", "client certificate"; Credential is "" without auth.
	Provider, Credential string
}

// newDestination builds the destination's HTTP client and STOW-RS client
// from fc: TLS (custom CA, mutual TLS), then OAuth2 tokens of the
// configured provider or AWS SigV4. observe (may be nil) sees every token
// request. ctx must live as long as the process: tokens are fetched and
// refreshed with it. tp, if not nil, traces token requests. Secrets are
// never logged.
func newDestination(ctx context.Context, fc *config.NamedDestination, observe func(error, time.Duration), tp trace.TracerProvider, log *slog.Logger) (*destination, error) {
	d := &fc.DestinationAuth
	tlsCfg, err := config.NewTLSConfig(config.TLSFiles{CAFile: d.TLSCAFile, CertFile: d.TLSCertFile, KeyFile: d.TLSKeyFile, InsecureSkipVerify: d.TLSInsecureSkipVerify}, log)
	if err != nil {
		// Name the destination and its variables: with several, the
		// files' paths alone do not say which to fix.
		var set []string
		for _, v := range []struct{ name, path string }{{"TLS_CA_FILE", d.TLSCAFile}, {"TLS_CERT_FILE", d.TLSCertFile}, {"TLS_KEY_FILE", d.TLSKeyFile}} {
			if v.path != "" {
				set = append(set, fc.VarName(v.name))
			}
		}
		return nil, fmt.Errorf("destination %s (%s): %w", fc.Name, strings.Join(set, ", "), err)
	}
	if d.TLSInsecureSkipVerify {
		log.Warn(fc.VarName("TLS_INSECURE_SKIP_VERIFY")+"=true: the certificates of the destination and its token endpoint are NOT verified; anyone on the network path can read and alter what is sent. Unset it outside tests.",
			"dicomweb_url", redactURL(fc.DICOMwebURL))
	}
	warnPlainHTTP(fc, log)
	newTransport := func() *http.Transport {
		t := newDestinationTransport()
		t.TLSClientConfig = tlsCfg
		return t
	}
	// The bandwidth cap counts what goes to the destination, under the
	// signing and token layers; token requests are not capped.
	out := &destination{Provider: d.Provider, Bandwidth: bandwidth.New(int64(fc.StowMaxBytesPerSecond))}
	base := out.Bandwidth.Transport(newTransport())
	tokenHTTP := &http.Client{Timeout: tokenFetchTimeout, Transport: newTransport()}

	var rt http.RoundTripper = base
	var ep auth.Endpoint
	var tokenOpts []auth.Option // the provider's, before the common ones
	var stowOpts []dicomweb.Option
	switch d.Provider {
	case config.ProviderGeneric:
		if fc.OAuthTokenURL == "" && d.IssuerURL == "" {
			log.Warn(fc.VarName("OAUTH_TOKEN_URL")+" is empty: STOW-RS requests are sent without authentication", "dicomweb_url", redactURL(fc.DICOMwebURL))
			break
		}
		ep, out.Credential, err = genericEndpoint(fc)
	case config.ProviderAzure:
		az := azureConfig(fc)
		out.Credential = az.Kind()
		ep, err = azure.Endpoint(az)
		tokenOpts = az.TokenOptions()
	case config.ProviderGoogle:
		gc := google.Config{CredentialsFile: d.GoogleCredentialsFile, Scopes: fc.OAuthScopes, MetadataHost: d.GCEMetadataHost}
		out.Credential = gc.Kind()
		ep, err = google.Endpoint(gc)
		if err == nil && gc.CredentialsFile != "" {
			email, _ := google.ServiceAccount(gc.CredentialsFile)
			log.Info("Google service account", "client_email", email)
		}
	case config.ProviderAWS:
		region := fc.AWSRegionOrDefault()
		if d.AWSRegion != "" && d.AWSRegion != region {
			log.Info(fc.VarName("AWS_REGION")+" differs from the data store's region in "+fc.VarName("DICOMWEB_URL")+", which the endpoint requires: requests are signed for the latter",
				"aws_region", d.AWSRegion, "region", region)
		}
		out.Credential = "Signature V4, " + awssig.Service + ", " + region
		out.AWSCredentials, err = awssig.LoadCredentials(ctx, region, d.RefreshMargin)
		if err == nil {
			rt, err = awssig.Transport(out.AWSCredentials, region, base)
		}
		// SigV4 covers Content-Length: announce it (the body still streams).
		stowOpts = append(stowOpts, dicomweb.WithContentLength())
		if err == nil {
			log.Info("STOW-RS requests are signed with AWS Signature V4", "region", region, "service", awssig.Service)
		}
	default:
		err = fmt.Errorf("%s=%q: want generic, azure, google or aws", fc.VarName("OAUTH_PROVIDER"), d.Provider)
	}
	if err != nil {
		return nil, fmt.Errorf("destination %s authentication (%s=%s): %w", fc.Name, fc.VarName("OAUTH_PROVIDER"), d.Provider, err)
	}
	if ep.Fetch != nil {
		opts := append(tokenOpts, auth.WithHTTPClient(tokenHTTP), auth.WithRefreshMargin(d.RefreshMargin))
		if observe != nil {
			opts = append(opts, auth.WithObserver(observe))
		}
		if tp != nil {
			opts = append(opts, auth.WithTracerProvider(tp, tracing.Destination.String(fc.Name)))
		}
		out.Tokens, err = auth.NewSource(ctx, ep, opts...)
		if err != nil {
			return nil, fmt.Errorf("destination %s authentication (%s=%s): %w", fc.Name, fc.VarName("OAUTH_PROVIDER"), d.Provider, err)
		}
		rt = auth.Transport(out.Tokens, base)
		log.Info("STOW-RS requests carry OAuth2 tokens", "provider", ep.Provider, "credential", out.Credential,
			"token_url", redactURL(ep.TokenURL()), "client_id", fc.OAuthClientID, "refresh_margin", d.RefreshMargin.String())
	}
	// Redirects are followed within the destination's origin only, also
	// without a credential to guard: a 307 answered to a DELETE would
	// send it again to whatever host it named, and that host's 204 count
	// as the instance deleted.
	out.HTTP = &http.Client{Transport: rt, CheckRedirect: auth.SameOriginRedirect}
	if fc.Profile().SeriesSearch {
		stowOpts = append(stowOpts, dicomweb.WithSeriesSearch())
	}
	out.STOW, err = dicomweb.New(fc.DICOMwebURL, out.HTTP, stowOpts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fc.VarName("DICOMWEB_URL"), err)
	}
	return out, nil
}

// warnPlainHTTP warns of a destination or token endpoint reached over
// http://, once per variable at start: the studies (patient data) and
// the client secret or token would cross the network unencrypted, which
// nothing else says (a typed "http" for "https" works with a server
// that takes both). A loopback address stays on the host: a local TLS
// proxy, a test.
func warnPlainHTTP(fc *config.NamedDestination, log *slog.Logger) {
	for _, v := range []struct{ name, raw, what string }{
		{"DICOMWEB_URL", fc.DICOMwebURL, "the studies (patient data) and their credentials"},
		{"OAUTH_TOKEN_URL", fc.OAuthTokenURL, "the client secret and the tokens"},
		{"OAUTH_ISSUER_URL", fc.IssuerURL, "the client secret and the tokens"},
	} {
		u, err := url.Parse(v.raw)
		if err != nil || !strings.EqualFold(u.Scheme, "http") || loopbackHost(u.Hostname()) {
			continue
		}
		log.Warn(fc.VarName(v.name)+" is plain http://: "+v.what+" cross the network unencrypted; use https:// unless the path is protected otherwise (a VPN, a service mesh)",
			"url", redactURL(v.raw))
	}
}

// loopbackHost reports whether host names this machine: localhost or a
// loopback address.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// genericEndpoint is the RFC 6749 client-credentials grant of
// OAUTH_PROVIDER=generic.
func genericEndpoint(fc *config.NamedDestination) (auth.Endpoint, string, error) {
	d := &fc.DestinationAuth
	cfg := auth.Config{
		TokenURL:  fc.OAuthTokenURL,
		IssuerURL: d.IssuerURL,
		ClientID:  fc.OAuthClientID,
		Scopes:    fc.OAuthScopes,
	}
	cfg.ClientSecret, cfg.ClientSecretFile = clientSecret(fc)
	params := url.Values{}
	if d.Audience != "" {
		params.Set("audience", d.Audience)
	}
	if d.Resource != "" {
		params.Set("resource", d.Resource)
	}
	if len(params) > 0 {
		cfg.EndpointParams = params
	}
	style := fc.AuthStyle()
	switch style {
	case config.AuthStyleBasic:
		cfg.AuthStyle = oauth2.AuthStyleInHeader
	case config.AuthStylePost:
		cfg.AuthStyle = oauth2.AuthStyleInParams
	case config.AuthStylePrivateKeyJWT:
		key, err := auth.NewAssertionKey(d.AssertionKeyFile, d.AssertionKeyID)
		if err != nil {
			return auth.Endpoint{}, "", err
		}
		cfg.ClientSecret, cfg.ClientSecretFile, cfg.Assertion = "", "", key
	default:
		return auth.Endpoint{}, "", errors.New(fc.VarName("OAUTH_AUTH_STYLE") + ": want client_secret_basic, client_secret_post or private_key_jwt")
	}
	ep, err := auth.ClientCredentials(cfg)
	return ep, style, err
}

func azureConfig(fc *config.NamedDestination) azure.Config {
	d := &fc.DestinationAuth
	cfg := azure.Config{
		TenantID:           d.AzureTenantID,
		ClientID:           fc.OAuthClientID,
		CertificateKeyFile: d.AssertionKeyFile,
		FederatedTokenFile: d.AzureFederatedTokenFile,
		Scopes:             fc.OAuthScopes,
		AuthorityHost:      d.AzureAuthorityHost,
		IMDSEndpoint:       d.AzureIMDSEndpoint,
	}
	cfg.ClientSecret, cfg.ClientSecretFile = clientSecret(fc)
	return cfg
}

// clientSecret is the destination's client secret: its file when it was
// given as one (read again for every token, so a rotated secret needs no
// restart), else its value.
func clientSecret(fc *config.NamedDestination) (value, file string) {
	if fc.OAuthClientSecretFile != "" {
		return "", fc.OAuthClientSecretFile
	}
	return fc.OAuthClientSecret, ""
}

// tokenEndpointHost is the host tokens come from, and whether there are
// tokens at all (aws and an unauthenticated generic destination have none),
// for the token metrics and the status page.
func tokenEndpointHost(fc *config.NamedDestination) (string, bool) {
	d := &fc.DestinationAuth
	switch d.Provider {
	case config.ProviderAzure:
		return urlHost(azureConfig(fc).TokenURL()), true
	case config.ProviderGoogle:
		if d.GoogleCredentialsFile == "" {
			return d.GCEMetadataHost, true
		}
		return "oauth2.googleapis.com", true
	case config.ProviderAWS:
		return "", false
	}
	if fc.OAuthTokenURL != "" {
		return urlHost(fc.OAuthTokenURL), true
	}
	return urlHost(d.IssuerURL), d.IssuerURL != ""
}

// redactURL drops user info and query from a URL for logs.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}
