package web

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/ellipsis"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
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

	// Waiting lists studies back in the queue after a failure, the next
	// attempt soonest first (attemptOrder); WaitingCount counts them all.
	Waiting      []waitingRow
	WaitingCount int

	Recent       []status.Forward
	RecentSource string // "ledger", "forwarders" or ""
	RecentErr    string

	DeadLetters     []deadletter.Summary
	DeadLetterCount uint64
	DeadLettersErr  string

	Destinations []destinationRow
}

type flightRow struct {
	status.Flight
	Host string
}

type waitingRow struct {
	status.Waiting
	Host string
}

// destinationRow is one destination's line in the Destinations table,
// gathered from its consumer, the live forwarders serving it, its ledger
// and its dead letters.
type destinationRow struct {
	Name string
	// Queue is its consumer's state; Queue.ConsumerExists is false when
	// it has none (known only from its letters, ledger or forwarders).
	Queue       status.DestinationQueue
	InFlight    int
	LastSuccess time.Time
	// Recorded says its ledger has records: a zero LastSuccess then
	// means its newest ones are all "not selected": every one of them,
	// or, with OlderUnread, the newest Read, older ones left unread.
	Recorded    bool
	Read        int
	OlderUnread bool
	// Host is its DICOMweb host, as its forwarders report it.
	Host string
	// Forwarders counts the live forwarder processes serving it.
	Forwarders int
	Token      tokenSummary
	// Breaker is the worst circuit breaker state its forwarders report
	// (open, half-open, closed, off; "" if none reports one), since when,
	// and the studies they hold.
	Breaker      string
	BreakerSince time.Time
	Held         int
	// LastDown is the latest failure any of them took for the
	// destination down, at LastDownAt (forward.DestinationStatus).
	LastDown   string
	LastDownAt time.Time
	// Requests is the STOW-RS requests its forwarders may have in flight
	// now, together, and Ceiling the most they may grow to; LimitReason
	// and LimitChanged are the latest change of any of their limits.
	Requests, Ceiling int
	LimitReason       string
	LimitChanged      time.Time
	// ClosedLanes are its lanes outside their FORWARD_WINDOWS hours now,
	// highest first: their events wait, by configuration.
	ClosedLanes []closedLane
	// Paused counts its forwarders that pull nothing now (the
	// de-identification key guard), pausedBy them by reason
	// (forward.DestinationStatus.PausedReason); PausedWhy and PausedHelp
	// say why in words, for the badge and its title.
	Paused                int
	pausedBy              map[string]int
	PausedWhy, PausedHelp string
}

// pauseWords are the status page's words for why a forwarder pulls
// nothing (forward.DestinationStatus.PausedReason), in the order shown.
// A key not compared said "keys differ", and the operator looked for a
// second key that did not exist.
var pauseWords = []pauseWord{
	{forward.PausedKeysDiffer, "de-identification keys differ",
		"its forwarders run different de-identification keys (or one sends the originals): no event is pulled for this destination until they run one; their logs and the alert StowlineDeidentifyKeysDiffer name the fingerprints"},
	{forward.PausedNotCompared, "de-identification key not compared (status bucket " + natsjs.StatusBucket + ")",
		"no event is pulled for this destination until a forwarder's read of the status bucket " + natsjs.StatusBucket + " finds its own entry (a few seconds after start): for longer, its NATS user may not read or put the bucket (docs/nats-permissions.md) or NATS storage is full; its /readyz names the error, and the alert StowlineDeidentifyKeyNotCompared fires"},
	// A forwarder of a release before PausedReason.
	{"", "de-identification keys differ or not compared",
		"no event is pulled for this destination until its forwarders' de-identification keys are compared and the same: their /readyz (destination_deidentify_key) says which"},
}

// pauseWord is the words for one pause reason.
type pauseWord struct{ reason, why, help string }

// explainPause sets r's PausedWhy and PausedHelp from pausedBy: with
// several reasons, each with how many forwarders.
func (r *destinationRow) explainPause() {
	var why, help []string
	for _, w := range pauseWords {
		n := r.pausedBy[w.reason]
		if n == 0 {
			continue
		}
		why, help = append(why, w.why), append(help, w.help)
		if len(r.pausedBy) > 1 {
			why[len(why)-1] += fmt.Sprintf(" (%d)", n)
		}
	}
	r.PausedWhy, r.PausedHelp = strings.Join(why, "; "), strings.Join(help, "; ")+"; studies in hand go on"
}

// closedLane is a lane its forwarders report outside its hours: Closed of
// them do (the others pull it), and the earliest of them opens it at Opens.
type closedLane struct {
	Lane   string
	Opens  time.Time
	Closed int
}

