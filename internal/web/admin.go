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
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/ellipsis"
)

// AdminAPI is the admin HTTP API over dead letters and re-forwarding,
// behind its own bearer token (never the webhook's).
type AdminAPI struct {
	Store *deadletter.Store
	JS    jetstream.JetStream
	Token string
	// Destinations are the configured destinations: a reforward names one
	// of them, or none for all.
	Destinations []string
	// TrustedProxies are the reverse proxies whose X-Forwarded-For names
	// the client for the wrong-token throttle and the logs.
	TrustedProxies []netip.Prefix
	Log            *slog.Logger
}

// Mount adds the /admin routes to r.
//
//	GET  /admin/deadletters            ?destination ?source ?seq ?study ?orthancStudyId ?class ?reason ?since ?limit ?after
//	GET  /admin/deadletters/{seq}
//	POST /admin/deadletters/replay     {"destination":…, "study":…, "all":true, "dryRun":true, …}
//	POST /admin/deadletters/purge      same body
//	POST /admin/reforward              {"destination":…, "since":…, "until":…, "dryRun":true}
//	GET  /admin/studies/{source}/{orthancStudyId}
//
// A client address that presented a wrong token ten times is refused with
// 429 for a while, its token unchecked (guessGuard); each wrong token is
// logged with the client's address.
func (a *AdminAPI) Mount(r chi.Router) {
	want := sha256.Sum256([]byte(a.Token))
	guard := newGuessGuard("admin API", a.TrustedProxies, a.Log, WriteError)
	r.Route("/admin", func(r chi.Router) {
		r.Use(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				authorized := func() (bool, bool) {
					tok, ok := bearerToken(req)
					got := sha256.Sum256([]byte(tok))
					presented := ok && tok != ""
					// An empty token never opens the API, whatever mounted it.
					return presented, presented && a.Token != "" && subtle.ConstantTimeCompare(got[:], want[:]) == 1
				}
				unauthorized := func() {
					w.Header().Set("WWW-Authenticate", `Bearer realm="stowline-admin"`)
					WriteError(w, http.StatusUnauthorized, "missing or invalid admin bearer token")
				}
				if guard.check(w, req, authorized, unauthorized) {
					next.ServeHTTP(w, req)
				}
			})
		})
		r.Get("/deadletters", a.list)
		r.Get("/deadletters/{seq}", a.show)
		r.Post("/deadletters/replay", a.mutate(true))
		r.Post("/deadletters/purge", a.mutate(false))
		r.Post("/reforward", a.reforward)
		r.Get("/studies/{source}/{orthancStudyId}", a.study)
		// A GET of replay or purge would reach /deadletters/{seq}, and be
		// told its seq is not a number.
		r.Get("/deadletters/replay", adminMethodNotAllowed)
		r.Get("/deadletters/purge", adminMethodNotAllowed)
		r.MethodNotAllowed(adminMethodNotAllowed)
		r.NotFound(func(w http.ResponseWriter, req *http.Request) {
			WriteError(w, http.StatusNotFound, "no admin endpoint "+req.Method+" "+req.URL.Path+"; the endpoints: "+adminEndpoints)
		})
	})
}

// adminEndpoints names the admin API's endpoints, for the answer to a
// wrong path or method.
const adminEndpoints = "GET /admin/deadletters, GET /admin/deadletters/{seq}, POST /admin/deadletters/replay, POST /admin/deadletters/purge, POST /admin/reforward, GET /admin/studies/{source}/{orthancStudyId}"

// adminMethodNotAllowed answers, in JSON as every error of the API, a
// request with the wrong method for its path.
func adminMethodNotAllowed(w http.ResponseWriter, req *http.Request) {
	allow := http.MethodGet
	switch strings.TrimSuffix(req.URL.Path, "/") {
	case "/admin/deadletters/replay", "/admin/deadletters/purge", "/admin/reforward":
		allow = http.MethodPost
	}
	w.Header().Set("Allow", allow)
	WriteError(w, http.StatusMethodNotAllowed, req.Method+" "+req.URL.Path+": use "+allow)
}

