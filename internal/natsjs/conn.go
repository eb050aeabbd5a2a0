package natsjs

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/repeatlog"
)

// ConnectOptions says where JetStream is.
type ConnectOptions struct {
	// URL lists the NATS servers, comma-separated; empty starts the
	// embedded server (single-host mode) with its data in StoreDir.
	URL      string
	StoreDir string
	// Auth holds the client options of an external server's
	// authentication and TLS.
	Auth []nats.Option
	// Unreachable, when set, has Connect wait for an external server
	// that does not answer yet (the services: NATS may come up after
	// them), and is given each failed attempt's error; nil fails at once
	// (the operator's commands).
	Unreachable func(error)
	// pingInterval replaces the keepalive's pingInterval, for tests.
	pingInterval time.Duration
	// firstRetry replaces the first connection's firstRetry, for tests.
	firstRetry time.Duration
}

// Conn is a connection to JetStream, embedded or external.
type Conn struct {
	NC       *nats.Conn
	JS       jetstream.JetStream
	embedded *EmbeddedServer
	closed   chan struct{}
	// reconnected holds one signal of a reconnect not yet taken.
	reconnected chan struct{}
	refused     *refusals
}

// Connect connects to o.URL, or starts the embedded server when it is
// empty. The connection reconnects forever: a NATS restart must never stop
// stowline; nor does a NATS server not reachable yet, which Connect
// waits for until ctx ends. Create-or-update calls through JS are retried when a cluster
// does not answer them (provision.go).
func Connect(ctx context.Context, o ConnectOptions, log *slog.Logger) (*Conn, error) {
	refused := &refusals{log: log, repeated: repeatlog.Failures{Every: time.Minute}, now: time.Now}
	c := &Conn{closed: make(chan struct{}), reconnected: make(chan struct{}, 1), refused: refused}
	opts := []nats.Option{
		nats.ClosedHandler(func(*nats.Conn) { close(c.closed) }),
		nats.Name("stowline"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		// A server lost without a TCP reset (host down, network cut) is
		// noticed only by the keepalive: with nats.go's default (a ping
		// every 2 min, 2 unanswered) the process took the dead connection
		// for live for about 6 minutes, its webhooks waiting out the
		// publish timeout and its in-progress signals lost, while the
		// cluster had elected new leaders in seconds. Now it reconnects
		// 60 to 80 s after the server went silent.
		nats.PingInterval(cmp.Or(o.pingInterval, pingInterval)),
		nats.MaxPingsOutstanding(maxPingsOutstanding),
		// Close drains: what is pending goes out in milliseconds to a
		// server that answers; one that does not (a node drained with the
		// pod) held the stop for the client's default 30 s, past the
		// stop timeout.
		nats.DrainTimeout(drainTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", "url", urlWithoutUser(nc))
			select {
			case c.reconnected <- struct{}{}:
			default: // one pending already says it
			}
		}),
		// The server refuses a publish or subscription the user may not
		// make only asynchronously (a refused JetStream request then just
		// times out), and the client's default handler writes it to
		// stderr as plain text, outside the log: a missing permission
		// would pass for a slow cluster.
		nats.ErrorHandler(refused.handle),
	}
	var err error
	if o.URL == "" {
		// One node, nothing replicates it: an event must be on disk before
		// the webhook answers 202, or a power cut could take back what was
		// accepted. A study makes a handful of writes, a few fsyncs.
		c.embedded, err = StartEmbedded(ctx, EmbeddedOptions{StoreDir: o.StoreDir, ServerName: "stowline-embedded", SyncAlways: true}, log)
		if err != nil {
			return nil, err
		}
		log.Info("embedded JetStream server started (single-host mode)", "store_dir", o.StoreDir)
		c.NC, err = c.embedded.Connect(opts...)
	} else {
		c.NC, err = connectRetrying(ctx, o, append(opts, o.Auth...), log)
		if err == nil {
			log.Info("connected to NATS", "url", urlWithoutUser(c.NC))
		}
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	js, err := jetstream.New(c.NC)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	pjs := provisioningJS{JetStream: js, log: log}
	c.JS = pjs
	if c.embedded != nil {
		c.JS = writableJS{provisioningJS: pjs, embedded: c.embedded}
	}
	c.JS = acceptedJS{JetStream: c.JS, refused: refused}
	return c, nil
}

// Retries of the first connection: the first after firstRetry, each
// next one twice as late, up to maxRetry apart.
const (
	firstRetry = 250 * time.Millisecond
	maxRetry   = 5 * time.Second
)

// connectRetrying connects to o.URL, trying again until it connects or
// ctx ends while no server answers: NATS coming up after stowline (a
// host's reboot, a cluster restarting, JetStream recovering its store)
// is an outage like those the connection reconnects through later, not
// a configuration error. Exiting instead spent the systemd unit's
// restart budget and sent Kubernetes pods into CrashLoopBackOff. The
// errors of a server not reached are retried (refused, timed out, no
// route, a name that does not resolve yet: a NATS host still booting, a
// container or pod not up: waitCures); others are returned at once, as is
// every error without o.Unreachable. A
// stop during the wait returns an error wrapping ctx.Err(): the caller
// tells a stop from a failure by it.
func connectRetrying(ctx context.Context, o ConnectOptions, opts []nats.Option, log *slog.Logger) (*nats.Conn, error) {
	retry := cmp.Or(o.firstRetry, firstRetry)
	for attempt := 1; ; attempt++ {
		nc, err := nats.Connect(o.URL, opts...)
		if err == nil || o.Unreachable == nil || !waitCures(err) {
			return nc, err
		}
		url := urlsWithoutUser(o.URL)
		o.Unreachable(fmt.Errorf("waiting for NATS at %s: %w", url, err))
		log.Warn("cannot reach NATS: retrying (the process waits for it; /readyz says not ready)",
			"url", url, "attempt", attempt, "retry_in", retry.String(), "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no NATS server reached before the stop (%d attempts, last: %v): %w", attempt, err, ctx.Err())
		case <-time.After(retry):
		}
		retry = min(2*retry, maxRetry)
	}
}

