// The webhook Orthanc's Lua script posts stable-study events to: it
// authenticates, validates and publishes them to JetStream, and answers
// only once JetStream has stored the event.

package web

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/ellipsis"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/repeatlog"
	"github.com/stowline/stowline/internal/tracing"
)

// MaxBodyBytes bounds a webhook body; an event is a few hundred bytes.
const MaxBodyBytes = 64 << 10

// WebhookPath is where Orthanc posts events.
const WebhookPath = "/webhooks/orthanc"

// The Retry-After of the webhook's 503 answers: JetStream unavailable
// (the NATS client reconnects every second, a cluster elects a leader in
// seconds), or its storage full, which lasts until an operator frees
// space.
const (
	retryAfterUnavailable = 5 * time.Second
	retryAfterStorageFull = 60 * time.Second
)

// WebhookOptions configures the handler.
type WebhookOptions struct {
	// Tokens are the accepted bearer tokens: the current one first, then
	// those it replaces during a rotation (counted when used).
	Tokens []string
	// HMACSecret, when not empty, also requires a signature of the body
	// (X-Stowline-Timestamp, X-Stowline-Signature) within HMACMaxSkew
	// (default 5m) of the clock.
	HMACSecret  string
	HMACMaxSkew time.Duration
	// RateLimit is requests per second per client IP (0: no limit), with
	// bursts of RateBurst; over it the answer is 429 with Retry-After.
	RateLimit float64
	RateBurst int
	// TrustedProxies are the load balancers whose X-Forwarded-For names
	// the client (for the rate limit and the logs); by default none.
	TrustedProxies []netip.Prefix
	Publisher      events.Publisher
	PublishTimeout time.Duration
	Logger         *slog.Logger
	Registerer     prometheus.Registerer
	// TracerProvider, if set, starts a trace per accepted event (the
	// forwarders continue it); nil: no tracing.
	TracerProvider trace.TracerProvider
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// SourceNames, if set, returns the source names this process's
	// reconciler publishes under (none while it does not know them): an
	// event naming another is queued all the same, and counted and
	// logged, since the Lua script's Stowline.Source and
	// ORTHANC_SOURCE_NAME then differ and each study is queued under
	// both names (docs/guarantees.md, De-duplication). SourcesNamed:
	// the names are configured (ORTHANC_SOURCE_NAME, ORTHANC_SOURCES),
	// so the forwarders refuse the other name rather than forward the
	// study twice; the warning says which.
	SourceNames  func() []string
	SourcesNamed bool
}

// Webhook serves the webhook.
type Webhook struct {
	tokens  [][32]byte
	hmacKey []byte
	maxSkew time.Duration
	limit   *limiter
	proxies []netip.Prefix
	pub     events.Publisher
	timeout time.Duration
	log     *slog.Logger
	tracer  trace.Tracer
	now     func() time.Time
	m       *metrics
	refused refusalLog
	// sourceNames and sourcesNamed are the options' SourceNames and
	// SourcesNamed; otherSource spaces the warnings of events naming
	// another source, one an hour.
	sourceNames  func() []string
	sourcesNamed bool
	otherSource  repeatlog.Failures
}