// breakerRank orders breaker states from best to worst.
var breakerRank = map[string]int{"": 0, "off": 1, "closed": 2, "half-open": 3, "open": 4}

// tokenSummary merges the token status each forwarder process reports
// for one destination.
type tokenSummary struct {
	OAuth           bool
	TokenHost       string
	Fetches, Errors uint64
	LastSuccess     time.Time
	LastError       string
	LastErrorAt     time.Time
	// Failing counts the processes whose last fetch failed.
	Failing int
}

// InFlightCount is the number of studies the live forwarders are sending:
// not those parked until their source answers, as
// stowline_forwarder_studies_in_flight.
func (p *pageData) InFlightCount() int { return len(p.InFlight) - p.ParkedCount() }

// ParkedCount is the number of studies parked until their source answers.
func (p *pageData) ParkedCount() int {
	n := 0
	for _, f := range p.InFlight {
		if f.Parked != "" {
			n++
		}
	}
	return n
}

// destinationOr names the default destination where an older forwarder
// or dead letter names none.
func destinationOr(name string) string {
	if name == "" {
		return natsjs.DefaultDestination
	}
	return name
}

// load reads everything the page shows, in parallel; a part that fails
// is shown as an error in its section, the rest still renders.
func (h *StatusPage) load(ctx context.Context) *pageData {
	p := &pageData{Now: time.Now().UTC(), SingleHost: h.opts.SingleHost}
	var wg sync.WaitGroup
	wg.Go(func() {
		q, err := status.ReadQueue(ctx, h.opts.JS)
		p.Queue, p.QueueErr = q, errText(err)
		if err == nil && q.UnreadErr != nil {
			// The cards' totals leave those consumers out.
			p.QueueErr = errText(q.UnreadErr)
		}
	})
	wg.Go(func() {
		snaps, err := h.opts.Forwarders(ctx)
		p.Forwarders, p.ForwardersErr = snaps, errText(err)
	})
	var ledgers []status.DestinationLedger
	var ledgerErr error
	wg.Go(func() { ledgers, ledgerErr = status.ReadLedgers(ctx, h.opts.JS, recentRows) })
	wg.Go(func() {
		dl, n, err := status.RecentDeadLetters(ctx, h.opts.JS, deadLetterRows)
		p.DeadLetters, p.DeadLetterCount, p.DeadLettersErr = dl, n, errText(err)
	})
	wg.Wait()

	var ring []status.Forward
	for _, s := range p.Forwarders {
		for _, f := range s.InFlight {
			f.Destination = destinationOr(f.Destination)
			p.InFlight = append(p.InFlight, flightRow{Flight: f, Host: s.Host})
		}
		for _, f := range s.Recent {
			f.Destination = destinationOr(f.Destination)
			ring = append(ring, f)
		}
		p.Totals.Forwarded += s.Totals.Forwarded
		p.Totals.NotSelected += s.Totals.NotSelected
		p.Totals.Retry += s.Totals.Retry
		p.Totals.DeadLettered += s.Totals.DeadLettered
		p.Totals.Interrupted += s.Totals.Interrupted
		p.Totals.AckFailed += s.Totals.AckFailed
	}
	slices.SortFunc(p.InFlight, func(a, b flightRow) int { return a.StartedAt.Compare(b.StartedAt) })
	slices.SortFunc(ring, func(a, b status.Forward) int { return b.FinishedAt.Compare(a.FinishedAt) })

	switch {
	case ledgerErr == nil || len(ledgers) > 0:
		if ledgerErr != nil {
			p.RecentErr = ledgerErr.Error()
		}
		p.Recent, p.RecentSource = enrich(status.NewestForwards(ledgers, recentRows), ring), "ledger"
	case errors.Is(ledgerErr, status.ErrNoLedger):
		p.Recent, p.RecentSource = ring[:min(len(ring), recentRows)], "forwarders"
	default:
		p.RecentErr = ledgerErr.Error()
		p.Recent, p.RecentSource = ring[:min(len(ring), recentRows)], "forwarders"
	}
	p.Waiting = waiting(p.Forwarders, p.InFlight, p.Recent, ring)
	p.WaitingCount = len(p.Waiting)
	p.Waiting = p.Waiting[:min(len(p.Waiting), recentRows)]
	p.Destinations = destinations(p, ledgers, ring)
	return p
}