// waitCures reports whether err, of a first connection, says the server
// was not reached (yet): refused, reset, timed out, no route, a name not
// resolved, no INFO. Anything else fails the start at once with its
// cause: a refusal (refusedForGood) and the client's own configuration
// that nats.go reads only at the connection (a client key not matching
// its certificate, a CA file holding no certificate, a .creds file
// without its seed), which a wait would only hide behind "cannot reach
// NATS" lines.
func waitCures(err error) bool {
	if refusedForGood(err) {
		return false
	}
	var (
		op  *net.OpError
		dns *net.DNSError
	)
	for _, target := range []error{nats.ErrNoServers, nats.ErrNoInfoReceived, nats.ErrTimeout, os.ErrDeadlineExceeded, io.EOF, io.ErrUnexpectedEOF} {
		if errors.Is(err, target) {
			return true
		}
	}
	// A WebSocket upgrade answered other than 101 (a proxy's 502 or 503
	// while NATS restarts behind it): nats.go gives it no sentinel.
	return errors.As(err, &op) || errors.As(err, &dns) || strings.Contains(err.Error(), "invalid websocket connection")
}

// refusedForGood reports whether err, of a first connection, is one a
// wait does not cure: the server refusing the credentials, or TLS (a
// certificate not trusted or expired, TLS wanted on one side only, the
// client's TLS configuration), even when it comes as a network error.
func refusedForGood(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
		// Even in a TLS handshake: a server slow to answer, or one
		// dropping the connection (restarting), not a refusal.
		return false
	}
	for _, target := range []error{
		nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired,
		nats.ErrNkeysNotSupported, nats.ErrUserButNoSigCB, nats.ErrNkeyButNoSigCB, nats.ErrNoUserCB,
		nats.ErrNkeyAndUser, nats.ErrTokenAlreadySet, nats.ErrUserInfoAlreadySet,
		nats.ErrSecureConnRequired, nats.ErrSecureConnWanted, nats.ErrClientCertOrRootCAsRequired,
		nats.ErrMultipleTLSConfigs, nats.ErrTLS, nats.ErrConnectionNotTLS,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	var (
		verify    *tls.CertificateVerificationError
		record    tls.RecordHeaderError
		alert     tls.AlertError
		authority x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		op        *net.OpError
	)
	if errors.As(err, &verify) || errors.As(err, &record) || errors.As(err, &alert) ||
		errors.As(err, &authority) || errors.As(err, &hostname) || errors.As(err, &invalid) {
		return true
	}
	// The server's TLS alert (a client certificate it refuses) comes as
	// a net.OpError "remote error" around crypto/tls's unexported alert.
	return errors.As(err, &op) && op.Op == "remote error" || strings.HasPrefix(err.Error(), "tls: ")
}

// urlsWithoutUser is NATS_URL's comma-separated URLs without their user
// info (a password or a token), for the log.
func urlsWithoutUser(urls string) string {
	var out []string
	for _, s := range strings.Split(urls, ",") {
		s = strings.TrimSpace(s)
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err != nil {
			out = append(out, "(unparsable URL)")
			continue
		}
		u.User = nil
		out = append(out, u.String())
	}
	return strings.Join(out, ",")
}