// NewWebhook validates opts and returns the webhook handler.
func NewWebhook(opts WebhookOptions) (*Webhook, error) {
	if len(opts.Tokens) == 0 {
		return nil, errors.New("ingest: at least one token is required")
	}
	if opts.Publisher == nil {
		return nil, errors.New("ingest: a publisher is required")
	}
	h := &Webhook{
		pub:     opts.Publisher,
		timeout: opts.PublishTimeout,
		log:     opts.Logger,
		tracer:  tracing.Tracer(opts.TracerProvider, "github.com/stowline/stowline/internal/web"),
		now:     opts.Now,

		sourceNames:  opts.SourceNames,
		sourcesNamed: opts.SourcesNamed,
		otherSource:  repeatlog.Failures{Every: time.Hour},
	}
	for _, t := range opts.Tokens {
		if t == "" {
			return nil, errors.New("ingest: empty token")
		}
		// Hashing first makes the comparison constant-time regardless of
		// the presented token's length.
		h.tokens = append(h.tokens, sha256.Sum256([]byte(t)))
	}
	if h.timeout <= 0 {
		h.timeout = 10 * time.Second
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	if opts.HMACSecret != "" {
		h.hmacKey = []byte(opts.HMACSecret)
		h.maxSkew = opts.HMACMaxSkew
		if h.maxSkew <= 0 {
			h.maxSkew = 5 * time.Minute
		}
	}
	if opts.RateLimit > 0 {
		h.limit = newLimiter(opts.RateLimit, opts.RateBurst, h.now)
	}
	h.proxies = opts.TrustedProxies
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	h.m = m
	return h, nil
}

// Mount adds the webhook route to r.
func (h *Webhook) Mount(r chi.Router) {
	// Every method first, POST then over it: the router's own 405 has no
	// body, and whoever tries the URL with curl should read what to do.
	r.HandleFunc(WebhookPath, wrongMethod)
	r.Post(WebhookPath, h.serveWebhook)
}

// wrongMethod answers a request to the webhook other than a POST. Not
// counted or logged: it carries no event, and anyone can send it.
func wrongMethod(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Allow", http.MethodPost)
	WriteError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed: POST an event as JSON, with Authorization: Bearer and the ingest token", r.Method))
}

// accepted is the 202 body.
type accepted struct {
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
	MsgID     string `json:"msgId"`
}

func (h *Webhook) serveWebhook(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	if h.limit != nil {
		if ok, wait := h.limit.allow(limitKey(clientIP(r, h.proxies))); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			h.reject(w, r, http.StatusTooManyRequests, "rate_limited", "too many requests from this address, retry later")
			return
		}
	}
	ok, previous := h.authorized(r)
	if !ok {
		h.reject(w, r, http.StatusUnauthorized, "unauthorized", "missing or invalid bearer token")
		return
	}
	if previous {
		h.m.previousToken.Inc()
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		h.reject(w, r, http.StatusUnsupportedMediaType, "unsupported_media_type",
			fmt.Sprintf("Content-Type must be application/json, got %q", ellipsis.Truncate(r.Header.Get("Content-Type"), 100)))
		return
	}
	if problem := contentCodingProblem(r.Header); problem != "" {
		h.reject(w, r, http.StatusUnsupportedMediaType, "unsupported_media_type", problem)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig {
			h.reject(w, r, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body larger than %d bytes", MaxBodyBytes))
		} else if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			// The server's ReadTimeout cut a body that trickled in: the
			// sender's network, not a malformed event.
			h.reject(w, r, http.StatusRequestTimeout, "timeout", "the body did not arrive within the server's read timeout")
		} else {
			h.reject(w, r, http.StatusBadRequest, "malformed", "reading the body: "+err.Error())
		}
		return
	}
	if h.hmacKey != nil {
		if err := verifySignature(h.hmacKey, h.maxSkew, h.now(), r.Header, body); err != nil {
			h.reject(w, r, http.StatusUnauthorized, "bad_signature", err.Error())
			return
		}
	}
	// After the signature, which covers the bytes as they came.
	body, problem := jsonText(body)
	if problem != "" {
		h.reject(w, r, http.StatusBadRequest, "malformed", problem)
		return
	}
	ev, status, reason, err := decodeEvent(body)
	if err != nil {
		h.reject(w, r, status, reason, err.Error())
		return
	}
	ev.ReceivedAt = h.now().UTC()
	h.lastUpdateAhead(ev, r)

	// A trace starts with each valid event (not with rejected requests,
	// which anyone can send): a new root, whatever the request carried.
	ctx, span := h.tracer.Start(r.Context(), "webhook event", trace.WithNewRoot(),
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithTimestamp(arrived))
	defer span.End()
	log := h.log
	if span.IsRecording() {
		span.SetAttributes(tracing.Event(ev)...)
		span.SetAttributes(tracing.Origin.String("webhook"), tracing.MessageID.String(ev.MsgID()))
		log = log.With("trace_id", span.SpanContext().TraceID().String())
	}
	// The publish is not cut off when the sender stops waiting (Orthanc
	// 1.12's Lua script gives up after 3 s): JetStream may store the event
	// yet, and the log and metrics must say whether it did.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.timeout)
	defer cancel()
	start := time.Now()
	ack, err := h.pub.Publish(ctx, ev)
	h.m.publishSeconds.Observe(time.Since(start).Seconds())
	// The server's WriteTimeout counts from the request's headers: a body
	// trickling for up to ReadTimeout (30 s) and a publish of up to
	// INGEST_PUBLISH_TIMEOUT (50 s) can pass it, and the answer, 202 for
	// an event JetStream stored, would never reach the sender.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
	if err != nil {
		why, reason, answer := "JetStream did not acknowledge", "jetstream_unavailable", "JetStream did not acknowledge the event, retry later: "
		retry := retryAfterUnavailable
		if errors.Is(err, natsjs.ErrStorageFull) {
			// JetStream answered, and refused: nothing is stored until
			// space is freed. Not "unavailable", which sends the reader
			// after a NATS that is up.
			why, reason, answer = "JetStream refused it, its storage is full", "jetstream_full", "the event was not stored, retry later: "
			retry = retryAfterStorageFull
		}
		span.SetStatus(codes.Error, why)
		// This line is the refusal's log: reject would log it again.
		log.Error("event not stored: "+why,
			"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID,
			"study_instance_uid", ev.StudyInstanceUID, "status", http.StatusServiceUnavailable, "reason", reason,
			"remote", r.RemoteAddr, "client", clientIP(r, h.proxies), "err", err)
		// A client that retries is told when: not at once, while NATS
		// reconnects or an operator frees space.
		w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds())))
		h.answerRefusal(w, http.StatusServiceUnavailable, reason, answer+err.Error())
		return
	}
	result := "accepted"
	if ack.Duplicate {
		result = "duplicate"
	}
	if span.IsRecording() {
		span.SetAttributes(tracing.StreamSeq.Int64(int64(ack.Sequence)), tracing.Duplicate.Bool(ack.Duplicate))
	}
	h.m.received.WithLabelValues(result).Inc()
	h.checkSource(ev, log)
	log.Info("event accepted", "source", ev.Source, "orthanc_study_id", ev.OrthancStudyID,
		"study_instance_uid", ev.StudyInstanceUID, "last_update", ev.LastUpdate,
		"stream_seq", ack.Sequence, "duplicate", ack.Duplicate)
	writeJSON(w, http.StatusAccepted, accepted{Stream: ack.Stream, Seq: ack.Sequence, Duplicate: ack.Duplicate, MsgID: ev.MsgID()})
}

