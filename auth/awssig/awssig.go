// Package awssig signs requests to AWS HealthImaging's DICOMweb API with
// AWS Signature Version 4 (service medical-imaging), with credentials from
// the SDK's standard chain (environment, shared config and credentials
// files, web identity / IRSA, ECS and EC2 instance metadata).
//
// The request body is never read or hashed by the signer: it still streams
// from Orthanc. HealthImaging's documented STOW-RS request (Storing
// instances with STOW-RS, AWS HealthImaging Developer Guide) signs the
// payload as "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" and gives the body
// length in x-amz-decoded-content-length, with the plain body; the
// signature then covers the method, URL and headers (among them
// Content-Length and Content-Type, whose boundary is random per request).
// The body length must therefore be known before sending: the STOW client
// computes it from the instances' sizes (stow.WithContentLength).
// See docs/auth.md for why not UNSIGNED-PAYLOAD or aws-chunked.
package awssig

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
)

// Service is HealthImaging's SigV4 signing name.
const Service = "medical-imaging"

const (
	// StreamingPayload is the payload hash HealthImaging's STOW-RS
	// documentation signs with.
	StreamingPayload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	// EmptyPayload is the SHA-256 of no body (GET requests).
	EmptyPayload = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	// MaxRequestBytes is HealthImaging's limit of DICOM data per STOW-RS
	// request ("up to 1GB"; read as 10^9 bytes, the stricter reading).
	MaxRequestBytes = 1_000_000_000
)

// Sentinel errors; test for them with errors.Is.
var (
	// ErrUnknownLength: HealthImaging needs the body length up front.
	ErrUnknownLength = errors.New("awssig: request body length unknown (HealthImaging needs x-amz-decoded-content-length)")
	// ErrCredentials: no credentials could be had from the chain.
	ErrCredentials = errors.New("awssig: no AWS credentials")
)

// hostPattern matches HealthImaging's DICOMweb endpoints.
var hostPattern = regexp.MustCompile(`^dicom-medical-imaging(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$`)

// RegionFromHost reads the region from a HealthImaging DICOMweb host name,
// e.g. dicom-medical-imaging.eu-west-1.amazonaws.com.
func RegionFromHost(host string) (string, bool) {
	m := hostPattern.FindStringSubmatch(host)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// LoadCredentials returns the standard credential chain for region, cached
// and refreshed five minutes (or margin) before temporary credentials
// expire. The SDK reads AWS_* variables and ~/.aws files itself.
func LoadCredentials(ctx context.Context, region string, margin time.Duration) (aws.CredentialsProvider, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(region),
		awsconfig.WithCredentialsCacheOptions(func(o *aws.CredentialsCacheOptions) {
			o.ExpiryWindow = margin
			o.ExpiryWindowJitterFrac = 0.2
		}))
	if err != nil {
		return nil, fmt.Errorf("%w: loading the AWS configuration: %w", ErrCredentials, err)
	}
	if cfg.Credentials == nil {
		return nil, fmt.Errorf("%w: the chain found none", ErrCredentials)
	}
	return cfg.Credentials, nil
}

// Option configures a Transport.
type Option func(*transport)

// WithService sets the signing name (default Service).
func WithService(s string) Option { return func(t *transport) { t.service = s } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(t *transport) { t.now = now } }

// Transport returns a RoundTripper that signs every request for region
// with credentials from creds and sends it through base
// (http.DefaultTransport if nil).
//
// A request with a body must have its ContentLength set (>= 1): it is
// signed with StreamingPayload and x-amz-decoded-content-length, and the
// body goes out as it is read. A request without a body is signed with
// EmptyPayload. The transport never retries.
func Transport(creds aws.CredentialsProvider, region string, base http.RoundTripper, opts ...Option) (http.RoundTripper, error) {
	if creds == nil {
		return nil, fmt.Errorf("%w: nil credentials provider", ErrCredentials)
	}
	if region == "" {
		return nil, errors.New("awssig: region is required")
	}
	if base == nil {
		base = http.DefaultTransport
	}
	t := &transport{creds: creds, region: region, base: base, service: Service, now: time.Now, signer: v4.NewSigner()}
	for _, opt := range opts {
		opt(t)
	}
	return t, nil
}

type transport struct {
	creds   aws.CredentialsProvider
	region  string
	service string
	base    http.RoundTripper
	now     func() time.Time
	signer  *v4.Signer
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	closeBody := func() {
		if req.Body != nil {
			_ = req.Body.Close()
		}
	}
	creds, err := t.creds.Retrieve(req.Context())
	if err != nil {
		closeBody()
		return nil, fmt.Errorf("%w: %w", ErrCredentials, err)
	}
	out := req.Clone(req.Context())
	out.Header.Del("Authorization")
	payload := EmptyPayload
	switch {
	case req.Body == nil || req.Body == http.NoBody:
		out.ContentLength = 0
	case req.ContentLength > 0:
		payload = StreamingPayload
		out.Header.Set("X-Amz-Content-Sha256", StreamingPayload)
		out.Header.Set("X-Amz-Decoded-Content-Length", strconv.FormatInt(req.ContentLength, 10))
	default:
		closeBody()
		return nil, ErrUnknownLength
	}
	if err := Sign(req.Context(), t.signer, creds, out, payload, t.service, t.region, t.now()); err != nil {
		closeBody()
		return nil, err
	}
	return t.base.RoundTrip(out)
}

// Sign signs req in place (Authorization, X-Amz-Date and, with temporary
// credentials, X-Amz-Security-Token) with the SDK's SigV4 signer: the one
// code path Transport uses, exposed for the published test vectors.
func Sign(ctx context.Context, signer *v4.Signer, creds aws.Credentials, req *http.Request, payloadHash, service, region string, at time.Time) error {
	if err := signer.SignHTTP(ctx, creds, req, payloadHash, service, region, at); err != nil {
		return fmt.Errorf("awssig: sign: %w", err)
	}
	return nil
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach base.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
