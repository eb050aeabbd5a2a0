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
// computes it from the instances' sizes (dicomweb.WithContentLength).
// See docs/auth.md for why not UNSIGNED-PAYLOAD or aws-chunked.
package awssig

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/stowline/stowline/auth"
)

// Service is HealthImaging's SigV4 signing name.
const Service = "medical-imaging"

const (
	// streamingPayload is the payload hash HealthImaging's STOW-RS
	// documentation signs with.
	streamingPayload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	// emptyPayload is the SHA-256 of no body (GET requests).
	emptyPayload = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

var (
	// errUnknownLength: HealthImaging needs the body length up front.
	errUnknownLength = errors.New("awssig: request body length unknown (HealthImaging needs x-amz-decoded-content-length)")
	// errCredentials: no credentials could be had from the chain.
	errCredentials = errors.New("awssig: no AWS credentials")
)

const (
	// skewRefused is how far AWS's clock (its answer's Date) must be from
	// this host's for a 403 to be taken for a refused signature time:
	// AWS allows 5 minutes.
	skewRefused = 4 * time.Minute
	// minSkewCorrection: closer than this, Date (whole seconds) and the
	// round trip make the difference noise, and no correction is made.
	minSkewCorrection = 30 * time.Second
)

// LoadCredentials returns the standard credential chain for region, cached
// and refreshed margin (at most maxExpiryWindow) before temporary
// credentials expire. The SDK reads AWS_* variables and ~/.aws files
// itself.
func LoadCredentials(ctx context.Context, region string, margin time.Duration) (aws.CredentialsProvider, error) {
	return loadCredentials(ctx, region, margin, credentialFetchTimeout)
}

// credentialFetchTimeout bounds each HTTP request of a credential fetch
// (STS, ECS, SSO; IMDS keeps its own shorter ones). The SDK's cache runs
// one fetch for every caller with their cancellation suppressed, and its
// default HTTP client has no overall timeout: an endpoint that took the
// request and never answered held every later request of the destination
// until a restart.
const credentialFetchTimeout = 30 * time.Second

func loadCredentials(ctx context.Context, region string, margin, fetchTimeout time.Duration) (aws.CredentialsProvider, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(region),
		awsconfig.WithHTTPClient(awshttp.NewBuildableClient().WithTimeout(fetchTimeout)),
		awsconfig.WithCredentialsCacheOptions(func(o *aws.CredentialsCacheOptions) {
			o.ExpiryWindow = expiryWindow(margin)
			o.ExpiryWindowJitterFrac = 0.2
		}))
	if err != nil {
		return nil, fmt.Errorf("%w: loading the AWS configuration: %w", errCredentials, err)
	}
	if cfg.Credentials == nil {
		return nil, fmt.Errorf("%w: the chain found none", errCredentials)
	}
	return cfg.Credentials, nil
}

// maxExpiryWindow bounds the refresh margin of AWS credentials. The SDK's
// cache takes credentials whose window exceeds their lifetime as expired
// on arrival and fetches new ones for every request (an STS call each,
// for a web identity); temporary credentials last at least 15 minutes,
// so at most half of that.
const maxExpiryWindow = 7 * time.Minute

// minExpiryWindow keeps OAUTH_REFRESH_MARGIN's floor, credentials replaced
// at least 20 s before they expire, through the cache's jitter (which
// takes up to a fifth off): with a smaller window the cache handed out
// credentials in their last instants, and a request signed then (its
// connection is made after signing) reached HealthImaging expired, a 403
// that dead-letters the study.
const minExpiryWindow = 25 * time.Second

// expiryWindow is the credentials cache's refresh margin for
// OAUTH_REFRESH_MARGIN.
func expiryWindow(margin time.Duration) time.Duration {
	return min(max(margin, minExpiryWindow), maxExpiryWindow)
}

// Transport returns a RoundTripper that signs every request for region
// with credentials from creds and sends it through base
// (http.DefaultTransport if nil).
//
// A request with a body must have its ContentLength set (>= 1): it is
// signed with the payload hash STREAMING-AWS4-HMAC-SHA256-PAYLOAD and
// x-amz-decoded-content-length, and the body goes out as it is read. A
// request without a body is signed with the hash of no body. The transport
// never retries.
func Transport(creds aws.CredentialsProvider, region string, base http.RoundTripper) (http.RoundTripper, error) {
	if creds == nil {
		return nil, fmt.Errorf("%w: nil credentials provider", errCredentials)
	}
	if region == "" {
		return nil, errors.New("awssig: region is required")
	}
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{creds: creds, region: region, base: base, signer: v4.NewSigner()}, nil
}