// checkSource counts an event stored under a source name the
// reconciler does not publish under, and logs the first and then one an
// hour. The reconciler queues the same study under its own name: with
// the one unnamed Orthanc, whose forwarders take any name, it is
// forwarded twice (at a destination that answers "already exists" for
// any copy, the second copy's instances are conflicts); with configured
// names, the forwarders give the webhook's copy back and then
// dead-letter it as from an unknown source. Also, briefly, where the
// names agree: while the reconciler follows a renamed Orthanc (two
// polls), or a source is added to the Lua script before the ingest.
func (h *Webhook) checkSource(ev *events.StudyStable, log *slog.Logger) {
	if h.sourceNames == nil {
		return
	}
	names := h.sourceNames()
	if len(names) == 0 || slices.Contains(names, ev.Source) {
		return
	}
	h.m.otherSource.Inc()
	n, ok := h.otherSource.Failed()
	if !ok {
		return
	}
	msg := "webhook event names a source the reconciler does not publish under: set the Lua script's Stowline.Source and ORTHANC_SOURCE_NAME alike (or leave both unset), or each study is queued under both names and forwarded twice (docs/guarantees.md, De-duplication)"
	if h.sourcesNamed {
		msg = "webhook event names a source the reconciler does not publish under: unless a forwarder knows that source (one being added), the forwarders give the event back for about 30 minutes, then dead-letter it as from an unknown source, while the reconciler's copy of the study is forwarded (do not replay those letters); set the Lua script's Stowline.Source to the source's ORTHANC_SOURCE_NAME or ORTHANC_SOURCES name (docs/guarantees.md, De-duplication)"
	}
	log.Warn(msg, "source", ev.Source, "reconciled_sources", names, "orthanc_study_id", ev.OrthancStudyID, "events_so_far", n)
}