func (a *AdminAPI) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	// A misspelt key (?clas=permanent) listed every letter.
	keys := []string{"destination", "source", "seq", "study", "orthancStudyId", "class", "reason", "since", "limit", "after"}
	for k, v := range q {
		if !slices.Contains(keys, k) {
			WriteError(w, http.StatusBadRequest, ellipsis.Truncate(k, 40)+": not a key of this listing; keys: "+strings.Join(keys, ", "))
			return
		}
		if len(v) > 1 { // only the first was read
			WriteError(w, http.StatusBadRequest, k+": given twice: give it once")
			return
		}
	}
	args := deadletter.FilterArgs{Destination: q.Get("destination"), Source: q.Get("source"), Seq: q.Get("seq"), Study: q.Get("study"), OrthancStudyID: q.Get("orthancStudyId"),
		Class: q.Get("class"), Reason: q.Get("reason"), Since: q.Get("since")}
	for _, k := range []string{"destination", "source", "seq", "study", "orthancStudyId", "class", "reason", "since"} {
		if q.Has(k) && q.Get(k) == "" {
			args.Blank = append(args.Blank, k)
		}
	}
	f, err := args.Filter()
	if err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	if f.Empty() {
		f.All = true
	}
	// An empty after= (a script's unset next) would start again from
	// the first page, looping for ever; an empty limit= is refused alike.
	for _, k := range []string{"limit", "after"} {
		if q.Has(k) && q.Get(k) == "" {
			WriteError(w, http.StatusBadRequest, k+": empty: give a value or leave it out")
			return
		}
	}
	limit, after := defaultPage, uint64(0)
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxPage {
			WriteError(w, http.StatusBadRequest, "limit: want 1 to "+strconv.Itoa(maxPage))
			return
		}
	}
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			WriteError(w, http.StatusBadRequest, "after: want a dead-letter sequence number (the previous answer's next)")
			return
		}
	}
	entries, more, err := a.Store.Page(r.Context(), f, after, limit, maxPageBytes)
	if err != nil {
		a.fail(w, "list dead letters", err)
		return
	}
	answer := map[string]any{"entries": entries}
	if more {
		answer["next"] = entries[len(entries)-1].Seq
	}
	answerLate(w, http.StatusOK, answer)
}

// defaultPage, maxPage and maxPageBytes bound a dead-letter listing: a
// letter holds up to 1000 failed instances (half a megabyte), and an
// outage's thousands of letters in one answer would hold gigabytes in
// the forwarder. A page ends early (with next) past 32 MB of letters.
const (
	defaultPage  = 100
	maxPage      = 1000
	maxPageBytes = 32 << 20
)

// maxSummaries bounds the letters a replay or purge answer names, and
// the events a re-forward answer names (a few hundred bytes each); count
// says how many there were.
const maxSummaries = 1000

// letterSummary is what a replay or purge answer says of each letter:
// which it was, not its failed instances (a thousand, for each of
// thousands of letters after an outage); GET /admin/deadletters/{seq}
// shows a letter whole.
type letterSummary struct {
	Seq              uint64    `json:"seq"`
	Destination      string    `json:"destination,omitempty"`
	Source           string    `json:"source"`
	OrthancStudyID   string    `json:"orthancStudyId"`
	StudyInstanceUID string    `json:"studyInstanceUid"`
	Class            string    `json:"class"`
	Reason           string    `json:"reason"`
	DeadLetteredAt   time.Time `json:"deadLetteredAt"`
}

func summary(e *deadletter.Entry) letterSummary {
	return letterSummary{Seq: e.Seq, Destination: deadletter.DestinationOf(&e.DeadLetter), Source: e.Event.Source,
		OrthancStudyID: e.Event.OrthancStudyID, StudyInstanceUID: e.Event.StudyInstanceUID, Class: string(e.Class),
		Reason: e.Reason, DeadLetteredAt: e.DeadLetteredAt}
}