type transport struct {
	creds  aws.CredentialsProvider
	region string
	base   http.RoundTripper
	signer *v4.Signer
	// offset is AWS's clock minus this host's, as its last answer's Date
	// said (0 when they agree within minSkewCorrection): requests are
	// signed at AWS's time, as the AWS SDKs do, so a host whose clock
	// drifted minutes is not refused every request until NTP is fixed.
	offset atomic.Int64
	// refetchedAt is when credentials expired by AWS's clock were last
	// fetched again (unix nanoseconds; retrieve).
	refetchedAt atomic.Int64
}

// refetchEvery bounds how often retrieve fetches credentials again.
const refetchEvery = time.Minute

// retrieve returns credentials that are valid at AWS's time. The cache
// judges their expiry by this host's clock: on a host behind AWS's by
// more than its refresh margin it kept handing out credentials AWS had
// expired, every request refused (403 ExpiredToken, read as the
// destination refusing stowline) until the host's clock caught up, at
// every renewal (hourly with IRSA).
func (t *transport) retrieve(ctx context.Context) (aws.Credentials, error) {
	creds, err := t.creds.Retrieve(ctx)
	if err != nil || !creds.CanExpire {
		return creds, err
	}
	now := time.Now()
	if creds.Expires.After(now.Add(time.Duration(t.offset.Load()) + minExpiryWindow)) {
		return creds, nil
	}
	cache, ok := t.creds.(*aws.CredentialsCache)
	last := t.refetchedAt.Load()
	if !ok || now.UnixNano()-last < int64(refetchEvery) || !t.refetchedAt.CompareAndSwap(last, now.UnixNano()) {
		return creds, nil
	}
	cache.Invalidate()
	return t.creds.Retrieve(ctx)
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	closeBody := func() {
		if req.Body != nil {
			_ = req.Body.Close()
		}
	}
	if err := auth.CheckRedirect(req); err != nil {
		closeBody() // a signature goes only to the host it was made for
		return nil, err
	}
	creds, err := t.retrieve(req.Context())
	if err != nil {
		closeBody()
		return nil, fmt.Errorf("%w: %w", errCredentials, err)
	}
	out := req.Clone(req.Context())
	out.Header.Del("Authorization")
	payload := emptyPayload
	switch {
	case req.Body == nil || req.Body == http.NoBody:
		out.ContentLength = 0
	case req.ContentLength > 0:
		payload = streamingPayload
		out.Header.Set("X-Amz-Content-Sha256", streamingPayload)
		out.Header.Set("X-Amz-Decoded-Content-Length", strconv.FormatInt(req.ContentLength, 10))
	default:
		closeBody()
		return nil, errUnknownLength
	}
	used := time.Duration(t.offset.Load())
	if err := sign(req.Context(), t.signer, creds, out, payload, Service, t.region, time.Now().Add(used)); err != nil {
		closeBody()
		return nil, err
	}
	resp, err := t.base.RoundTrip(out)
	if err != nil {
		return nil, err
	}
	off, ok := t.learnOffset(resp)
	if ok && resp.StatusCode == http.StatusForbidden && (off-used).Abs() >= skewRefused {
		// Refused for the time it was signed at, most likely: an error
		// the STOW client sends again at once (auth.ErrClockSkew), not a
		// 403 the forwarder would take for AWS refusing stowline. The
		// next request is signed at AWS's time.
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
		_ = resp.Body.Close()
		return nil, fmt.Errorf("awssig: AWS refused the request (403): %w: AWS's clock is %s from it (NTP?); the next request is signed at AWS's time", auth.ErrClockSkew, off.Round(time.Second))
	}
	return resp, nil
}

// learnOffset keeps the offset of AWS's clock from this host's, read from
// resp's Date; ok is false without a readable Date.
func (t *transport) learnOffset(resp *http.Response) (off time.Duration, ok bool) {
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return 0, false
	}
	off = time.Until(date)
	if off.Abs() < minSkewCorrection {
		t.offset.Store(0)
		return off, true
	}
	t.offset.Store(int64(off))
	return off, true
}

// sign signs req in place (Authorization, X-Amz-Date and, with temporary
// credentials, X-Amz-Security-Token) with the SDK's SigV4 signer: the one
// code path Transport uses, which the published test vectors check.
func sign(ctx context.Context, signer *v4.Signer, creds aws.Credentials, req *http.Request, payloadHash, service, region string, at time.Time) error {
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