// lastUpdateAhead counts and logs an event whose lastUpdate is more than
// events.MaxLastUpdateAhead after its arrival: an Orthanc whose clock runs ahead,
// or a forged event. It is queued all the same: refused, the study of an
// Orthanc with a wrong clock would be lost. The forwarders record a
// forged value no later than the study's LastUpdate in Orthanc; a clock
// ahead stamps that one too, and only the clock's mending helps.
func (h *Webhook) lastUpdateAhead(ev *events.StudyStable, r *http.Request) {
	if !ev.LastUpdateAhead(ev.ReceivedAt) {
		return
	}
	h.m.lastUpdateAhead.Inc()
	h.log.Warn("event's lastUpdate is more than a day after its arrival: the sending Orthanc's clock is ahead, or the event is forged (queued all the same; a forged value is not recorded, but a clock ahead stamps the study in Orthanc too and its ledger records stay ahead until it is mended)",
		"source", ev.Source, "orthanc_study_id", ev.OrthancStudyID, "last_update", ev.LastUpdate,
		"received_at", ev.ReceivedAt.Format(time.RFC3339), "client", clientIP(r, h.proxies))
}

// decodeEvent reads one JSON event and validates it; on error it returns the
// HTTP status and the metric reason.
func decodeEvent(data []byte) (*events.StudyStable, int, string, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var ev events.StudyStable
	if err := dec.Decode(&ev); err != nil {
		if err := newerVersion(data); err != nil {
			return nil, http.StatusBadRequest, "invalid", err
		}
		return nil, http.StatusBadRequest, "malformed", fmt.Errorf("malformed JSON: %s", jsonProblem(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, http.StatusBadRequest, "malformed", errors.New("malformed JSON: more than one value in the body")
	}
	if !ev.ReceivedAt.IsZero() {
		return nil, http.StatusBadRequest, "invalid", errors.New(`field "receivedAt": is set by the ingest, not by the sender`)
	}
	if err := ev.Validate(); err != nil {
		if errors.Is(err, events.ErrNewerVersion) {
			err = fmt.Errorf("%w: %s", err, newerSender)
		}
		return nil, http.StatusBadRequest, "invalid", err
	}
	return &ev, 0, "", nil
}

// newerSender is the advice for an event of a newer version.
const newerSender = "the sender is newer than this ingest, upgrade the ingest first"

// newerVersion is the answer to a body this build could not read when it
// is an event of a newer version (a Lua script upgraded before the
// ingest): a field that version added is refused as unknown, and the
// sender is to hear of the version, not of the field. nil otherwise. It
// runs only for a body that failed, so an accepted event is parsed once.
func newerVersion(data []byte) error {
	var head struct {
		Type    string `json:"type"`
		Version int    `json:"version"`
	}
	if json.Unmarshal(data, &head) != nil || head.Type != events.TypeStudyStable || head.Version <= events.Version {
		return nil
	}
	err := (&events.StudyStable{Type: head.Type, Version: head.Version}).Validate()
	return fmt.Errorf("%w: %s", err, newerSender)
}

// jsonProblem says what is wrong without echoing the body back: the
// answer is also logged, and a value could be patient data.
func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return "the body must be one JSON object, the event"
		}
		// In JSON's words, not Go's: a sender knows no "events.Priority".
		kind := "string"
		switch typeErr.Type.Kind() {
		case reflect.Int, reflect.Int64:
			kind = "whole number"
		case reflect.Struct:
			kind = "JSON object"
		}
		return fmt.Sprintf("field %q must be a %s", typeErr.Field, kind)
	}
	// receivedAt is the event's one time field; time's error quotes the
	// value.
	var timeErr *time.ParseError
	if errors.As(err, &timeErr) {
		return `field "receivedAt": is set by the ingest, not by the sender`
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		if len(f) > maxFieldName {
			return "unknown field " + f[:maxFieldName] + "…"
		}
		return "unknown field " + f
	}
	if errors.Is(err, io.EOF) {
		return "empty body"
	}
	return msg
}

// maxFieldName bounds an unknown field's name in an answer.
const maxFieldName = 40

