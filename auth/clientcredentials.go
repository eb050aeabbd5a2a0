package auth

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/stowline/stowline/internal/secretfile"
)

// clientAssertionType is the RFC 7523 §2.2 client_assertion_type.
const clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// Config describes an RFC 6749 §4.4 client-credentials grant.
type Config struct {
	// Provider names the identity provider in errors; empty means
	// "generic".
	Provider string
	// TokenURL is the token endpoint. Give it or IssuerURL.
	TokenURL string
	// IssuerURL is an OpenID Connect issuer whose token endpoint is
	// discovered from {IssuerURL}/.well-known/openid-configuration by the
	// first fetch (and kept once found).
	IssuerURL string
	ClientID  string
	// ClientSecret authenticates the client (client_secret_basic or
	// client_secret_post). Give it, ClientSecretFile or Assertion.
	ClientSecret string
	// ClientSecretFile is a file holding the client secret (a mounted
	// Kubernetes or Docker secret; a trailing newline is not part of it).
	// It is read again for every token request, so that a rotated secret
	// is used without a restart; while it cannot be read or is empty, the
	// secret read last goes on being used.
	ClientSecretFile string
	// Assertion authenticates the client with a JWT sent as
	// client_assertion with every request (RFC 7523 §2.2): an
	// *AssertionKey signs a fresh one (private_key_jwt, OpenID Connect
	// Core §9), an *AssertionFile reads one another issuer made
	// (workload identity federation).
	Assertion ClientAssertion
	Scopes    []string
	// EndpointParams are extra token request parameters, e.g. audience
	// (Auth0, Okta) or resource (ADFS, RFC 8707).
	EndpointParams url.Values
	// AuthStyle is how a ClientSecret is sent: oauth2.AuthStyleInHeader
	// (client_secret_basic), oauth2.AuthStyleInParams (client_secret_post)
	// or oauth2.AuthStyleAutoDetect. With an Assertion the client ID is
	// always in the form.
	AuthStyle oauth2.AuthStyle
}

func (c Config) validate() error {
	switch {
	case c.TokenURL == "" && c.IssuerURL == "":
		return fmt.Errorf("%w: TokenURL or IssuerURL is required", ErrInvalidConfig)
	case c.TokenURL != "" && c.IssuerURL != "":
		return fmt.Errorf("%w: set TokenURL or IssuerURL, not both", ErrInvalidConfig)
	case c.ClientID == "":
		return fmt.Errorf("%w: ClientID is required", ErrInvalidConfig)
	case c.ClientSecret == "" && c.ClientSecretFile == "" && c.Assertion == nil:
		return fmt.Errorf("%w: ClientSecret (or ClientSecretFile, or an Assertion key) is required", ErrInvalidConfig)
	case (c.ClientSecret != "") && (c.ClientSecretFile != "" || c.Assertion != nil),
		c.ClientSecretFile != "" && c.Assertion != nil:
		return fmt.Errorf("%w: set one of ClientSecret, ClientSecretFile and Assertion", ErrInvalidConfig)
	}
	if c.TokenURL != "" && !isHTTPURL(c.TokenURL) {
		return fmt.Errorf("%w: TokenURL must be an absolute http(s) URL", ErrInvalidConfig)
	}
	if c.IssuerURL != "" && !isHTTPURL(c.IssuerURL) {
		return fmt.Errorf("%w: IssuerURL must be an absolute http(s) URL", ErrInvalidConfig)
	}
	return nil
}

func isHTTPURL(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != ""
}

// ClientCredentials returns the Endpoint of the client-credentials grant
// cfg describes.
func ClientCredentials(cfg Config) (Endpoint, error) {
	if err := cfg.validate(); err != nil {
		return Endpoint{}, err
	}
	g := &clientCredentials{cfg: cfg, now: time.Now}
	if cfg.ClientSecret != "" {
		g.keepSecret(cfg.ClientSecret)
	}
	if cfg.ClientSecretFile != "" {
		// Read now, so that a missing or empty file fails at startup.
		secret, err := readClientSecret(cfg.ClientSecretFile)
		if err != nil {
			return Endpoint{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		g.keepSecret(secret)
	}
	return Endpoint{
		Provider: cmp.Or(cfg.Provider, providerGeneric),
		TokenURL: g.url,
		Fetch:    g.fetch,
		Secrets:  g.secretsSent,
	}, nil
}

// secretForms are the ways the secret goes on the wire, to scrub from
// error text: as it is (client_secret_post, scrub adds its escapes) and
// inside client_secret_basic's Authorization value (RFC 6749 2.3.1:
// each part form-encoded, then base64).
func secretForms(clientID, secret string) []string {
	basic := base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(clientID) + ":" + url.QueryEscape(secret)))
	return []string{secret, basic}
}

