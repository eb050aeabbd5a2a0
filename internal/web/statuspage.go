// The status page (/ui): a small server-rendered page
// (html/template, no JavaScript) for the IT team running stowline: a row
// per destination (queue depth, studies in flight, dead letters, last
// success, token status), the studies in flight with their progress, the
// recent forwards, and the dead letters with a replay button. It is read from JetStream and the forwarders' shared
// state, so any ingest replica shows the whole deployment.
//
// It sits behind the admin credentials: HTTP basic auth with ADMIN_TOKEN
// as the password (any user name). The replay form is a POST protected
// against cross-site requests (see csrf.go).

package web

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
)

const basePath = "/ui"

//go:embed templates/*.html static/*.css
var files embed.FS

// StatusPageOptions configures the page.
type StatusPageOptions struct {
	JS jetstream.JetStream
	// Forwarders returns the snapshots of the live forwarder processes:
	// the in-process tracker in single-host mode, else status.ReadShared.
	Forwarders func(ctx context.Context) ([]status.Snapshot, error)
	// SingleHost says the forwarder runs in this process.
	SingleHost bool
	// AdminToken is the basic-auth password; it must not be empty.
	AdminToken string
	// TrustedProxies name the client behind a load balancer, for the
	// throttle of wrong passwords and the logs (as the webhook's).
	TrustedProxies []netip.Prefix
	// Timeout bounds the JetStream reads of one page (default 5 s).
	Timeout time.Duration
	Logger  *slog.Logger
}

// StatusPage serves the page.
type StatusPage struct {
	opts StatusPageOptions
	want [sha256.Size]byte
	csrf *csrf
	// guesses throttles wrong passwords.
	guesses *guessGuard
	tmpl    *template.Template
	css     []byte
	log     *slog.Logger
	// replayTimeout bounds a replay (30 s; less in tests).
	replayTimeout time.Duration
}

// NewStatusPage parses the templates and returns the handler.
func NewStatusPage(opts StatusPageOptions) (*StatusPage, error) {
	if opts.JS == nil || opts.Forwarders == nil {
		return nil, errors.New("ui: JetStream and the forwarders' state are required")
	}
	if opts.AdminToken == "" {
		return nil, errors.New("ui: an admin token is required")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tmpl, err := template.New("").Funcs(funcs).ParseFS(files, "templates/*.html")
	if err != nil {
		return nil, err
	}
	css, err := files.ReadFile("static/style.css")
	if err != nil {
		return nil, err
	}
	return &StatusPage{opts: opts, want: sha256.Sum256([]byte(opts.AdminToken)), csrf: newCSRF(opts.AdminToken),
		guesses: newGuessGuard("status page", opts.TrustedProxies, log, func(w http.ResponseWriter, status int, msg string) { http.Error(w, msg, status) }), tmpl: tmpl, css: css, log: log,
		replayTimeout: 30 * time.Second}, nil
}

// Mount adds GET /ui, GET /ui/style.css and POST /ui/replay to r.
func (h *StatusPage) Mount(r chi.Router) {
	r.Route(basePath, func(r chi.Router) {
		r.Use(secureHeaders, h.authenticate)
		r.Get("/", h.page)
		r.Get("/style.css", h.style)
		r.Post("/replay", h.replay)
	})
}

func secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// authenticate wants HTTP basic auth with the admin token as the password.
// A client address that presented a wrong password ten times is refused
// with 429 for a while (guessGuard).
func (h *StatusPage) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authorized := func() (bool, bool) {
			_, pass, ok := r.BasicAuth()
			got := sha256.Sum256([]byte(pass))
			return ok, ok && subtle.ConstantTimeCompare(got[:], h.want[:]) == 1
		}
		unauthorized := func() {
			w.Header().Set("WWW-Authenticate", `Basic realm="stowline status", charset="UTF-8"`)
			http.Error(w, "stowline status page: log in with any user name and the admin token (ADMIN_TOKEN) as the password", http.StatusUnauthorized)
		}
		if h.guesses.check(w, r, authorized, unauthorized) {
			next.ServeHTTP(w, r)
		}
	})
}

func (h *StatusPage) style(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	_, _ = w.Write(h.css)
}