// waiting gathers the forwarders' studies waiting for a retry, the next
// attempt soonest first (attemptOrder): for each study and destination
// the latest failure (the forwarders that failed it before have older
// ones), none for a study in flight again or finished since (not as a
// retry), as another forwarder may have.
func waiting(forwarders []status.Snapshot, inFlight []flightRow, finished ...[]status.Forward) []waitingRow {
	type key struct{ destination, source, study string }
	latest := map[key]waitingRow{}
	for _, s := range forwarders {
		for _, w := range s.Waiting {
			w.Destination = destinationOr(w.Destination)
			k := key{w.Destination, w.Source, w.OrthancStudyID}
			if o, ok := latest[k]; !ok || w.FailedAt.After(o.FailedAt) {
				latest[k] = waitingRow{Waiting: w, Host: s.Host}
			}
		}
	}
	for _, f := range inFlight {
		delete(latest, key{f.Destination, f.Source, f.OrthancStudyID})
	}
	for _, list := range finished {
		for _, f := range list {
			k := key{destinationOr(f.Destination), f.Source, f.OrthancStudyID}
			// A retry is the end of the attempt that failed: its
			// failure is the one listed, or an older one.
			if w, ok := latest[k]; ok && f.Result != forward.ResultRetry && f.FinishedAt.After(w.FailedAt) {
				delete(latest, k)
			}
		}
	}
	rows := slices.Collect(maps.Values(latest))
	slices.SortFunc(rows, func(a, b waitingRow) int {
		ra, ta := attemptOrder(a.Waiting)
		rb, tb := attemptOrder(b.Waiting)
		return cmp.Or(cmp.Compare(ra, rb), ta.Compare(tb), a.Due.Compare(b.Due),
			cmp.Compare(a.Destination, b.Destination), cmp.Compare(a.Source, b.Source), cmp.Compare(a.OrthancStudyID, b.OrthancStudyID))
	})
	return rows
}

// attemptOrder places a waiting study by its next attempt, the one the
// page shows first: rank 0, at the later of its due time and its lane's
// opening; rank 1, held by a lane that opens not within two days; rank
// 2, held by a breaker not closed, whose reopening nobody knows. By Due
// alone, studies held for hours by a closed lane or a breaker, their Due
// long past, came first and filled the rows shown, hiding the stat and
// routine retries due within minutes.
func attemptOrder(w status.Waiting) (rank int, at time.Time) {
	switch w.HeldBy {
	case status.HeldBreaker:
		return 2, w.Due
	case status.HeldLane:
		if w.Opens.IsZero() {
			return 1, w.Due
		}
		if w.Opens.After(w.Due) {
			return 0, w.Opens
		}
	}
	return 0, w.Due
}