// letterAttrs name a dead letter's study in the log lines of a replay or
// a purge, the same from the admin API and the status page.
func letterAttrs(e *deadletter.Entry) []any {
	return []any{"dead_letter_seq", e.Seq, "destination", deadletter.DestinationOf(&e.DeadLetter), "source", e.Event.Source,
		"orthanc_study_id", e.Event.OrthancStudyID, "study_instance_uid", e.Event.StudyInstanceUID}
}

func (a *AdminAPI) show(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseUint(chi.URLParam(r, "seq"), 10, 64)
	if err != nil || seq == 0 {
		WriteError(w, http.StatusBadRequest, "seq: not a dead-letter sequence number")
		return
	}
	e, err := a.Store.Get(r.Context(), seq)
	if errors.Is(err, deadletter.ErrNotFound) {
		WriteError(w, http.StatusNotFound, err.Error())
		return
	}
	if err != nil {
		a.fail(w, "show dead letter", err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

type mutateRequest struct {
	deadletter.FilterArgs
	// Seq stands for FilterArgs.Seq: the letter's number as the listings
	// answer it, a JSON number, or a string.
	Seq    json.RawMessage `json:"seq,omitempty"`
	DryRun bool            `json:"dryRun"`
	// Priority is a replay's lane (low unless given): a purge has none.
	Priority string `json:"priority,omitempty"`
}

// laneOf is a request's "priority": the low lane unless given, as the
// commands' --priority.
func laneOf(priority string) (events.Priority, error) {
	if priority == "" {
		return events.PriorityLow, nil
	}
	lane, err := events.ParsePriority(priority)
	if err != nil {
		return "", fmt.Errorf("priority: %w", err)
	}
	return lane, nil
}

// givenEmpty refuses a JSON object's keys given "" or null ({"study": ""}
// from a script's unset variable, "destination": null from a template):
// dropped, such a filter, destination or until would widen a purge, a
// replay or a re-forward (to every letter, every destination, now). One
// rule for every key of both handlers; the error names each.
func givenEmpty(raw json.RawMessage) error {
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return nil // the strict decode says why
	}
	var given []string
	for k, v := range fields {
		var s string
		switch {
		case string(bytes.TrimSpace(v)) == "null":
			given = append(given, k+": null")
		case json.Unmarshal(v, &s) == nil && s == "":
			given = append(given, k+": empty")
		}
	}
	if len(given) == 0 {
		return nil
	}
	slices.Sort(given)
	return errors.New(strings.Join(given, "; ") + ": give a value or leave it out")
}

// repeatedKeys refuses a JSON object that gives a key twice, in any
// case (encoding/json matches keys whatever their case and keeps the
// last): which one was meant cannot be told.
func repeatedKeys(raw json.RawMessage) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil // not an object: the strict decode says why
	}
	var seen []string
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil
		}
		key, _ := t.(string)
		for _, k := range seen {
			if strings.EqualFold(k, key) {
				return fmt.Errorf("%s: given twice (keys match whatever their case): give it once", ellipsis.Truncate(key, 40))
			}
		}
		seen = append(seen, key)
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return nil
		}
	}
	return nil
}

// seqArg is the text of a seq given as a JSON number or string, for
// FilterArgs.Filter to check (givenEmpty refused "" and null).
func seqArg(raw json.RawMessage) string {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return string(raw)
	}
	return s
}

