package web

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/orthancapi"
)

// studyDestination is what GET /admin/studies/{source}/{id} says of one
// destination: whether its ledger records the study forwarded, and
// which state.
type studyDestination struct {
	Destination string `json:"destination"`
	// Forwarded: the ledger records a completed forward (NotSelected
	// included: done, nothing sent).
	Forwarded        bool      `json:"forwarded"`
	LastUpdate       string    `json:"lastUpdate,omitempty"`
	StudyInstanceUID string    `json:"studyInstanceUid,omitempty"`
	ForwardedAt      time.Time `json:"forwardedAt,omitzero"`
	NotSelected      bool      `json:"notSelected,omitempty"`
	// Kept counts the instances the destination does not hold as sent
	// (a conflict skipped, stored with a warning); KeptAll: more than
	// the ledger lists.
	Kept    int  `json:"kept,omitempty"`
	KeptAll bool `json:"keptAll,omitempty"`
	// Error: the ledger could not be read.
	Error string `json:"error,omitempty"`
}

// maxStudyLetters bounds the dead letters a study answer lists: a study
// replayed and dead-lettered again and again has one per round.
const maxStudyLetters = 20

// study answers whether one study of a source reached each configured
// destination (its ledger) and its dead letters: what `forwarder audit`
// tells of one study, while stowline runs (on a single host the audit
// needs it stopped), and for a study no longer in Orthanc (buffer mode).
// A study waiting for a retry is on the status page.
func (a *AdminAPI) study(w http.ResponseWriter, r *http.Request) {
	source, id := chi.URLParam(r, "source"), chi.URLParam(r, "orthancStudyId")
	// Checked as the ledger's keys assume: a "*" read another study's
	// record, and a StudyInstanceUID (what staff usually have) or a
	// mistyped name answered "not forwarded" of a study that may be.
	if !events.ValidSource(source) {
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("source %q: not a source name (ORTHANC_SOURCE_NAME)", source))
		return
	}
	if !orthancapi.ValidID(id) {
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("orthancStudyId %q: not an Orthanc ID (five groups of 8 hex digits, as Orthanc's explorer or the log's orthanc_study_id shows it; not a StudyInstanceUID)", id))
		return
	}
	dests := make([]studyDestination, 0, len(a.Destinations))
	for _, d := range a.Destinations {
		sd := studyDestination{Destination: d}
		rec, err := a.lookup(r, d, source, id)
		switch {
		case errors.Is(err, ledger.ErrNotRecorded), errors.Is(err, ledger.ErrNoBucket):
		case err != nil:
			sd.Error = err.Error()
		default:
			sd.Forwarded, sd.LastUpdate, sd.StudyInstanceUID, sd.ForwardedAt = true, rec.LastUpdate, rec.StudyInstanceUID, rec.ForwardedAt
			sd.NotSelected, sd.Kept, sd.KeptAll = rec.NotSelected, len(rec.Kept), rec.KeptAll
		}
		dests = append(dests, sd)
	}
	entries, more, err := a.Store.Page(r.Context(), deadletter.Filter{Source: source, OrthancStudyID: id}, 0, maxStudyLetters, maxPageBytes)
	if err != nil {
		a.fail(w, "list the study's dead letters", err)
		return
	}
	letters := make([]letterSummary, 0, len(entries))
	for i := range entries {
		letters = append(letters, summary(&entries[i]))
	}
	answer := map[string]any{"source": source, "orthancStudyId": id, "destinations": dests, "deadLetters": letters}
	if more {
		answer["moreDeadLetters"] = true
	}
	answerLate(w, http.StatusOK, answer)
}

func (a *AdminAPI) lookup(r *http.Request, destination, source, id string) (ledger.Record, error) {
	l, err := ledger.Open(r.Context(), a.JS, destination)
	if err != nil {
		return ledger.Record{}, err
	}
	return l.Lookup(r.Context(), source, id)
}
