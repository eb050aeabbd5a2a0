package config

import (
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stowline/stowline/auth"
	"github.com/stowline/stowline/auth/google"
)

// The identity providers OAUTH_PROVIDER selects.
const (
	ProviderGeneric = "generic"
	ProviderAzure   = "azure"
	ProviderGoogle  = "google"
	ProviderAWS     = "aws"
)

// The client authentication methods OAUTH_AUTH_STYLE selects.
const (
	AuthStyleBasic         = "client_secret_basic"
	AuthStylePost          = "client_secret_post"
	AuthStylePrivateKeyJWT = "private_key_jwt"
)

// awsMaxStowBytes is AWS HealthImaging's limit of DICOM data per STOW-RS
// request ("up to 1GB", read as 10^9 bytes, the stricter reading).
const awsMaxStowBytes = 1_000_000_000

// DestinationAuth says how requests to a DICOMweb destination are
// authenticated, and how TLS to it and to its token endpoint is set up.
// It extends Destination's OAUTH_TOKEN_URL, OAUTH_CLIENT_ID,
// OAUTH_CLIENT_SECRET and OAUTH_SCOPES.
type DestinationAuth struct {
	Provider  string `env:"OAUTH_PROVIDER" envDefault:"generic" desc:"who issues the destination's credentials: generic (any OAuth2 server), azure (Microsoft Entra ID), google (Google Cloud) or aws (AWS HealthImaging, Signature V4)"`
	AuthStyle string `env:"OAUTH_AUTH_STYLE" desc:"generic: how the client authenticates to the token endpoint: client_secret_basic (default), client_secret_post, or private_key_jwt (default when OAUTH_CLIENT_ASSERTION_KEY_FILE is set)"`
	IssuerURL string `env:"OAUTH_ISSUER_URL" desc:"generic: OpenID Connect issuer whose token endpoint is discovered ({issuer}/.well-known/openid-configuration), instead of OAUTH_TOKEN_URL"`
	Audience  string `env:"OAUTH_AUDIENCE" desc:"generic: audience parameter of the token request (Auth0, Okta)"`
	Resource  string `env:"OAUTH_RESOURCE" desc:"generic: resource parameter of the token request (ADFS, RFC 8707)"`

	AssertionKeyFile string `env:"OAUTH_CLIENT_ASSERTION_KEY_FILE" desc:"PEM private key (unencrypted; with its certificate for azure) signing client assertions: private_key_jwt (generic) or certificate credentials (azure); re-read for every token"`
	AssertionKeyID   string `env:"OAUTH_CLIENT_ASSERTION_KEY_ID" desc:"generic: key ID (kid) of OAUTH_CLIENT_ASSERTION_KEY_FILE as registered at the identity provider"`

	RefreshMargin time.Duration `env:"OAUTH_REFRESH_MARGIN" envDefault:"5m" desc:"how long before expiry a token (or temporary AWS credentials) is replaced in the background; at least 20s, at most half the token's lifetime (AWS: at most 7m)"`

	AzureTenantID           string `env:"AZURE_TENANT_ID" desc:"azure: directory (tenant) ID; with OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET, OAUTH_CLIENT_ASSERTION_KEY_FILE or AZURE_FEDERATED_TOKEN_FILE. Without any of them the managed identity is used"`
	AzureFederatedTokenFile string `env:"AZURE_FEDERATED_TOKEN_FILE" desc:"azure: AKS workload identity: the projected service account token (the webhook sets this variable) that Entra ID takes as the client assertion of OAUTH_CLIENT_ID (the identity's client ID, the webhook's AZURE_CLIENT_ID) in AZURE_TENANT_ID; re-read for every token"`
	AzureAuthorityHost      string `env:"AZURE_AUTHORITY_HOST" envDefault:"https://login.microsoftonline.com" desc:"azure: Entra ID authority (sovereign clouds: https://login.microsoftonline.us, https://login.partner.microsoftonline.cn)"`
	AzureIMDSEndpoint       string `env:"AZURE_IMDS_ENDPOINT" envDefault:"http://169.254.169.254/metadata/identity/oauth2/token" desc:"azure: managed identity token endpoint of the Instance Metadata Service"`

	GoogleCredentialsFile string `env:"GOOGLE_APPLICATION_CREDENTIALS" desc:"google: service account JSON key file; empty uses the metadata server (GCE, GKE workload identity)"`
	GCEMetadataHost       string `env:"GCE_METADATA_HOST" envDefault:"metadata.google.internal" desc:"google: metadata server host[:port]"`

	AWSRegion string `env:"AWS_REGION" desc:"aws: region of the HealthImaging data store when DICOMWEB_URL does not name it (a VPC endpoint, a proxy); a URL dicom-medical-imaging.REGION.amazonaws.com is signed for its REGION, whatever AWS_REGION says (EKS and ECS set it to the cluster's). Credentials come from the AWS SDK's standard chain"`

	TLSCAFile             string `env:"TLS_CA_FILE" desc:"PEM CA certificates trusted, besides the system's, for the destination and its token endpoint (private PKI)"`
	TLSCertFile           string `env:"TLS_CERT_FILE" desc:"PEM client certificate for mutual TLS with the destination and its token endpoint; with TLS_KEY_FILE; reloaded when renewed"`
	TLSKeyFile            string `env:"TLS_KEY_FILE" desc:"PEM private key of TLS_CERT_FILE"`
	TLSInsecureSkipVerify bool   `env:"TLS_INSECURE_SKIP_VERIFY" envDefault:"false" desc:"true accepts any server certificate of the destination and its token endpoint (tests only; logged as a warning at every start)"`
}