// destinations makes a row for every destination any source names: a
// consumer, dead letters, a live forwarder, a ledger.
func destinations(p *pageData, ledgers []status.DestinationLedger, ring []status.Forward) []destinationRow {
	rows := map[string]*destinationRow{}
	row := func(name string) *destinationRow {
		name = destinationOr(name)
		r := rows[name]
		if r == nil {
			r = &destinationRow{Name: name, Queue: status.DestinationQueue{Destination: name}}
			rows[name] = r
		}
		return r
	}
	for _, q := range p.Queue.Destinations {
		row(q.Destination).Queue = q
	}
	for _, s := range p.Forwarders {
		for _, tok := range s.Tokens {
			r := row(tok.Destination)
			r.Forwarders++
			if r.Host == "" {
				r.Host = tok.Host
			}
			t := &r.Token
			t.OAuth = t.OAuth || tok.OAuth
			if t.TokenHost == "" {
				t.TokenHost = tok.TokenHost
			}
			t.Fetches += tok.Fetches
			t.Errors += tok.Errors
			if tok.LastSuccess.After(t.LastSuccess) {
				t.LastSuccess = tok.LastSuccess
			}
			if tok.LastErrorAt.After(t.LastErrorAt) {
				t.LastError, t.LastErrorAt = tok.LastError, tok.LastErrorAt
			}
			if tok.OAuth && !tok.OK() {
				t.Failing++
			}
		}
	}
	for _, s := range p.Forwarders {
		for _, d := range s.Destinations {
			r := row(d.Destination)
			r.Held += d.Held
			if d.Paused {
				r.Paused++
				reason := d.PausedReason
				if !slices.ContainsFunc(pauseWords, func(w pauseWord) bool { return w.reason == reason }) {
					reason = "" // a later release's: said as the unknown
				}
				if r.pausedBy == nil {
					r.pausedBy = map[string]int{}
				}
				r.pausedBy[reason]++
			}
			if breakerRank[d.State] > breakerRank[r.Breaker] {
				r.Breaker, r.BreakerSince = d.State, d.Since
			}
			if d.LastDownAt.After(r.LastDownAt) {
				r.LastDown, r.LastDownAt = d.LastDown, d.LastDownAt
			}
			r.Requests += d.Requests
			r.Ceiling += d.Ceiling
			if d.LimitChanged.After(r.LimitChanged) {
				r.LimitReason, r.LimitChanged = d.LimitReason, d.LimitChanged
			}
			for _, cl := range d.ClosedLanes {
				i := slices.IndexFunc(r.ClosedLanes, func(c closedLane) bool { return c.Lane == string(cl.Lane) })
				if i < 0 {
					r.ClosedLanes = append(r.ClosedLanes, closedLane{Lane: string(cl.Lane), Opens: cl.Opens})
					i = len(r.ClosedLanes) - 1
				}
				c := &r.ClosedLanes[i]
				c.Closed++
				if !cl.Opens.IsZero() && (c.Opens.IsZero() || cl.Opens.Before(c.Opens)) {
					c.Opens = cl.Opens
				}
			}
		}
	}
	for _, f := range p.InFlight {
		if f.Parked == "" {
			row(f.Destination).InFlight++
		}
	}
	for _, l := range ledgers {
		r := row(l.Destination)
		r.Recorded = r.Recorded || len(l.Recent) > 0
		r.Read, r.OlderUnread = l.Read, l.OlderUnread
		if l.LastForwarded.After(r.LastSuccess) {
			r.LastSuccess = l.LastForwarded
		}
	}
	for _, f := range ring {
		r := row(f.Destination)
		if f.Result == forward.ResultForwarded && f.FinishedAt.After(r.LastSuccess) {
			r.LastSuccess = f.FinishedAt
		}
	}
	out := make([]destinationRow, 0, len(rows))
	for _, r := range rows {
		if r.Paused > 0 {
			r.explainPause()
		}
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b destinationRow) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// enrich fills the ledger's records with what a live forwarder remembers
// of the same forward (instances, bytes, duration, attempt).
func enrich(recs, ring []status.Forward) []status.Forward {
	type key struct{ destination, source, study, lastUpdate string }
	seen := map[key]status.Forward{}
	for _, f := range ring {
		if f.Result == forward.ResultForwarded || f.Result == forward.ResultNotSelected {
			k := key{f.Destination, f.Source, f.OrthancStudyID, f.LastUpdate}
			if _, ok := seen[k]; !ok {
				seen[k] = f
			}
		}
	}
	out := make([]status.Forward, len(recs))
	for i, r := range recs {
		if f, ok := seen[key{r.Destination, r.Source, r.OrthancStudyID, r.LastUpdate}]; ok && f.Result == r.Result {
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
	"dest":    destinationOr,
	// result names an attempt's result in words: not_selected is "not
	// selected".
	"result": func(r forward.Result) string { return strings.ReplaceAll(string(r), "_", " ") },
	"trunc":  func(n int, s string) string { return ellipsis.Truncate(strings.TrimSpace(s), n) },
	"host":   hostOf,
	"opens":  opensAt,
	"next":   nextAttempt,
}

// dueIn says when a study waiting for a retry is due again.
func dueIn(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	if d <= 0 {
		return "now"
	}
	return "in " + d.String()
}

// nextAttempt says when a study waiting for a retry is pulled again: at
// its due time, unless its lane's window or its destination's breaker
// holds it past then ("now" it said, then the study was gone).
func nextAttempt(w status.Waiting, now time.Time) string {
	switch w.HeldBy {
	case status.HeldLane:
		if w.Opens.IsZero() || w.Opens.After(w.Due) {
			return "when the " + string(w.Lane) + " lane opens (FORWARD_WINDOWS): " + opensAt(w.Opens, now)
		}
	case status.HeldBreaker:
		if !w.Due.After(now) {
			return "when the destination's circuit breaker closes"
		}
		return dueIn(w.Due, now) + ", once the destination's circuit breaker closes"
	}
	return dueIn(w.Due, now)
}

// opensAt says when a closed lane opens: the forwarder's clock time, with
// its offset from UTC (FORWARD_WINDOWS are in its time zone), and how
// long from now.
func opensAt(t, now time.Time) string {
	if t.IsZero() {
		return "not within two days"
	}
	d := t.Sub(now).Round(time.Minute)
	in := "in under a minute"
	switch {
	case d >= time.Hour:
		in = fmt.Sprintf("in %dh %02dm", int(d.Hours()), int(d.Minutes())%60)
	case d >= time.Minute:
		in = fmt.Sprintf("in %dm", int(d.Minutes()))
	}
	return t.Format("15:04 (UTC-07:00)") + ", " + in
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
