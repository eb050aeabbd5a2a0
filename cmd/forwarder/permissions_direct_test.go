package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
)

// TestDirectGetOfEventsPermitted: an operator may enable direct gets on
// the event stream (nats stream edit --allow-direct; a start keeps the
// setting), and nats.go then reads an event with
// $JS.API.DIRECT.GET.STOWLINE_EVENTS instead of STREAM.MSG.GET. The
// documented blocks did not grant it: a start lowering EVENTS_RETENTION
// could not read the oldest queued event ("cannot tell"), nor could a
// forwarder read each lane's oldest for its age gauge. Under each
// documented block, the start reads it and names the consumer holding it.
func TestDirectGetOfEventsPermitted(t *testing.T) {
	connect, ctx := documentedUsers(t)
	admin := connect("test-admin")
	topo := natsjs.DefaultTopology()
	topo.Retention, topo.DedupeWindow = time.Hour, 500*time.Millisecond
	s, err := topo.EnsureEvents(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	allowDirect(ctx, t, admin, s)
	if _, err := topo.EnsureConsumers(ctx, admin, []string{natsjs.DefaultDestination}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Publish(ctx, natsjs.EventSubject("orthanc-a"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// The lowered retention is a second: the event must be older than
	// that, on the server's clock, which only time gives.
	time.Sleep(1100 * time.Millisecond)

	for _, user := range []string{"stowline-ingest", "stowline-forwarder"} {
		t.Run(user, func(t *testing.T) {
			var logs bytes.Buffer
			lowered := topo
			lowered.Retention, lowered.Log = time.Second, slog.New(slog.NewJSONHandler(&logs, nil))
			if _, err := lowered.EnsureEvents(ctx, connect(user)); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(logs.String(), `"consumer":"`+natsjs.ForwarderConsumer+`"`) {
				t.Errorf("the start did not read the oldest queued event:\n%s", logs.String())
			}
			if user != "stowline-ingest" {
				return
			}
			// The reconciler's look for a source's events at a start
			// without a cursor (reconcile's cursorLost): a first event by
			// subject, which goes to DIRECT.GET.STOWLINE_EVENTS; a last
			// one by subject would go to DIRECT.GET.STOWLINE_EVENTS.<subject>.
			st, err := connect(user).Stream(ctx, natsjs.EventStream)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(natsjs.EventSubject("orthanc-a"))); err != nil {
				t.Errorf("the reconciler's read of a source's first event: %v", err)
			}
		})
	}
}

// TestDirectGetOfDeadLettersPermitted: with direct gets enabled on the
// dead-letter stream too, the admin API's read of one letter (GET
// /admin/deadletters/{seq}, a replay or purge by number) goes to
// $JS.API.DIRECT.GET.STOWLINE_DEADLETTER, which the ingest's block
// granted and the forwarder's did not: each read waited out its time
// limit. Under each documented block one letter is read by its number.
func TestDirectGetOfDeadLettersPermitted(t *testing.T) {
	connect, ctx := documentedUsers(t)
	admin := connect("test-admin")
	s, err := natsjs.DefaultTopology().EnsureDeadLetters(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	allowDirect(ctx, t, admin, s)
	ev := events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.826.0.1.3680043.2.1125.1",
		LastUpdate: "20261126T101500", ReceivedAt: time.Now().UTC()}
	seq, _, err := deadletter.NewStore(admin, s).Add(ctx, &forward.DeadLetter{Event: ev, Class: forward.Permanent,
		Reason: "HTTP 415", Attempts: 1, OriginalSeq: 7, DeadLetteredAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"stowline-ingest", "stowline-forwarder"} {
		t.Run(user, func(t *testing.T) {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			store, err := deadletter.Open(rctx, connect(user))
			if err != nil {
				t.Fatal(err)
			}
			e, err := store.Get(rctx, seq)
			if err != nil || e.Event.StudyInstanceUID != ev.StudyInstanceUID {
				t.Fatalf("read dead letter %d: %+v, %v", seq, e, err)
			}
		})
	}
}

// documentedUsers starts a server whose users are an admin ("test-admin")
// and the ingest and forwarder with the documented permission blocks
// ("stowline-ingest", "stowline-forwarder"); connect logs in as one.
func documentedUsers(t *testing.T) (connect func(user string) jetstream.JetStream, ctx context.Context) {
	t.Helper()
	perms := docPermissions(t)
	const pass = "service-nats-password-0123"
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{
		StoreDir: t.TempDir(), ServerName: "direct", Port: -1,
		Configure: func(o *server.Options) {
			o.Users = []*server.User{
				{Username: "test-admin", Password: pass},
				{Username: "stowline-ingest", Password: pass, Permissions: perms["ingest"]},
				{Username: "stowline-forwarder", Password: pass, Permissions: perms["forwarder"]},
			}
		},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return func(user string) jetstream.JetStream {
		t.Helper()
		nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(user, pass))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}, ctx
}

// allowDirect enables direct gets on s, as an operator may
// (nats stream edit --allow-direct).
func allowDirect(ctx context.Context, t *testing.T, admin jetstream.JetStream, s jetstream.Stream) {
	t.Helper()
	cfg := s.CachedInfo().Config
	cfg.AllowDirect = true
	if _, err := admin.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}