// What authenticates to a destination, and to its token endpoint, in
// place of credentials in their URLs.
const (
	destinationCredentials = "a destination is authenticated to by OAUTH_TOKEN_URL or OAUTH_PROVIDER (OAuth2 tokens, AWS signatures: docs/auth.md) or not at all; stowline has no basic auth for it"
	tokenCredentials       = "the client authenticates with OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET (or OAUTH_CLIENT_ASSERTION_KEY_FILE)"
)

// nilGUID is the all-zero GUID examples put where an Entra ID goes.
const nilGUID = "00000000-0000-0000-0000-000000000000"

// tenantPlaceholder is what deploy/env.example's OAUTH_TOKEN_URL holds
// where the Entra tenant goes.
const tenantPlaceholder = "YOUR-TENANT-ID"

// authValidate checks the destination's authentication; the errors name
// the variables. It replaces the checks of OAUTH_TOKEN_URL and friends.
func (f *Destination) authValidate() error {
	d := &f.DestinationAuth
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for name, v := range map[string]string{"OAUTH_TOKEN_URL": f.OAuthTokenURL, "OAUTH_ISSUER_URL": d.IssuerURL, "AZURE_AUTHORITY_HOST": d.AzureAuthorityHost, "AZURE_IMDS_ENDPOINT": d.AzureIMDSEndpoint} {
		if v != "" {
			if err := validateHTTPURL(name, v, tokenCredentials); err != nil {
				errs = append(errs, err)
			} else if strings.Contains(strings.ToUpper(v), tenantPlaceholder) {
				// Left as it is, every token request is refused and
				// every study dead-lettered, as with nilGUID.
				add("%s=%q: the example's placeholder %s: put your Entra tenant's ID in its place", name, withoutSecrets(v), tenantPlaceholder)
			}
		}
	}
	if d.RefreshMargin < 0 {
		add("OAUTH_REFRESH_MARGIN=%s: want 0 or more", d.RefreshMargin)
	}
	// notFor lists variables set although the provider ignores them.
	notFor := func(vars map[string]bool) {
		var set []string
		for name, isSet := range vars {
			if isSet {
				set = append(set, name)
			}
		}
		if len(set) > 0 {
			slices.Sort(set)
			add("%s: not used with OAUTH_PROVIDER=%s", strings.Join(set, ", "), d.Provider)
		}
	}
	generic := map[string]bool{
		"OAUTH_TOKEN_URL": f.OAuthTokenURL != "", "OAUTH_ISSUER_URL": d.IssuerURL != "", "OAUTH_AUTH_STYLE": d.AuthStyle != "",
		"OAUTH_AUDIENCE": d.Audience != "", "OAUTH_RESOURCE": d.Resource != "", "OAUTH_CLIENT_ASSERTION_KEY_ID": d.AssertionKeyID != "",
	}
	switch d.Provider {
	case ProviderGeneric:
		errs = append(errs, f.genericValidate()...)
	case ProviderAzure:
		notFor(generic)
		switch {
		case f.OAuthClientSecret != "" && d.AssertionKeyFile != "":
			add("OAUTH_CLIENT_SECRET and OAUTH_CLIENT_ASSERTION_KEY_FILE are both set: an Entra app authenticates with one")
		case d.AzureFederatedTokenFile != "" && (f.OAuthClientSecret != "" || d.AssertionKeyFile != ""):
			// The webhook sets it in every pod labelled
			// azure.workload.identity/use: "true".
			other := "OAUTH_CLIENT_SECRET"
			if d.AssertionKeyFile != "" {
				other = "OAUTH_CLIENT_ASSERTION_KEY_FILE"
			}
			add("AZURE_FEDERATED_TOKEN_FILE (AKS workload identity) and %s are both set: an Entra app authenticates with one; unset %s, or take the pod's azure.workload.identity/use label off", other, other)
		case f.OAuthClientSecret != "" || d.AssertionKeyFile != "":
			if d.AzureTenantID == "" {
				add("AZURE_TENANT_ID is required with a client secret or certificate (OAUTH_PROVIDER=azure)")
			}
			if f.OAuthClientID == "" {
				add("OAUTH_CLIENT_ID (the application ID) is required with a client secret or certificate (OAUTH_PROVIDER=azure)")
			}
		case d.AzureFederatedTokenFile != "": // workload identity
			if d.AzureTenantID == "" {
				add("AZURE_TENANT_ID is required with AZURE_FEDERATED_TOKEN_FILE (OAUTH_PROVIDER=azure)")
			}
			if f.OAuthClientID == "" {
				add("OAUTH_CLIENT_ID is required with AZURE_FEDERATED_TOKEN_FILE (OAUTH_PROVIDER=azure): the client ID of the identity the service account is federated with, the webhook's AZURE_CLIENT_ID")
			}
			errs = append(errs, fileReadable("AZURE_FEDERATED_TOKEN_FILE", d.AzureFederatedTokenFile))
		default: // managed identity
			if d.AzureTenantID != "" {
				add("AZURE_TENANT_ID is set but neither OAUTH_CLIENT_SECRET, OAUTH_CLIENT_ASSERTION_KEY_FILE nor AZURE_FEDERATED_TOKEN_FILE: set the app's credential, or unset AZURE_TENANT_ID to use the managed identity (OAUTH_PROVIDER=azure)")
			}
			if len(f.OAuthScopes) > 1 {
				add("OAUTH_SCOPES: a managed identity takes one scope (OAUTH_PROVIDER=azure)")
			}
		}
		if strings.ContainsAny(d.AzureTenantID, "/?#") {
			add("AZURE_TENANT_ID=%q: want a tenant GUID or domain", d.AzureTenantID)
		}
		// The nil GUID is no Entra tenant or application, only the
		// example's (deploy/systemd/stowline.env): left as it is, every
		// token request is refused and every study dead-lettered.
		for name, v := range map[string]string{"AZURE_TENANT_ID": d.AzureTenantID, "OAUTH_CLIENT_ID": f.OAuthClientID} {
			if v == nilGUID {
				add("%s=%q: the example's placeholder: set your own (Entra ID shows both on the app registration's Overview page)", name, v)
			}
		}
		// Entra ID signs with PS256 and needs the certificate's thumbprint.
		errs = append(errs, assertionKeyLoads(d.AssertionKeyFile, "", auth.WithAlgorithm(jose.PS256), auth.WithCertificateRequired()))
	case ProviderGoogle:
		generic["OAUTH_CLIENT_ID"] = f.OAuthClientID != ""
		generic["OAUTH_CLIENT_SECRET"] = f.OAuthClientSecret != ""
		generic["OAUTH_CLIENT_ASSERTION_KEY_FILE"] = d.AssertionKeyFile != ""
		notFor(generic)
		if d.GoogleCredentialsFile != "" {
			// Read as the forwarder reads it: a user's credentials
			// (gcloud auth application-default login) or a .p12 key failed
			// only once NATS was set up, naming the path, not the variable.
			if _, err := google.ServiceAccount(d.GoogleCredentialsFile); err != nil {
				add("GOOGLE_APPLICATION_CREDENTIALS: %w", err)
			}
		}
		if strings.ContainsAny(d.GCEMetadataHost, "/?#@") || d.GCEMetadataHost == "" {
			add("GCE_METADATA_HOST=%q: want host or host:port", d.GCEMetadataHost)
		}
	case ProviderAWS:
		generic["OAUTH_CLIENT_ID"] = f.OAuthClientID != ""
		generic["OAUTH_CLIENT_SECRET"] = f.OAuthClientSecret != ""
		generic["OAUTH_SCOPES"] = len(f.OAuthScopes) > 0
		generic["OAUTH_CLIENT_ASSERTION_KEY_FILE"] = d.AssertionKeyFile != ""
		notFor(generic)
		if d.AWSRegion == "" {
			if _, ok := awsRegionFromURL(f.DICOMwebURL); !ok {
				add("AWS_REGION is required: DICOMWEB_URL is not a HealthImaging endpoint (https://dicom-medical-imaging.REGION.amazonaws.com/datastore/ID) to read it from")
			}
		}
	default:
		add("OAUTH_PROVIDER=%q: want generic, azure, google or aws", d.Provider)
	}
	if (d.TLSCertFile == "") != (d.TLSKeyFile == "") {
		add("TLS_CERT_FILE and TLS_KEY_FILE: set both for mutual TLS, or neither")
	}
	// PEM as the listener's and NATS's files are: a DER file (a Windows
	// CA's .cer export) would otherwise fail only once NATS is set up,
	// naming neither the variable nor the destination.
	pemOK := true
	for name, path := range map[string]string{"TLS_CA_FILE": d.TLSCAFile, "TLS_CERT_FILE": d.TLSCertFile, "TLS_KEY_FILE": d.TLSKeyFile} {
		if err := pemFileReadable(name, path); err != nil {
			errs, pemOK = append(errs, err), false
		}
	}
	// Loaded as the destination's client loads them: a CA file holding
	// only a key, or a certificate that does not match its key, failed
	// only once NATS was set up.
	if pemOK && d.TLSCAFile != "" {
		if _, err := NewTLSConfig(TLSFiles{CAFile: d.TLSCAFile}, nil); err != nil {
			add("TLS_CA_FILE: %w", err)
		}
	}
	if pemOK && d.TLSCertFile != "" && d.TLSKeyFile != "" {
		if _, err := NewTLSConfig(TLSFiles{CertFile: d.TLSCertFile, KeyFile: d.TLSKeyFile}, nil); err != nil {
			add("TLS_CERT_FILE and TLS_KEY_FILE: %w", err)
		}
	}
	return errors.Join(errs...)
}