type clientCredentials struct {
	cfg Config
	now func() time.Time // this host's clock
	// offset is the identity provider's clock minus this host's, as the
	// Date of a refused assertion told: assertions are signed at the
	// provider's time.
	offset atomic.Int64

	mu         sync.Mutex
	discovered string   // token endpoint found through IssuerURL
	secret     string   // the client secret read last
	sent       []string // secretForms of every secret read, newest last
}

// maxSecretsScrubbed bounds how many secrets, the current one and those
// it replaced, are scrubbed from error text: an answer to a request that
// carried a secret comes before the next rotation but one.
const maxSecretsScrubbed = 3

// keepSecret makes secret the one sent from now on.
func (g *clientCredentials) keepSecret(secret string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if secret == g.secret {
		return
	}
	g.secret = secret
	g.sent = append(g.sent, secretForms(g.cfg.ClientID, secret)...)
	if over := len(g.sent) - 2*maxSecretsScrubbed; over > 0 {
		g.sent = slices.Delete(g.sent, 0, over)
	}
}

// clientSecret is the secret to send: ClientSecretFile's content when the
// file reads, else the secret read last, with fileErr saying why the file
// did not read.
func (g *clientCredentials) clientSecret() (secret string, fileErr error) {
	if g.cfg.ClientSecretFile != "" {
		if secret, fileErr = readClientSecret(g.cfg.ClientSecretFile); fileErr == nil {
			g.keepSecret(secret)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.secret, fileErr
}

// readClientSecret reads a client secret file.
func readClientSecret(path string) (string, error) {
	s, err := secretfile.Read(path)
	if err != nil {
		return "", fmt.Errorf("client secret file: %w", err)
	}
	return s, nil
}

// secretsSent are the forms of the secrets sent lately, for scrubbing.
func (g *clientCredentials) secretsSent() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.sent)
}