// EmbeddedStorageLimits is the embedded server's JetStream storage
// limits (EmbeddedServer.StorageLimits), false when stowline connected
// to a NATS server of its own (NATS_URL) or JetStream is not running.
func (c *Conn) EmbeddedStorageLimits() (file, memory int64, ok bool) {
	if c.embedded == nil {
		return 0, 0, false
	}
	return c.embedded.StorageLimits()
}

// urlWithoutUser is the URL of the server nc is connected to, without
// its user info: nats.go's ConnectedUrlRedacted masks only a password,
// and a user without one is a token (nats://token@host).
func urlWithoutUser(nc *nats.Conn) string {
	u, err := url.Parse(nc.ConnectedUrl())
	if err != nil {
		return ""
	}
	u.User = nil
	return u.String()
}

// PublishRefused reports the event subjects NATS refused this client a
// publish to, until a publish there succeeds or none is refused there for
// refusalMemory (a one-off subject, a source gone, or the permission
// granted with no publish there since). A refused publish is not
// failed by the client: it waits out its time-out (the webhook answers
// 503 after INGEST_PUBLISH_TIMEOUT) while the stream answers Ready.
func (c *Conn) PublishRefused(context.Context) error {
	subjects := c.refused.publishes()
	if len(subjects) == 0 {
		return nil
	}
	return fmt.Errorf("NATS refuses this client publishing to %s (its user lacks the permission: docs/nats-permissions.md); events there are not stored, each publish waits for its time-out", strings.Join(subjects, ", "))
}

// Ready reports whether JetStream answers (the readiness check), and,
// on the embedded server, whether it can write its streams.
func (c *Conn) Ready(ctx context.Context) error {
	// Disconnected, a request only waits out its time-out: say why.
	if st := c.NC.Status(); st != nats.CONNECTED {
		return fmt.Errorf("not connected to NATS (%s; the client reconnects every second)", strings.ToLower(st.String()))
	}
	s, err := c.JS.Stream(ctx, EventStream)
	if errors.Is(err, context.DeadlineExceeded) {
		// Alone, "context deadline exceeded" tells an operator nothing.
		return fmt.Errorf("JetStream stream %s did not answer in time (on a NATS cluster: the server leading it was lost and the others have not elected a new leader yet): %w", EventStream, err)
	}
	if err != nil {
		return fmt.Errorf("JetStream stream %s: %w", EventStream, err)
	}
	// A cluster server whose stream has lost its leader answers the read
	// itself, with no leader, while every write fails: a cluster without
	// quorum would pass for ready.
	if cl := s.CachedInfo().Cluster; cl != nil && cl.Leader == "" {
		return fmt.Errorf("JetStream stream %s has no leader: nothing can be stored or pulled until the NATS cluster elects one (servers lost; with two of three lost, until one is back)", EventStream)
	}
	if c.embedded != nil {
		return c.embedded.writeErrors("")
	}
	return nil
}

// Closed is closed once the connection is closed for good: by Close, or
// by the client giving up (it does after the same authentication error
// twice in a row, reconnects notwithstanding: revoked or expired
// credentials).
func (c *Conn) Closed() <-chan struct{} { return c.closed }

// Reconnected receives after the client reconnected to NATS; reconnects
// made while one is pending are merged into it.
func (c *Conn) Reconnected() <-chan struct{} { return c.reconnected }

// The keepalive: a connection is given up as stale after
// maxPingsOutstanding pings unanswered, one sent each pingInterval (so
// 60 to 80 s after the server went silent). The pings cost a server a
// few bytes a process every 20 s.
const (
	pingInterval        = 20 * time.Second
	maxPingsOutstanding = 3
)

// drainTimeout bounds Close's drain: it is part of the stop timeout
// (forward's settleAfterGrace).
const drainTimeout = 5 * time.Second

// Close drains the connection (pending acks and publishes are flushed,
// for up to drainTimeout) and stops the embedded server, if any.
func (c *Conn) Close() {
	if c.NC != nil {
		if err := c.NC.Drain(); err != nil {
			c.NC.Close()
		}
		// Drain closes the connection when it is done. Its timeout
		// covers the subscriptions only: the flush of the publishes
		// after them may take 5 s more, so the whole is bounded here.
		select {
		case <-c.closed:
		case <-time.After(drainTimeout):
			c.NC.Close()
			<-c.closed
		}
	}
	if c.embedded != nil {
		c.embedded.Shutdown()
	}
}

// refusals logs the client's asynchronous errors. A permission left out
// on purpose (docs/nats-permissions.md says which may be) is refused at
// every attempt, every few seconds: one error a minute names it, the
// repeats are debug lines. It also keeps the event subjects a publish was
// refused on (PublishRefused), until one there succeeds or refusalMemory
// passes without a refusal there.
type refusals struct {
	log      *slog.Logger
	repeated repeatlog.Failures

	mu  sync.Mutex
	now func() time.Time
	// publish holds when each subject's last refusal was seen.
	publish map[string]time.Time
}