// genericValidate checks OAUTH_PROVIDER=generic, where no token URL and no
// issuer means no authentication.
func (f *Destination) genericValidate() []error {
	d := &f.DestinationAuth
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	oauth := f.OAuthTokenURL != "" || d.IssuerURL != ""
	if !oauth {
		if f.OAuthClientID != "" || f.OAuthClientSecret != "" || d.AssertionKeyFile != "" {
			add("OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET or OAUTH_CLIENT_ASSERTION_KEY_FILE is set but OAUTH_TOKEN_URL (or OAUTH_ISSUER_URL) is empty")
		}
		return errs
	}
	if f.OAuthTokenURL != "" && d.IssuerURL != "" {
		add("OAUTH_TOKEN_URL and OAUTH_ISSUER_URL are both set: set the token endpoint or the issuer to discover it from")
	}
	if f.OAuthClientID == "" {
		add("OAUTH_CLIENT_ID is required when OAUTH_TOKEN_URL or OAUTH_ISSUER_URL is set")
	}
	switch f.AuthStyle() {
	case AuthStyleBasic, AuthStylePost:
		if f.OAuthClientSecret == "" {
			add("OAUTH_CLIENT_SECRET is required when OAUTH_TOKEN_URL or OAUTH_ISSUER_URL is set (or OAUTH_CLIENT_ASSERTION_KEY_FILE for private_key_jwt)")
		}
		if d.AssertionKeyFile != "" {
			add("OAUTH_CLIENT_ASSERTION_KEY_FILE is set but OAUTH_AUTH_STYLE=%s", d.AuthStyle)
		}
	case AuthStylePrivateKeyJWT:
		if d.AssertionKeyFile == "" {
			add("OAUTH_CLIENT_ASSERTION_KEY_FILE is required with OAUTH_AUTH_STYLE=private_key_jwt")
		}
		if f.OAuthClientSecret != "" {
			add("OAUTH_CLIENT_SECRET and a client assertion key are both set: private_key_jwt sends no secret")
		}
	default:
		add("OAUTH_AUTH_STYLE=%q: want client_secret_basic, client_secret_post or private_key_jwt", d.AuthStyle)
	}
	// PEM as the TLS files are: a DER key or a .pfx failed only once NATS
	// was set up, naming the path but not the variable.
	if f.AuthStyle() == AuthStylePrivateKeyJWT {
		errs = append(errs, assertionKeyLoads(d.AssertionKeyFile, d.AssertionKeyID))
	}
	return errs
}