// bearerToken returns the token of an "Authorization: Bearer <token>"
// header; the scheme's case does not matter (RFC 9110, 11.1), and one or
// more spaces may follow it (11.4: 1*SP).
func bearerToken(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimLeft(token, " "), true
}

// authorized reports a request carrying one of the tokens; previous, one
// other than the current (first) token.
func (h *Webhook) authorized(r *http.Request) (ok, previous bool) {
	token, ok := bearerToken(r)
	if !ok || token == "" {
		return false, false
	}
	sum := sha256.Sum256([]byte(token))
	current, other := 0, 0
	for i, t := range h.tokens {
		m := subtle.ConstantTimeCompare(sum[:], t[:])
		if i == 0 {
			current = m
		} else {
			other |= m
		}
	}
	return current|other == 1, current == 0 && other == 1
}

func (h *Webhook) reject(w http.ResponseWriter, r *http.Request, status int, reason, msg string) {
	// Every refusal is counted; the log has a line a minute per reason
	// and client at most. Anyone who can reach the webhook can be refused
	// without a token: the rate limit alone let through 50 lines a second
	// per address, per /64 of an IPv6 /48, and all of them with
	// INGEST_RATE_LIMIT=0. Per client, so that a flood does not hide the
	// Orthanc whose token is wrong. A flood the rate limit refuses is
	// not logged.
	if reason != "rate_limited" {
		client := clientIP(r, h.proxies)
		if n, ok := h.refused.refused(reason, client, h.now()); ok {
			h.log.Warn("event rejected", "status", status, "reason", reason, "remote", r.RemoteAddr, "client", client, "err", msg,
				"refusals_since_last_line", n)
		}
	}
	h.answerRefusal(w, status, reason, msg)
}

// refusalLogEvery is the least time between two "event rejected" lines
// of one reason and client.
const refusalLogEvery = time.Minute

// refusalClients bounds the clients refusalLog tells apart; beyond them
// (a flood from many addresses), the others share one count per reason.
const refusalClients = 1000

// refusalLog spaces the "event rejected" lines of each reason and
// client: the first is logged, then the first a minute or more after the
// last line, which counts the refusals since. Safe for concurrent use.
type refusalLog struct {
	mu      sync.Mutex
	clients map[refusalKey]*clientRefusals
	swept   time.Time // the last sweep of quiet clients
}

type refusalKey struct {
	reason string
	client string // "": the clients past refusalClients
}

type clientRefusals struct {
	since  int       // refusals since the last line
	logged time.Time // the last line; zero: none yet
}

// refused counts a refusal for reason from client at now; log says
// whether to log it, n the refusals since the last line of its reason and
// client, this one included.
func (l *refusalLog) refused(reason, client string, now time.Time) (n int, log bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.clients == nil {
		l.clients = map[refusalKey]*clientRefusals{}
	}
	// Keyed as the rate limit keys clients: an IPv6 host's /64, whose
	// addresses it may change at will.
	key := refusalKey{reason, limitKey(client)}
	cr := l.clients[key]
	if cr == nil && len(l.clients) >= refusalClients {
		// A client quiet for a minute would be logged at once anyway.
		// Swept once a minute at most: a flood from many addresses would
		// otherwise scan the table at each refusal.
		if now.Sub(l.swept) >= refusalLogEvery {
			l.swept = now
			for k, c := range l.clients {
				if now.Sub(c.logged) >= refusalLogEvery {
					delete(l.clients, k)
				}
			}
		}
		if len(l.clients) >= refusalClients {
			key.client = ""
			cr = l.clients[key]
		}
	}
	if cr == nil {
		cr = &clientRefusals{}
		l.clients[key] = cr
	}
	cr.since++
	if !cr.logged.IsZero() && now.Sub(cr.logged) < refusalLogEvery {
		return cr.since, false
	}
	n, cr.since, cr.logged = cr.since, 0, now
	return n, true
}

// answerRefusal counts a refusal and answers it, without logging it.
func (h *Webhook) answerRefusal(w http.ResponseWriter, status int, reason, msg string) {
	h.m.rejected.WithLabelValues(reason).Inc()
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="stowline"`)
	}
	WriteError(w, status, msg)
}