// refusalMemory is how long a refused subject is reported after its last
// refusal: a subject still in use and still refused is refused again well
// within it (every event published there).
const refusalMemory = 10 * time.Minute

// publishRefusal finds the subject in the server's "Permissions Violation
// for Publish to "<subject>"" (not "... with Reply of").
var publishRefusal = regexp.MustCompile(`Publish to "([^"]+)"`)

// maxRefusedSubjects bounds what is kept: a source name comes from the
// webhook's requests.
const maxRefusedSubjects = 16

func (r *refusals) handle(_ *nats.Conn, sub *nats.Subscription, err error) {
	attrs := []any{"err", err}
	if sub != nil {
		attrs = append(attrs, "subject", sub.Subject)
	}
	if !errors.Is(err, nats.ErrPermissionViolation) {
		r.log.Warn("NATS client error", attrs...)
		return
	}
	if m := publishRefusal.FindStringSubmatch(err.Error()); m != nil && strings.HasPrefix(m[1], EventSubjectPrefix) {
		r.refusedPublish(m[1])
	}
	if _, ok := r.repeated.Failed(); !ok {
		r.log.Debug("NATS refused this client a subject", attrs...)
		return
	}
	r.log.Error("NATS refused this client a subject (see docs/nats-permissions.md; repeats within a minute are logged at debug level)", attrs...)
}

func (r *refusals) refusedPublish(subject string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if _, ok := r.publish[subject]; ok {
		// Refreshed before the others are forgotten: refused again, it
		// is no subject to forget and announce anew.
		r.publish[subject] = now
		r.forget(now)
		return
	}
	r.forget(now)
	if len(r.publish) >= maxRefusedSubjects {
		return
	}
	if r.publish == nil {
		r.publish = map[string]time.Time{}
	}
	r.publish[subject] = now
	// Every process logs it (the forwarder's audit and re-forwards
	// publish events too); only the ingest reports it in /readyz.
	r.log.Error("NATS refuses this client publishing events to a subject: they are not stored until its user has the permission (see docs/nats-permissions.md)",
		"subject", subject)
}

func (r *refusals) accepted(subject string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.publish[subject]; ok {
		delete(r.publish, subject)
		r.log.Info("NATS accepts this client's publishes to a subject it refused", "subject", subject)
	}
}

// forget drops the subjects not refused for refusalMemory; r.mu is held.
func (r *refusals) forget(now time.Time) {
	for s, last := range r.publish {
		if now.Sub(last) >= refusalMemory {
			delete(r.publish, s)
			r.log.Info("NATS has refused no publish to a subject for 10 minutes; it is no longer reported (its permission granted, or nothing published there since)", "subject", s, "last_refused", last.UTC().Format(time.RFC3339))
		}
	}
}

func (r *refusals) publishes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forget(r.now())
	subjects := make([]string, 0, len(r.publish))
	for s := range r.publish {
		subjects = append(subjects, s)
	}
	slices.Sort(subjects)
	return subjects
}

// acceptedJS clears a subject's refusal once a publish there succeeds
// (its permission granted since, by a server reload, with no reconnect).
type acceptedJS struct {
	jetstream.JetStream
	refused *refusals
}

func (a acceptedJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ack, err := a.JetStream.PublishMsg(ctx, msg, opts...)
	if err == nil {
		a.refused.accepted(msg.Subject)
	}
	return ack, err
}

// writableJS fails a publish at once, saying why, when the embedded
// server can no longer write the stream that takes it (a full disk):
// the publish would only wait for its time-out, which holds the webhook,
// and Orthanc's Lua callback with it, for INGEST_PUBLISH_TIMEOUT.
type writableJS struct {
	provisioningJS
	embedded *EmbeddedServer
}

func (w writableJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if stream := streamOf(msg.Subject); stream != "" {
		if err := w.embedded.publishWriteErrors(stream); err != nil {
			return nil, err
		}
	}
	return w.provisioningJS.PublishMsg(ctx, msg, opts...)
}

// streamOf names the stream that takes a subject stowline publishes
// events or dead letters on, "" for any other.
func streamOf(subject string) string {
	switch {
	case strings.HasPrefix(subject, EventSubjectPrefix), strings.HasPrefix(subject, DestinationSubjectPrefix):
		return EventStream
	case strings.HasPrefix(subject, DeadLetterSubjectPrefix):
		return DeadLetterStream
	}
	return ""
}