// AuthStyle is the effective OAUTH_AUTH_STYLE of the generic provider.
func (f *Destination) AuthStyle() string {
	switch {
	case f.DestinationAuth.AuthStyle != "":
		return f.DestinationAuth.AuthStyle
	case f.DestinationAuth.AssertionKeyFile != "":
		return AuthStylePrivateKeyJWT
	}
	return AuthStyleBasic
}

// AWSRegionOrDefault is the region requests to an aws destination are
// signed for: that of a HealthImaging endpoint's DICOMWEB_URL, which
// refuses (403) a signature for any other, else AWS_REGION. EKS and ECS
// set AWS_REGION to the cluster's region, which need not be the data
// store's.
func (f *Destination) AWSRegionOrDefault() string {
	if r, ok := awsRegionFromURL(f.DICOMwebURL); ok {
		return r
	}
	return f.DestinationAuth.AWSRegion
}

func awsRegionFromURL(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", false
	}
	host := u.Hostname()
	for _, prefix := range []string{"dicom-medical-imaging.", "dicom-medical-imaging-fips."} {
		if rest, ok := strings.CutPrefix(host, prefix); ok {
			region, domain, ok := strings.Cut(rest, ".")
			if ok && region != "" && (domain == "amazonaws.com" || domain == "amazonaws.com.cn") {
				return region, true
			}
		}
	}
	return "", false
}

