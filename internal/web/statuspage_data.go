package web

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/ellipsis"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/status"
)

// How much the page shows.
const (
	recentRows     = 20
	deadLetterRows = 50
)

type pageData struct {
	Now        time.Time
	SingleHost bool
	Refresh    int
	CSRF       string
	Flash      string
	FlashErr   string

	Queue    status.Queue
	QueueErr string

	Forwarders    []status.Snapshot
	ForwardersErr string
	InFlight      []flightRow
	Totals        status.Totals

	Recent       []status.Forward
	RecentSource string // "ledger", "forwarders" or ""
	RecentErr    string

	DeadLetters     []deadletter.Entry
	DeadLetterCount uint64
	DeadLettersErr  string

	Tokens []status.TokenStatus
}

type flightRow struct {
	status.Flight
	Host string
}

// InFlightCount is the number of studies the live forwarders are sending.
func (p *pageData) InFlightCount() int { return len(p.InFlight) }

// load reads everything the page shows, in parallel; a part that fails
// is shown as an error in its section, the rest still renders.
func (h *StatusPage) load(ctx context.Context) *pageData {
	p := &pageData{Now: time.Now().UTC(), SingleHost: h.opts.SingleHost}
	var wg sync.WaitGroup
	wg.Go(func() {
		q, err := status.ReadQueue(ctx, h.opts.JS)
		p.Queue, p.QueueErr = q, errText(err)
	})
	wg.Go(func() {
		snaps, err := h.opts.Forwarders(ctx)
		p.Forwarders, p.ForwardersErr = snaps, errText(err)
	})
	var ledgerRecent []status.Forward
	var ledgerErr error
	wg.Go(func() { ledgerRecent, ledgerErr = status.RecentFromLedger(ctx, h.opts.JS, recentRows) })
	wg.Go(func() {
		dl, n, err := status.RecentDeadLetters(ctx, h.opts.JS, deadLetterRows)
		p.DeadLetters, p.DeadLetterCount, p.DeadLettersErr = dl, n, errText(err)
	})
	wg.Wait()

	var ring []status.Forward
	for _, s := range p.Forwarders {
		for _, f := range s.InFlight {
			p.InFlight = append(p.InFlight, flightRow{Flight: f, Host: s.Host})
		}
		ring = append(ring, s.Recent...)
		p.Totals.Forwarded += s.Totals.Forwarded
		p.Totals.Retry += s.Totals.Retry
		p.Totals.DeadLettered += s.Totals.DeadLettered
		p.Totals.Interrupted += s.Totals.Interrupted
		p.Totals.AckFailed += s.Totals.AckFailed
		p.Tokens = append(p.Tokens, s.Tokens...)
	}
	slices.SortFunc(p.InFlight, func(a, b flightRow) int { return a.StartedAt.Compare(b.StartedAt) })
	slices.SortFunc(ring, func(a, b status.Forward) int { return b.FinishedAt.Compare(a.FinishedAt) })

	switch {
	case ledgerErr == nil:
		p.Recent, p.RecentSource = enrich(ledgerRecent, ring), "ledger"
	case errors.Is(ledgerErr, status.ErrNoLedger):
		p.Recent, p.RecentSource = ring[:min(len(ring), recentRows)], "forwarders"
	default:
		p.RecentErr = ledgerErr.Error()
		p.Recent, p.RecentSource = ring[:min(len(ring), recentRows)], "forwarders"
	}
	return p
}

// enrich fills the ledger's records with what a live forwarder remembers
// of the same forward (instances, bytes, duration, attempt).
func enrich(recs, ring []status.Forward) []status.Forward {
	type key struct{ source, study, lastUpdate string }
	seen := map[key]status.Forward{}
	for _, f := range ring {
		if f.Result == forward.ResultForwarded {
			k := key{f.Source, f.OrthancStudyID, f.LastUpdate}
			if _, ok := seen[k]; !ok {
				seen[k] = f
			}
		}
	}
	out := make([]status.Forward, len(recs))
	for i, r := range recs {
		if f, ok := seen[key{r.Source, r.OrthancStudyID, r.LastUpdate}]; ok {
			r.Attempt, r.Instances, r.Bytes, r.DurationMS = f.Attempt, f.Instances, f.Bytes, f.DurationMS
		}
		out[i] = r
	}
	return out
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

var funcs = template.FuncMap{
	"ago":   ago,
	"stamp": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"bytes": humanBytes,
	"ms": func(ms int64) string {
		return (time.Duration(ms) * time.Millisecond).Round(10 * time.Millisecond).String()
	},
	"elapsed": func(since, now time.Time) string { return now.Sub(since).Round(time.Second).String() },
	"trunc":   func(n int, s string) string { return ellipsis.Truncate(strings.TrimSpace(s), n) },
	"host":    hostOf,
}

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func hostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		return u.Host
	}
	return raw
}