func (h *StatusPage) page(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.Timeout)
	defer cancel()
	p := h.load(ctx)
	q := r.URL.Query()
	if seq := q.Get("replayed"); seq != "" {
		if n, err := strconv.ParseUint(seq, 10, 64); err == nil && h.letterGone(ctx, n) {
			p.Flash = "Dead letter " + seq + " replayed: its study is queued again"
			if d := q.Get("destination"); natsjs.ValidDestination(d) {
				p.Flash += " for destination " + d
			}
			p.Flash += "."
		}
	}
	p.Refresh = refreshOf(q.Get("refresh"))
	h.render(w, r, http.StatusOK, p)
}

// refreshOf is the auto-refresh period a request asks for, in seconds
// (5 to 3600); 0 for none.
func refreshOf(v string) int {
	if n, err := strconv.Atoi(v); err == nil && n >= 5 && n <= 3600 {
		return n
	}
	return 0
}

// letterGone reports the dead letter seq no longer stored, as after its
// replay: a link naming one still there (made up, or bookmarked before)
// must not say it was replayed.
func (h *StatusPage) letterGone(ctx context.Context, seq uint64) bool {
	store, err := deadletter.Open(ctx, h.opts.JS)
	if err != nil {
		return false
	}
	_, err = store.Get(ctx, seq)
	return errors.Is(err, deadletter.ErrNotFound)
}

func (h *StatusPage) render(w http.ResponseWriter, r *http.Request, code int, p *pageData) {
	p.CSRF = h.csrf.token(w, r)
	var buf bytes.Buffer
	if err := h.tmpl.ExecuteTemplate(&buf, "status.html", p); err != nil {
		h.log.Error("status page: render", "err", err)
		http.Error(w, "status page: render failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// replay queues a dead letter again (POST seq, csrf), then redirects to
// the page (303, so a reload does not post twice).
func (h *StatusPage) replay(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	if err := h.csrf.check(r); err != nil {
		h.log.Warn("status page: replay refused", "reason", err.Error(), "remote", r.RemoteAddr, "client", clientIP(r, h.opts.TrustedProxies))
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	seq, err := strconv.ParseUint(r.PostFormValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		http.Error(w, "seq: not a dead-letter sequence number", http.StatusBadRequest)
		return
	}
	// The page posts its auto-refresh period: the page a replay leads to
	// refreshes as the one it was pressed on; not a failure's, whose
	// error must not go by while the operator looks away.
	refresh := refreshOf(r.PostFormValue("refresh"))
	ctx, cancel := context.WithTimeout(r.Context(), h.replayTimeout)
	defer cancel()
	fail := func(msg string, err error, code int) {
		h.log.Error("status page: replay failed", "dead_letter_seq", seq, "err", err)
		// Read with the page's own bound, not what is left of the
		// replay's: a replay that ran out of time left every read of
		// the page failing at once, its Replay buttons gone.
		lctx, cancel := context.WithTimeout(r.Context(), h.opts.Timeout)
		defer cancel()
		p := h.load(lctx)
		p.FlashErr = msg
		h.render(w, r, code, p)
	}
	store, err := deadletter.Open(ctx, h.opts.JS)
	if err != nil {
		fail("Replay failed: "+err.Error(), err, http.StatusServiceUnavailable)
		return
	}
	var e deadletter.Entry
	n, err := store.Replay(ctx, deadletter.Filter{Seq: seq}, false, func(done *deadletter.Entry) { e = *done })
	if err != nil {
		fail("Replay of dead letter "+strconv.FormatUint(seq, 10)+" failed: "+err.Error(), err, failureStatus(err))
		return
	}
	if n == 0 {
		fail("Dead letter "+strconv.FormatUint(seq, 10)+" is gone (replayed or purged already).", deadletter.ErrNotFound, http.StatusNotFound)
		return
	}
	// Replay queues the letter for its own destination only.
	dest := destinationOr(e.Destination)
	h.log.Info("dead letter replayed from the status page",
		append(letterAttrs(&e), "remote", r.RemoteAddr, "client", clientIP(r, h.opts.TrustedProxies))...)
	to := basePath + "/?replayed=" + strconv.FormatUint(seq, 10) + "&destination=" + url.QueryEscape(dest)
	if refresh > 0 {
		to += "&refresh=" + strconv.Itoa(refresh)
	}
	http.Redirect(w, r, to+"#deadletters", http.StatusSeeOther)
}