// fileReadable checks that the file a variable names can be read (the
// path is not secret; the content may be).
func fileReadable(name, path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	_ = f.Close()
	return nil
}

// assertionKeyLoads checks OAUTH_CLIENT_ASSERTION_KEY_FILE as the
// destination's token source reads it: a file without the private key,
// or without the certificate Entra ID needs, failed only once NATS was
// set up. The error names the path, never the content.
func assertionKeyLoads(path, keyID string, opts ...auth.AssertionOption) error {
	if path == "" {
		return nil
	}
	if err := pemFileReadable("OAUTH_CLIENT_ASSERTION_KEY_FILE", path); err != nil {
		return err
	}
	if _, err := auth.NewAssertionKey(path, keyID, opts...); err != nil {
		return fmt.Errorf("OAUTH_CLIENT_ASSERTION_KEY_FILE: %w", err)
	}
	return nil
}

// pemFileReadable checks that the PEM file (certificates or a key) a
// variable names can be read and holds a PEM block; the block itself is
// parsed where it is used. The error names the path, never the content.
func pemFileReadable(name, path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if block, _ := pem.Decode(b); block == nil {
		return fmt.Errorf("%s: %s holds no PEM block (-----BEGIN ...-----)", name, path)
	}
	return nil
}

// CheckCommand is what `forwarder check` reads: the forwarder's
// destination settings (the other forwarder variables are read, not used)
// and its Orthanc sources.
type CheckCommand struct {
	Log
	Forwarder
	Orthanc
	// Reconcile and Priority are read for a single host's configuration
	// (NATS_URL empty, singleHost): its ingest, when it reads Orthanc
	// (ReadsOrthanc), takes a slot of the cap too.
	Reconcile  Reconcile
	Priority   Priority
	singleHost bool
}

// readDynamic reads the variables named by ORTHANC_SOURCES and
// DESTINATIONS, and whether NATS_URL is empty: a separate forwarder
// requires it, so the configuration is then a single host's.
func (c *CheckCommand) readDynamic(getenv func(string) string) error {
	c.singleHost = strings.TrimSpace(getenv("NATS_URL")) == ""
	return errors.Join(c.Orthanc.readDynamic(getenv), c.Forwarder.readDynamic(getenv))
}

// Validate checks every part; the errors name the variables.
func (c *CheckCommand) Validate() error {
	return errors.Join(c.Log.Validate(), c.Forwarder.Validate(), c.Orthanc.Validate(), c.Forwarder.rulesNameSources(&c.Orthanc),
		c.Orthanc.capsLeaveEachASlot(c.Forwarder.Served(), c.singleHost && ReadsOrthanc(&c.Priority, &c.Reconcile)))
}

// LogConfig returns the logging part.
func (c *CheckCommand) LogConfig() Log { return c.Log }
