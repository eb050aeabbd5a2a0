// The operator's filters of dead letters (destination, sequence, study,
// class, reason, time), parsed the same way for the `forwarder replay` command
// (internal/app) and the admin API (internal/web).

package deadletter

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/orthancapi"
)

// timeLayouts are the accepted forms of a time argument, UTC unless the
// value has a zone.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04Z07:00",
	"2006-01-02T15:04:05",
	"2006-01-02T15:04",
	"2006-01-02",
}

// ParseTime reads 2026-11-01T00:00Z, RFC 3339, a date, or a duration
// back from now (24h, 90m). A date or a time without a zone is UTC, as
// the commands' help says: a site's local day needs its offset.
func ParseTime(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return time.Now().UTC().Add(-d), nil
	}
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time (want e.g. 2026-11-01T00:00Z, 2026-11-01 or 24h)", s)
}

// FilterArgs is a filter as text, from flags or JSON.
type FilterArgs struct {
	Destination    string `json:"destination,omitempty"`
	Source         string `json:"source,omitempty"`
	Seq            string `json:"seq,omitempty"`
	Study          string `json:"study,omitempty"`
	OrthancStudyID string `json:"orthancStudyId,omitempty"`
	Class          string `json:"class,omitempty"`
	Reason         string `json:"reason,omitempty"`
	Since          string `json:"since,omitempty"`
	All            bool   `json:"all,omitempty"`
	// Blank names the filters given with an empty value (a flag or a
	// JSON key present), as the caller spells them: Filter refuses them,
	// since an empty value would drop the filter and widen a purge to
	// every dead letter (--study "$UID" with $UID unset).
	Blank []string `json:"-"`
}

// Filter validates the arguments; errors name the argument.
func (a FilterArgs) Filter() (Filter, error) {
	f := Filter{All: a.All, ReasonContains: a.Reason}
	var errs []error
	for _, name := range a.Blank {
		errs = append(errs, fmt.Errorf("%s: empty: give a value or leave the filter out", name))
	}
	if a.Destination != "" {
		if !natsjs.ValidDestination(a.Destination) {
			errs = append(errs, fmt.Errorf("destination: %q is not a destination name", a.Destination))
		}
		f.Destination = a.Destination
	}
	if a.Source != "" {
		if !events.ValidSource(a.Source) {
			errs = append(errs, fmt.Errorf("source: %q is not a source name", a.Source))
		}
		f.Source = a.Source
	}
	if a.Seq != "" {
		n, err := strconv.ParseUint(a.Seq, 10, 64)
		if err != nil || n == 0 {
			errs = append(errs, fmt.Errorf("seq: %q is not a dead-letter sequence number", a.Seq))
		}
		f.Seq = n
	}
	if a.Study != "" {
		if !events.PlausibleUID(a.Study) {
			errs = append(errs, fmt.Errorf("study: %q is not a StudyInstanceUID", a.Study))
		}
		f.StudyInstanceUID = a.Study
	}
	if a.OrthancStudyID != "" {
		if !orthancapi.ValidID(a.OrthancStudyID) {
			errs = append(errs, fmt.Errorf("orthanc-id: %q is not an Orthanc ID", a.OrthancStudyID))
		}
		f.OrthancStudyID = a.OrthancStudyID
	}
	if a.Class != "" {
		c := forward.Class(a.Class)
		valid := c == UnreadableLetter // as listed
		for _, k := range forward.Classes {
			valid = valid || k == c
		}
		if !valid {
			errs = append(errs, fmt.Errorf("class: %q is not one of %s", a.Class, classList()))
		}
		f.Class = c
	}
	if a.Since != "" {
		t, err := ParseTime(a.Since)
		if err != nil {
			errs = append(errs, fmt.Errorf("since: %w", err))
		}
		f.Since = t
	}
	if a.All && (f.Seq != 0 || f.StudyInstanceUID != "" || f.OrthancStudyID != "" || f.Class != "" || f.ReasonContains != "" || !f.Since.IsZero()) {
		errs = append(errs, errors.New("all: cannot be combined with other filters"))
	}
	return f, errors.Join(errs...)
}

func classList() string {
	names := make([]string, len(forward.Classes))
	for i, c := range forward.Classes {
		names[i] = string(c)
	}
	return strings.Join(append(names, string(UnreadableLetter)), ", ")
}