func (a *AdminAPI) mutate(replay bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req mutateRequest
		if !decodeBody(w, r, &req) {
			return
		}
		req.FilterArgs.Seq = seqArg(req.Seq)
		f, err := req.Filter()
		if err != nil {
			WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		if f.Empty() {
			WriteError(w, http.StatusBadRequest, "give a filter (destination, source, seq, study, orthancStudyId, class, reason, since) or \"all\": true")
			return
		}
		if req.Priority != "" && !replay {
			WriteError(w, http.StatusBadRequest, "priority: a purge queues nothing (a replay's lane)")
			return
		}
		lane, err := laneOf(req.Priority)
		if err != nil {
			WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		op, what, done := a.Store.Purge, "purge", "purged"
		if replay {
			op = func(ctx context.Context, f deadletter.Filter, dryRun bool, done func(*deadletter.Entry)) (int, error) {
				return a.Store.ReplayIn(ctx, f, lane, dryRun, done)
			}
			what, done = "replay", "replayed"
		}
		// Summaries only, of the first maxSummaries letters: the letters
		// themselves may hold up to 512 KB each, and the store reads them
		// a page at a time.
		entries := []letterSummary{}
		client := clientIP(r, a.TrustedProxies)
		n, err := op(r.Context(), f, req.DryRun, func(e *deadletter.Entry) {
			s := summary(e)
			if len(entries) < maxSummaries {
				entries = append(entries, s)
			}
			// Each study by name, as the status page's replay: a purge
			// is for good, and the log is what says which studies it took.
			if !req.DryRun {
				a.Log.Info("dead letter "+done+" through the admin API",
					append(letterAttrs(e), "class", s.Class, "remote", r.RemoteAddr, "client", client)...)
			}
		})
		answer := map[string]any{"dryRun": req.DryRun, "count": n, "entries": entries}
		if n > len(entries) {
			answer["entriesOmitted"] = n - len(entries)
		}
		if err != nil {
			a.failPartway(w, what+" dead letters", err, answer)
			return
		}
		if !req.DryRun {
			a.Log.Info("dead letters "+done+" through the admin API", "count", n, "remote", r.RemoteAddr, "client", client)
		}
		answerLate(w, http.StatusOK, answer)
	}
}

type reforwardRequest struct {
	// Destination, if set, re-forwards to that destination only; given
	// "" or null it is refused (givenEmpty), not taken for every
	// destination.
	Destination string `json:"destination"`
	Since       string `json:"since"`
	Until       string `json:"until"`
	DryRun      bool   `json:"dryRun"`
	// Priority is the lane (low unless given).
	Priority string `json:"priority,omitempty"`
}

func (a *AdminAPI) reforward(w http.ResponseWriter, r *http.Request) {
	var req reforwardRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Since == "" {
		WriteError(w, http.StatusBadRequest, "since: is required")
		return
	}
	destination := req.Destination
	if destination != "" {
		if !slices.Contains(a.Destinations, destination) {
			WriteError(w, http.StatusBadRequest, "destination: "+strconv.Quote(destination)+" is not a configured destination ("+strings.Join(a.Destinations, ", ")+")")
			return
		}
	}
	since, err := deadletter.ParseTime(req.Since)
	if err != nil {
		WriteError(w, http.StatusBadRequest, "since: "+err.Error())
		return
	}
	lane, err := laneOf(req.Priority)
	if err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	var until time.Time
	if req.Until != "" {
		if until, err = deadletter.ParseTime(req.Until); err != nil {
			WriteError(w, http.StatusBadRequest, "until: "+err.Error())
			return
		}
		if !until.After(since) {
			WriteError(w, http.StatusBadRequest, "until: must be after since")
			return
		}
	}
	evs, unreadable, err := deadletter.ReforwardIn(r.Context(), a.JS, destination, lane, since, until, req.DryRun)
	count := len(evs)
	// The first maxSummaries events only, as a replay's letters: a window
	// of a busy week holds tens of thousands. A copy of them, so that the
	// window's are not held while the answer is built and written.
	answer := map[string]any{"dryRun": req.DryRun, "count": count, "events": slices.Clone(evs[:min(count, maxSummaries)])}
	evs = nil
	if count > maxSummaries {
		answer["eventsOmitted"] = count - maxSummaries
	}
	if note := deadletter.WindowNote(r.Context(), a.JS, since, until); note != "" {
		answer["note"] = note
	}
	if unreadable > 0 {
		answer["unreadableEvents"] = unreadable
		answer["unreadableNote"] = deadletter.UnreadableNote(unreadable)
	}
	if err != nil {
		a.failPartway(w, "reforward", err, answer)
		return
	}
	if !req.DryRun {
		a.Log.Info("events re-forwarded through the admin API", "count", count, "destination", destination, "remote", r.RemoteAddr, "client", clientIP(r, a.TrustedProxies))
	}
	answerLate(w, http.StatusOK, answer)
}

// decodeBody decodes the request's one JSON object into v, unknown keys
// and keys given "" or null refused; it answers 400 and reports false
// otherwise.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	if problem := contentCodingProblem(r.Header); problem != "" {
		WriteError(w, http.StatusUnsupportedMediaType, problem)
		return false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			WriteError(w, http.StatusRequestEntityTooLarge, "body over 64 KiB: send one JSON object of filters")
			return false
		}
		WriteError(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return false
	}
	body, problem := jsonText(body)
	if problem != "" {
		WriteError(w, http.StatusBadRequest, problem)
		return false
	}
	var raw json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		if errors.Is(err, io.EOF) { // Go's answer would be "EOF"
			WriteError(w, http.StatusBadRequest, `empty body: send one JSON object: to replay or purge, as {"seq":42,"dryRun":true}; to re-forward, as {"since":"2026-11-01T00:00Z"}`)
			return false
		}
		WriteError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return false
	}
	// Only the first value would be acted on: {"all":true} {"dryRun":true}
	// would purge for good.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		WriteError(w, http.StatusBadRequest, "malformed JSON body: more than one value (send one JSON object)")
		return false
	}
	// A key given twice is refused: the decode keeps the last, so
	// {"all":true,"dryRun":true,"dryRun":false} purged for good.
	if err := repeatedKeys(raw); err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return false
	}
	// A key given "" or null is refused before it can mean "any".
	if err := givenEmpty(raw); err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return false
	}
	strict := json.NewDecoder(bytes.NewReader(raw))
	strict.DisallowUnknownFields()
	if err := strict.Decode(v); err != nil {
		WriteError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

func (a *AdminAPI) fail(w http.ResponseWriter, what string, err error) {
	a.Log.Error(what+" failed", "err", err)
	answerLate(w, failureStatus(err), map[string]string{"error": what + ": " + err.Error()})
}

// failPartway answers an operation that failed after doing part of its
// work: answer holds what it did (count, and the letters or events), so
// that the operator retries the rest only. A re-forward retried whole
// queues again every study it had queued.
func (a *AdminAPI) failPartway(w http.ResponseWriter, what string, err error, answer map[string]any) {
	a.Log.Error(what+" failed", "err", err, "count", answer["count"], "dry_run", answer["dryRun"])
	answer["error"] = what + ": " + err.Error()
	answerLate(w, failureStatus(err), answer)
}

// answerLate writes the answer of an operation that may have run longer
// than the server's WriteTimeout, which counts from the request: a
// replay or re-forward of many events over a NATS cluster. The answer
// would be cut off, leaving the operator an empty reply for an operation
// that ran; a re-forward sent again queues every study a second time.
func answerLate(w http.ResponseWriter, status int, v any) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
	writeJSON(w, status, v)
}

// failureStatus is the status of a dead-letter operation that failed: 409
// when the destination has no consumer (retrying cannot help: configure
// the destination), letters cannot be replayed (purge them) or a
// re-forward met events of a newer ingest (use its forwarder), 503
// otherwise (NATS did not answer: try again). A joined error (a
// re-forward that failed part-way over a window also holding a newer
// ingest's events) is 503 when any of its parts is: what failed may
// succeed on a retry.
func failureStatus(err error) int {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, part := range j.Unwrap() {
			if failureStatus(part) == http.StatusServiceUnavailable {
				return http.StatusServiceUnavailable
			}
		}
	}
	if errors.Is(err, deadletter.ErrNoConsumer) || errors.Is(err, deadletter.ErrPartialLetters) || errors.Is(err, deadletter.ErrUnreadableLetters) ||
		errors.Is(err, events.ErrNewerVersion) {
		return http.StatusConflict
	}
	return http.StatusServiceUnavailable
}