// url is the token endpoint, or the issuer until discovery succeeded.
func (g *clientCredentials) url() string {
	if g.cfg.TokenURL != "" {
		return g.cfg.TokenURL
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return cmp.Or(g.discovered, g.cfg.IssuerURL)
}

func (g *clientCredentials) fetch(ctx context.Context) (*oauth2.Token, error) {
	tokenURL, err := g.tokenEndpoint(ctx)
	if err != nil {
		return nil, err
	}
	params := maps.Clone(g.cfg.EndpointParams)
	if params == nil {
		params = url.Values{}
	}
	secret, fileErr := g.clientSecret()
	cc := clientcredentials.Config{
		ClientID:     g.cfg.ClientID,
		ClientSecret: secret,
		TokenURL:     tokenURL,
		Scopes:       g.cfg.Scopes,
		AuthStyle:    g.cfg.AuthStyle,
	}
	if g.cfg.Assertion == nil {
		cc.EndpointParams = params
		tok, err := cc.Token(ctx)
		if err != nil && fileErr != nil {
			// A refusal would otherwise blame a secret the file may hold
			// right, when the file was not read.
			err = fmt.Errorf("%v; the secret read before was sent: %w", fileErr, err)
		}
		return tok, err
	}
	params.Set("client_assertion_type", clientAssertionType)
	cc.AuthStyle = oauth2.AuthStyleInParams // client_id in the form, no secret
	cc.EndpointParams = params
	used := time.Duration(g.offset.Load())
	tok, err := g.asserted(ctx, &cc, used)
	// Only an assertion signed here can be signed again at another time.
	_, signed := g.cfg.Assertion.(*AssertionKey)
	if off, ok := g.refusedForTime(err, used); ok && signed {
		// An assertion valid by this host's clock is expired or not yet
		// valid by the provider's (a host without NTP): sign again at
		// the provider's time, and the next ones too.
		g.offset.Store(int64(off))
		tok, err = g.asserted(ctx, &cc, off)
	}
	return tok, err
}

// asserted asks for a token with a client assertion made (signed, if
// the client signs it) at this host's time plus offset.
func (g *clientCredentials) asserted(ctx context.Context, cc *clientcredentials.Config, offset time.Duration) (*oauth2.Token, error) {
	// RFC 7523 §3 / OIDC Core §9: the audience is the token endpoint.
	assertion, err := g.cfg.Assertion.clientAssertion(g.cfg.ClientID, cc.TokenURL, g.now().Add(offset))
	if err != nil {
		return nil, err
	}
	cc.EndpointParams.Set("client_assertion", assertion)
	return cc.Token(ctx)
}

// refusedForTime reports whether err is the provider's refusal (400 or
// 401) of an assertion signed used away from this host's clock while its
// own clock (the answer's Date, whole seconds) is off by at least
// assertionSkew, the slack an assertion has before its issue time,
// from that; off is the offset to sign at instead (0 when the clocks
// agree within the slack).
func (g *clientCredentials) refusedForTime(err error, used time.Duration) (off time.Duration, ok bool) {
	re, isRE := errors.AsType[*oauth2.RetrieveError](err)
	if !isRE || re.Response == nil || (re.Response.StatusCode != http.StatusBadRequest && re.Response.StatusCode != http.StatusUnauthorized) {
		return 0, false
	}
	date, perr := http.ParseTime(re.Response.Header.Get("Date"))
	if perr != nil {
		return 0, false
	}
	off = date.Sub(g.now())
	if off.Abs() < assertionSkew {
		off = 0
	}
	return off, (off - used).Abs() >= assertionSkew
}

func (g *clientCredentials) tokenEndpoint(ctx context.Context) (string, error) {
	if g.cfg.TokenURL != "" {
		return g.cfg.TokenURL, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.discovered != "" {
		return g.discovered, nil
	}
	u, err := discoverTokenEndpoint(ctx, httpClient(ctx), g.cfg.IssuerURL)
	if err != nil {
		return "", err
	}
	g.discovered = u
	return u, nil
}

// httpClient is the client a TokenSource put in ctx.
func httpClient(ctx context.Context) *http.Client {
	if c, ok := ctx.Value(oauth2.HTTPClient).(*http.Client); ok && c != nil {
		return c
	}
	return &http.Client{Timeout: defaultFetchTimeout}
}

// maxDiscoveryBody bounds an OpenID provider configuration document.
const maxDiscoveryBody = 1 << 20

// discoverTokenEndpoint reads the token endpoint from the OpenID Connect
// Discovery document of issuer ({issuer}/.well-known/openid-configuration),
// checking that the document names that issuer (OpenID Connect Discovery
// §4.3). An HTTP error answer is returned as an *oauth2.RetrieveError.
func discoverTokenEndpoint(ctx context.Context, hc *http.Client, issuer string) (string, error) {
	docURL := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, docURL, nil)
	if err != nil {
		return "", fmt.Errorf("%w: issuer %q: %w", ErrInvalidConfig, issuer, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("OpenID discovery: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDiscoveryBody))
	if err != nil {
		return "", fmt.Errorf("OpenID discovery at %s: %w", docURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("OpenID discovery at %s: %w", docURL, &oauth2.RetrieveError{Response: resp, Body: body})
	}
	var doc struct {
		Issuer        string `json:"issuer"`
		TokenEndpoint string `json:"token_endpoint"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("OpenID discovery at %s: not a JSON provider configuration: %w", docURL, err)
	}
	if strings.TrimSuffix(doc.Issuer, "/") != strings.TrimSuffix(issuer, "/") {
		return "", fmt.Errorf("%w: OpenID discovery at %s names issuer %q, want %q", ErrInvalidConfig, docURL, doc.Issuer, issuer)
	}
	if !isHTTPURL(doc.TokenEndpoint) {
		return "", fmt.Errorf("%w: OpenID discovery at %s: token_endpoint %q is not an absolute http(s) URL", ErrInvalidConfig, docURL, doc.TokenEndpoint)
	}
	if strings.HasPrefix(strings.ToLower(issuer), "https:") && !strings.HasPrefix(strings.ToLower(doc.TokenEndpoint), "https:") {
		// The client secret or assertion would cross the network
		// unencrypted, with no warning: warnings look at the configured
		// URLs only.
		return "", fmt.Errorf("%w: OpenID discovery at %s: token_endpoint %q is not https, where the issuer is: the client's credentials would be sent unencrypted", ErrInvalidConfig, docURL, doc.TokenEndpoint)
	}
	return doc.TokenEndpoint, nil
}
