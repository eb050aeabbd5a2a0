package web_test

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/internal/web"
)

// GET /admin/studies/{source}/{orthancStudyId} tells, while stowline
// runs, whether one study reached each destination (its ledger) and its
// dead letters. The documented answer, `forwarder audit`, refuses to run
// on a single host until stowline is stopped, and reads only studies
// still in Orthanc.
func TestAdminStudyTellsWhereItWent(t *testing.T) {
	ns := testnats.Start(t)
	ctx := t.Context()
	ev := events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID: "6b9e19d9-62094390-5f9ddb01-4a191ae7-9766b715", StudyInstanceUID: "1.2.826.0.1.3680043.2.1125.70",
		LastUpdate: "20261207T031500", ReceivedAt: time.Now().UTC()}
	kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	if err := ledger.New(ns.JS, kv).Completed(ctx, &ev, ledger.Outcome{}); err != nil {
		t.Fatal(err)
	}
	dlStream, err := natsjs.DefaultTopology().EnsureDeadLetters(ctx, ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	store := deadletter.NewStore(ns.JS, dlStream)
	other := ev
	other.OrthancStudyID = "00000000-62094390-5f9ddb01-4a191ae7-9766b715"
	for _, e := range []events.StudyStable{ev, other} {
		if _, _, err := store.Add(ctx, &forward.DeadLetter{Destination: "ai", Event: e, Class: forward.Permanent, Reason: "HTTP 400",
			Attempts: 1, OriginalSeq: 3, DeadLetteredAt: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, JS: ns.JS, Store: store, Destinations: []string{natsjs.DefaultDestination, "ai"}, Log: slog.New(slog.DiscardHandler)}).Mount(r)
	req := httptest.NewRequest(http.MethodGet, "/admin/studies/orthanc-a/"+ev.OrthancStudyID, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	var body struct {
		Destinations []struct {
			Destination, LastUpdate, StudyInstanceUID, Error string
			Forwarded                                        bool
		}
		DeadLetters []struct {
			Destination, OrthancStudyID, Reason string
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("status %d, body %s (%v)", rec.Code, rec.Body, err)
	}
	if len(body.Destinations) != 2 {
		t.Fatalf("destinations %+v, want default and ai", body.Destinations)
	}
	def, ai := body.Destinations[0], body.Destinations[1]
	if def.Destination != natsjs.DefaultDestination || !def.Forwarded || def.LastUpdate != ev.LastUpdate || def.StudyInstanceUID != ev.StudyInstanceUID || def.Error != "" {
		t.Errorf("default: %+v, want forwarded, state %s", def, ev.LastUpdate)
	}
	// ai has no ledger bucket at all: not forwarded, no error.
	if ai.Destination != "ai" || ai.Forwarded || ai.Error != "" {
		t.Errorf("ai: %+v, want not forwarded", ai)
	}
	if len(body.DeadLetters) != 1 || body.DeadLetters[0].OrthancStudyID != ev.OrthancStudyID || body.DeadLetters[0].Destination != "ai" {
		t.Errorf("dead letters %+v, want the study's one, at ai", body.DeadLetters)
	}
}

// A path that is no source name or no Orthanc ID is refused, naming what
// it wants: "*" read another study's ledger record, and a
// StudyInstanceUID answered "not forwarded" of a study that may be.
func TestAdminStudyRefusesWhatIsNoID(t *testing.T) {
	ns := testnats.Start(t)
	dlStream, err := natsjs.DefaultTopology().EnsureDeadLetters(t.Context(), ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	const token = "admin-token-0123456789"
	r := chi.NewRouter()
	(&web.AdminAPI{Token: token, JS: ns.JS, Store: deadletter.NewStore(ns.JS, dlStream), Destinations: []string{natsjs.DefaultDestination},
		Log: slog.New(slog.DiscardHandler)}).Mount(r)
	for _, tt := range []struct{ path, want string }{
		{"/admin/studies/orthanc-a/*", "not an Orthanc ID"},
		{"/admin/studies/orthanc-a/1.2.826.0.1.3680043.2.1125.70", "not a StudyInstanceUID"},
		{"/admin/studies/orthanc.a/6b9e19d9-62094390-5f9ddb01-4a191ae7-9766b715", "not a source name"},
	} {
		req := httptest.NewRequest(http.MethodGet, tt.path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), tt.want) {
			t.Errorf("GET %s: %d %s; want 400 saying %q", tt.path, rec.Code, rec.Body, tt.want)
		}
	}
}
