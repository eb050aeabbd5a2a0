package natsjs_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
)

var discard = slog.New(slog.DiscardHandler)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startEmbedded starts an embedded server on dir (a new temporary one if
// empty), stopped at cleanup unless the test stops it first.
func startEmbedded(t *testing.T, opts natsjs.EmbeddedOptions) *natsjs.EmbeddedServer {
	t.Helper()
	if opts.StoreDir == "" {
		opts.StoreDir = t.TempDir()
	}
	srv, err := natsjs.StartEmbedded(context.Background(), opts, discard)
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// connectJS opens an in-process client of srv, closed at cleanup.
func connectJS(t *testing.T, srv *natsjs.EmbeddedServer) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func event(lastUpdate string) *events.StudyStable {
	return &events.StudyStable{
		Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID:   "5b2a8e4c-1f6d3a90-0c7e2b41-9d8f6a53-e4b1c2d7",
		StudyInstanceUID: "1.2.826.0.1.3680043.2.1143.7", LastUpdate: lastUpdate,
	}
}

// streamMsgs is the number of messages in a stream.
func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := natsjs.OpenStream(testCtx(t), js, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestStartEmbeddedNeedsAStoreDir(t *testing.T) {
	if srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{}, discard); err == nil {
		srv.Shutdown()
		t.Fatal("StartEmbedded without a store directory succeeded")
	}
}

func TestEmbeddedServerListensOnlyWhenAsked(t *testing.T) {
	tests := []struct {
		name   string
		port   int
		listen bool
	}{
		{"in-process only by default", 0, false},
		{"over TCP with a port", server.RANDOM_PORT, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startEmbedded(t, natsjs.EmbeddedOptions{ServerName: "listen-test", Port: tt.port})
			url := srv.ClientURL()
			if (url != "") != tt.listen {
				t.Fatalf("ClientURL = %q, want a URL: %v", url, tt.listen)
			}
			// The in-process connection works either way.
			nc, _ := connectJS(t, srv)
			if err := nc.Flush(); err != nil {
				t.Errorf("in-process connection: %v", err)
			}
			if tt.listen {
				tcp, err := nats.Connect(url)
				if err != nil {
					t.Fatalf("connect to %s: %v", url, err)
				}
				tcp.Close()
			}
		})
	}
}

// Single-host mode keeps the queue in the store directory: a restart of
// the embedded server finds every stream and message again.
func TestEmbeddedServerRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	srv := startEmbedded(t, natsjs.EmbeddedOptions{StoreDir: dir, ServerName: "restart-test"})
	nc, js := connectJS(t, srv)
	if _, err := natsjs.DefaultTopology().EnsureEvents(testCtx(t), js); err != nil {
		t.Fatal(err)
	}
	ack, err := (natsjs.Publisher{JS: js}).Publish(testCtx(t), event("20260101T120000"))
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	srv.Shutdown()

	srv = startEmbedded(t, natsjs.EmbeddedOptions{StoreDir: dir, ServerName: "restart-test"})
	_, js = connectJS(t, srv)
	s, err := natsjs.OpenStream(testCtx(t), js, natsjs.EventStream)
	if err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	m, err := s.GetMsg(testCtx(t), ack.Sequence)
	if err != nil {
		t.Fatalf("after the restart, event %d: %v", ack.Sequence, err)
	}
	if ev, err := events.Decode(m.Data); err != nil || *ev != *event("20260101T120000") {
		t.Errorf("after the restart the event reads %+v (%v)", ev, err)
	}
}

func TestConnect(t *testing.T) {
	t.Run("empty URL starts the embedded server in the store directory", func(t *testing.T) {
		dir := t.TempDir()
		c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{StoreDir: dir}, discard)
		if err != nil {
			t.Fatalf("Connect: %v", err)
		}
		t.Cleanup(c.Close)
		if err := c.Ready(testCtx(t)); !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("Ready before the event stream exists = %v, want stream not found", err)
		}
		if _, err := natsjs.DefaultTopology().EnsureEvents(testCtx(t), c.JS); err != nil {
			t.Fatal(err)
		}
		if err := c.Ready(testCtx(t)); err != nil {
			t.Errorf("Ready: %v", err)
		}
		if _, err := (natsjs.Publisher{JS: c.JS}).Publish(testCtx(t), event("20260101T120000")); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if !c.NC.IsClosed() {
			t.Error("the connection is still open after Close")
		}
		// Close stopped the embedded server: a new one opens the same
		// store and finds the event.
		srv := startEmbedded(t, natsjs.EmbeddedOptions{StoreDir: dir})
		_, js := connectJS(t, srv)
		if n := streamMsgs(t, js, natsjs.EventStream); n != 1 {
			t.Errorf("the store holds %d events after Close, want 1", n)
		}
	})

	t.Run("URL of a running server", func(t *testing.T) {
		srv := startEmbedded(t, natsjs.EmbeddedOptions{Port: server.RANDOM_PORT})
		c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: srv.ClientURL()}, discard)
		if err != nil {
			t.Fatalf("Connect(%s): %v", srv.ClientURL(), err)
		}
		t.Cleanup(c.Close)
		if _, err := natsjs.DefaultTopology().EnsureEvents(testCtx(t), c.JS); err != nil {
			t.Fatal(err)
		}
		if err := c.Ready(testCtx(t)); err != nil {
			t.Errorf("Ready: %v", err)
		}
	})

	t.Run("unreachable URL fails", func(t *testing.T) {
		// Nothing listens on the port of a listener that was just closed.
		srv := startEmbedded(t, natsjs.EmbeddedOptions{Port: server.RANDOM_PORT})
		url := srv.ClientURL()
		srv.Shutdown()
		c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: url}, discard)
		if err == nil {
			c.Close()
			t.Fatalf("Connect(%s) to a stopped server succeeded", url)
		}
		if !strings.Contains(err.Error(), "connect to NATS") {
			t.Errorf("error %q does not say what failed", err)
		}
	})
}

// Reconnected signals a reconnect, here to a NATS server restarted on an
// empty store, which has no event stream any more: what the process's
// watch (app's watchEventStream) checks for at once.
func TestConnectSignalsReconnects(t *testing.T) {
	// Restarted on the same port: not one from the ephemeral range, which
	// an outgoing connection may take while the server is down.
	port := testharness.FreePort(t)
	srv := startEmbedded(t, natsjs.EmbeddedOptions{Port: port})
	c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: srv.ClientURL()}, discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := natsjs.DefaultTopology().EnsureEvents(testCtx(t), c.JS); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	startEmbedded(t, natsjs.EmbeddedOptions{Port: port})
	select {
	case <-c.Reconnected():
	case <-time.After(20 * time.Second):
		t.Fatal("no reconnect signalled 20 s after the server restarted")
	}
	if _, err := c.JS.Stream(testCtx(t), natsjs.EventStream); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("event stream after the restart on an empty store: %v, want stream not found", err)
	}
}

// Close drains: messages already received are still handled before the
// connection closes (a plain close would drop them).
func TestCloseDrains(t *testing.T) {
	c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{StoreDir: t.TempDir()}, discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	const n = 10
	var handled atomic.Int32
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // a failed test must not leave Close waiting on the handler
	sub, err := c.NC.Subscribe("drain.test", func(*nats.Msg) {
		<-release
		handled.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := c.NC.Publish("drain.test", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	// The handler holds the first message: wait until all of them have
	// reached the client (Pending counts the one in the handler too).
	deadline := time.Now().Add(10 * time.Second)
	for {
		msgs, _, err := sub.Pending()
		if err == nil && msgs == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages reached the subscription (err %v)", msgs, n, err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	releaseOnce()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return")
	}
	if got := handled.Load(); got != n {
		t.Errorf("%d of %d received messages handled before Close returned", got, n)
	}
	if !c.NC.IsClosed() {
		t.Error("the connection is still open after Close")
	}
}

// Every stream and bucket: the read-only openers refuse what no service
// has created; Ensure creates it, and again changes nothing.
func TestTopologyEnsureIsIdempotent(t *testing.T) {
	srv := startEmbedded(t, natsjs.EmbeddedOptions{})
	_, js := connectJS(t, srv)
	topo := natsjs.DefaultTopology()
	stream := func(name string) func(context.Context) error {
		return func(ctx context.Context) error { _, err := natsjs.OpenStream(ctx, js, name); return err }
	}
	bucket := func(name string) func(context.Context) error {
		return func(ctx context.Context) error { _, err := natsjs.OpenKV(ctx, js, name); return err }
	}
	tests := []struct {
		name   string
		open   func(context.Context) error
		ensure func(context.Context) error
	}{
		{natsjs.EventStream, stream(natsjs.EventStream), func(ctx context.Context) error { _, err := topo.EnsureEvents(ctx, js); return err }},
		{natsjs.DeadLetterStream, stream(natsjs.DeadLetterStream), func(ctx context.Context) error { _, err := topo.EnsureDeadLetters(ctx, js); return err }},
		{natsjs.FailureBucket, bucket(natsjs.FailureBucket), func(ctx context.Context) error { _, err := topo.EnsureFailureLog(ctx, js); return err }},
		{natsjs.LedgerBucket, bucket(natsjs.LedgerBucket), func(ctx context.Context) error {
			_, err := topo.EnsureLedger(ctx, js, natsjs.DefaultDestination)
			return err
		}},
		{natsjs.ReconcileBucket, bucket(natsjs.ReconcileBucket), func(ctx context.Context) error { _, err := topo.EnsureReconcile(ctx, js); return err }},
		{natsjs.StatusBucket, bucket(natsjs.StatusBucket), func(ctx context.Context) error { _, err := topo.EnsureStatus(ctx, js); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			if err := tt.open(ctx); !errors.Is(err, natsjs.ErrNotProvisioned) || !strings.Contains(err.Error(), tt.name) {
				t.Errorf("open before it exists = %v, want ErrNotProvisioned naming %s", err, tt.name)
			}
			for i := range 2 {
				if err := tt.ensure(ctx); err != nil {
					t.Fatalf("Ensure, call %d: %v", i+1, err)
				}
			}
			if err := tt.open(ctx); err != nil {
				t.Errorf("open after Ensure: %v", err)
			}
		})
	}

	t.Run("consumer", func(t *testing.T) {
		ctx := testCtx(t)
		for i := range 2 {
			if _, err := topo.EnsureConsumer(ctx, js, natsjs.DefaultDestination); err != nil {
				t.Fatalf("EnsureConsumer, call %d: %v", i+1, err)
			}
		}
		s, err := natsjs.OpenStream(ctx, js, natsjs.EventStream)
		if err != nil {
			t.Fatal(err)
		}
		names := s.ConsumerNames(ctx)
		var got []string
		for name := range names.Name() {
			got = append(got, name)
		}
		slices.Sort(got)
		want := []string{natsjs.ForwarderConsumer, natsjs.LowConsumerPrefix + natsjs.DefaultDestination, natsjs.StatConsumerPrefix + natsjs.DefaultDestination}
		if !slices.Equal(got, want) {
			t.Errorf("consumers = %v, want only %v (one per lane)", got, want)
		}
	})

	t.Run("a changed setting updates the stream", func(t *testing.T) {
		ctx := testCtx(t)
		changed := topo
		changed.Retention = 48 * time.Hour
		s, err := changed.EnsureEvents(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.MaxAge != changed.Retention || info.Config.Duplicates != topo.DedupeWindow {
			t.Errorf("stream MaxAge %v, Duplicates %v; want %v and %v", info.Config.MaxAge, info.Config.Duplicates, changed.Retention, topo.DedupeWindow)
		}
	})
}

func TestEventSubject(t *testing.T) {
	srv := startEmbedded(t, natsjs.EmbeddedOptions{})
	_, js := connectJS(t, srv)
	s, err := natsjs.DefaultTopology().EnsureEvents(testCtx(t), js)
	if err != nil {
		t.Fatal(err)
	}
	ev := event("20260101T120000")
	if got, want := natsjs.EventSubject(ev.Source), "stowline.study.stable.orthanc-a"; got != want {
		t.Errorf("EventSubject = %q, want %q", got, want)
	}
	ack, err := (natsjs.Publisher{JS: js}).Publish(testCtx(t), ev)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(testCtx(t), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != natsjs.EventSubject(ev.Source) {
		t.Errorf("event stored on %q, want %q", m.Subject, natsjs.EventSubject(ev.Source))
	}
}

func TestPublisherDedupe(t *testing.T) {
	srv := startEmbedded(t, natsjs.EmbeddedOptions{})
	_, js := connectJS(t, srv)
	pub := natsjs.Publisher{JS: js}
	if _, err := pub.Publish(testCtx(t), event("20260101T120000")); err == nil {
		t.Error("Publish without the event stream succeeded")
	}
	if _, err := natsjs.DefaultTopology().EnsureEvents(testCtx(t), js); err != nil {
		t.Fatal(err)
	}

	first, err := pub.Publish(testCtx(t), event("20260101T120000"))
	if err != nil || first.Duplicate {
		t.Fatalf("first Publish = %+v, %v", first, err)
	}
	tests := []struct {
		name    string
		publish func() (*jetstream.PubAck, error)
		dup     bool
	}{
		{"same event again (Lua script and reconciler)", func() (*jetstream.PubAck, error) {
			return pub.Publish(testCtx(t), event("20260101T120000"))
		}, true},
		{"the study changed (new LastUpdate)", func() (*jetstream.PubAck, error) {
			return pub.Publish(testCtx(t), event("20260101T130000"))
		}, false},
		{"same event under another dedupe ID (replay)", func() (*jetstream.PubAck, error) {
			ev := event("20260101T120000")
			return natsjs.PublishAs(testCtx(t), js, ev, ev.MsgID()+"/replay/1")
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ack, err := tt.publish()
			if err != nil {
				t.Fatal(err)
			}
			if ack.Duplicate != tt.dup {
				t.Errorf("Duplicate = %v, want %v", ack.Duplicate, tt.dup)
			}
			if tt.dup && ack.Sequence != first.Sequence {
				t.Errorf("a duplicate acknowledged sequence %d, want the original %d", ack.Sequence, first.Sequence)
			}
			if !tt.dup && ack.Sequence == first.Sequence {
				t.Errorf("a new event got the first event's sequence %d", ack.Sequence)
			}
		})
	}
	if n := streamMsgs(t, js, natsjs.EventStream); n != 3 {
		t.Errorf("the stream holds %d events, want 3", n)
	}
}

// Two embedded servers on one store directory would each number their
// own events and overwrite the other's: the second is refused until the
// first has stopped.
func TestStoreDirectoryTakenOnce(t *testing.T) {
	dir := t.TempDir()
	first, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: dir}, discard)
	if err != nil {
		t.Fatal(err)
	}
	if second, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: dir}, discard); !errors.Is(err, natsjs.ErrStoreInUse) {
		if second != nil {
			second.Shutdown()
		}
		t.Fatalf("second server on the same store: %v; want ErrStoreInUse", err)
	}
	first.Shutdown()
	startEmbedded(t, natsjs.EmbeddedOptions{StoreDir: dir})
}

// TestDeadLetterDedupeOutlastsRedelivery: a letter stored again for the
// same delivered event is dropped for as long as that event may take to
// come back (after the ack wait when its Term was lost, after a retry
// delay of up to FORWARDER_RETRY_MAX_DELAY when the letter's PubAck was,
// plus the time to send the study again), on a new deployment and on one
// whose dead-letter stream was made with the old two-minute window.
func TestDeadLetterDedupeOutlastsRedelivery(t *testing.T) {
	for _, tc := range []struct {
		name      string
		retention time.Duration
		dedupe    time.Duration // EVENTS_DEDUPE_WINDOW; 0: the default, 24h
		existing  bool          // the stream exists with the two-minute window
		want      time.Duration
	}{
		{"new deployment", 30 * 24 * time.Hour, 0, false, 24 * time.Hour},
		{"existing stream", 30 * 24 * time.Hour, 0, true, 24 * time.Hour},
		{"shortest retention", time.Hour, 0, true, time.Hour},
		{"events' window lowered (an account's cap)", 30 * 24 * time.Hour, 30 * time.Minute, true, 30 * time.Minute},
		{"events' window under the 2 minutes it was", 30 * 24 * time.Hour, 30 * time.Second, true, 2 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
			ctx := testCtx(t)
			topo := natsjs.DefaultTopology()
			topo.DeadLetterRetention = tc.retention
			if tc.dedupe > 0 {
				topo.DedupeWindow = tc.dedupe
			}
			if tc.existing {
				if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
					Name:        natsjs.DeadLetterStream,
					Description: "stowline: studies that could not be forwarded, with the reason",
					Subjects:    []string{natsjs.DeadLetterSubjectPrefix + ">"},
					MaxAge:      tc.retention,
					Duplicates:  2 * time.Minute,
				}); err != nil {
					t.Fatal(err)
				}
			}
			s, err := topo.EnsureDeadLetters(ctx, js)
			if err != nil {
				t.Fatal(err)
			}
			info, err := s.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.Config.Duplicates != tc.want {
				t.Errorf("dead-letter dedupe window %v, want %v: a letter stored again when its event comes back later is kept twice, and replayed twice",
					info.Config.Duplicates, tc.want)
			}
			// The same letter twice is stored once.
			for i, wantDup := range []bool{false, true} {
				msg := &nats.Msg{Subject: natsjs.DeadLetterSubject("default", "orthanc-a"), Data: []byte("{}"), Header: nats.Header{}}
				msg.Header.Set(jetstream.MsgIDHeader, "dl/default/7/orthanc-a/x/20261204T120000")
				ack, err := js.PublishMsg(ctx, msg)
				if err != nil {
					t.Fatal(err)
				}
				if ack.Duplicate != wantDup {
					t.Errorf("letter %d: duplicate %v, want %v", i+1, ack.Duplicate, wantDup)
				}
			}
		})
	}
}

// TestConnectLogsPermissionViolations: NATS refuses a publish or a
// subscription its user may not make with an asynchronous error, and a
// refused JetStream request only times out. The log must name the
// refusal and its subject, or a missing permission passes for a slow
// cluster ("JetStream did not answer ...; retrying", then "context
// deadline exceeded") and a refused subscription goes unnoticed.
func TestConnectLogsPermissionViolations(t *testing.T) {
	const user, password = "stowline-forwarder", "s3cret-pw"
	srv := startEmbedded(t, natsjs.EmbeddedOptions{Port: server.RANDOM_PORT, Configure: func(o *server.Options) {
		o.Users = []*server.User{{Username: user, Password: password, Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.INFO", "$JS.API.STREAM.INFO.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}}}
	}})
	for _, tc := range []struct {
		name    string
		do      func(t *testing.T, c *natsjs.Conn)
		subject string
	}{
		{"a JetStream request", func(t *testing.T, c *natsjs.Conn) {
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			if _, err := natsjs.DefaultTopology().EnsureEvents(ctx, c.JS); err == nil {
				t.Error("EnsureEvents without the permission to create the stream succeeded")
			}
		}, "$JS.API.STREAM."},
		{"a subscription", func(t *testing.T, c *natsjs.Conn) {
			stop, err := natsjs.WatchMaxDeliver(c.NC, natsjs.ForwarderConsumer, func(natsjs.MaxDeliverReached) {})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
		}, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + natsjs.EventStream + "." + natsjs.ForwarderConsumer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs testharness.LogBuffer
			log := slog.New(slog.NewJSONHandler(&logs, nil))
			c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: srv.ClientURL(), Auth: []nats.Option{nats.UserInfo(user, password)}}, log)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			tc.do(t, c)
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(logs.String(), "ermissions violation") || !strings.Contains(logs.String(), tc.subject) {
				if time.Now().After(deadline) {
					t.Fatalf("no permission violation for %s logged; the log:\n%s", tc.subject, logs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			if strings.Contains(logs.String(), password) {
				t.Errorf("the log holds the password:\n%s", logs.String())
			}
			// The request's retries are refused again: one error says it.
			if n := strings.Count(logs.String(), `"level":"ERROR"`); n != 1 {
				t.Errorf("%d errors logged, want 1 (repeats within a minute at debug level):\n%s", n, logs.String())
			}
		})
	}
}

// TestPublishRefusedUntilAccepted: NATS refuses a publish its user may not
// make only with an asynchronous error, and the publish waits out its
// time-out, while the stream still answers Ready. PublishRefused names
// each event subject refused (here the stat and low lanes', the routine
// lane's being allowed) until a publish there succeeds (the permission
// granted by a server reload, with no reconnect), or until none was
// refused there for 10 minutes (the low lane's, no longer published to).
func TestPublishRefusedUntilAccepted(t *testing.T) {
	const user, password = "stowline-ingest", "s3cret-pw"
	ingestPerms := func(events string) *server.Permissions {
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>", events}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}
	}
	routine, stat, low := event("20260101T120000"), event("20260101T120001"), event("20260101T120002")
	stat.Priority, low.Priority = events.PriorityStat, events.PriorityLow
	statSubject := natsjs.LaneSubject(events.PriorityStat, "", stat.Source)
	lowSubject := natsjs.LaneSubject(events.PriorityLow, "", low.Source)
	var opts *server.Options
	srv := startEmbedded(t, natsjs.EmbeddedOptions{Port: server.RANDOM_PORT, Configure: func(o *server.Options) {
		opts = o
		o.Users = []*server.User{
			{Username: "admin", Password: "admin-pw"},
			{Username: user, Password: password, Permissions: ingestPerms(natsjs.EventSubject(routine.Source))},
		}
	}})
	admin, err := nats.Connect(srv.ClientURL(), nats.UserInfo("admin", "admin-pw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	adminJS, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := natsjs.DefaultTopology().EnsureEvents(testCtx(t), adminJS); err != nil {
		t.Fatal(err)
	}
	var logs testharness.LogBuffer
	c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: srv.ClientURL(), Auth: []nats.Option{nats.UserInfo(user, password)}}, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var elapsed atomic.Int64 // the refusals' clock, moved by the test
	start := time.Now()
	c.WithRefusalClock(func() time.Time { return start.Add(time.Duration(elapsed.Load())) })
	// A refused publish waits all of its timeout: short for those, long
	// for those that must succeed on a loaded host.
	publish := func(ev *events.StudyStable, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		_, err := natsjs.Publisher{JS: c.JS}.Publish(ctx, ev)
		return err
	}
	refused := func() string {
		if err := c.PublishRefused(t.Context()); err != nil {
			return err.Error()
		}
		return ""
	}
	if got := refused(); got != "" {
		t.Fatalf("PublishRefused before any publish = %v", got)
	}

	for _, ev := range []*events.StudyStable{stat, low} {
		if err := publish(ev, time.Second); err == nil {
			t.Fatalf("a publish to the %s lane without the permission succeeded", ev.Priority)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(refused(), lowSubject) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := refused(); !strings.Contains(got, statSubject) || !strings.Contains(got, lowSubject) {
		t.Fatalf("PublishRefused after refused publishes to %s and %s = %v, want both named", statSubject, lowSubject, got)
	}
	if err := c.Ready(t.Context()); err != nil {
		t.Errorf("Ready = %v: the stream answers (the refusal is PublishRefused's to report)", err)
	}
	// Another subject's publish is no sign for the refused one.
	if err := publish(routine, 10*time.Second); err != nil {
		t.Fatalf("a routine publish: %v", err)
	}
	if got := refused(); !strings.Contains(got, statSubject) {
		t.Errorf("PublishRefused cleared by a publish to another subject: %q", got)
	}
	if !strings.Contains(logs.String(), `"subject":"`+statSubject+`"`) {
		t.Errorf("no log line names %s:\n%s", statSubject, logs.String())
	}
	elapsed.Store(int64(9 * time.Minute))
	if got := refused(); !strings.Contains(got, statSubject) || !strings.Contains(got, lowSubject) {
		t.Errorf("PublishRefused 9 minutes after the refusals = %q, want both still named", got)
	}

	// The permission granted (a server reload: the connection stays).
	granted := opts.Clone()
	granted.Users[1].Permissions = ingestPerms(natsjs.EventSubjectPrefix + ">")
	if err := srv.NATSServer().ReloadOptions(granted); err != nil {
		t.Fatal(err)
	}
	if err := publish(stat, 10*time.Second); err != nil {
		t.Fatalf("a stat publish once allowed: %v", err)
	}
	if got := refused(); strings.Contains(got, statSubject) || !strings.Contains(got, lowSubject) {
		t.Errorf("PublishRefused after a publish to %s succeeded = %q, want only %s named", statSubject, got, lowSubject)
	}
	// Nothing published to the low lane since: its refusal is forgotten
	// 10 minutes after it was seen.
	elapsed.Store(int64(10 * time.Minute))
	if got := refused(); got != "" {
		t.Errorf("PublishRefused 10 minutes after the last refusal = %q, want nothing named", got)
	}
}

// A NATS_URL with a user and no password carries an auth token
// (nats://token@host): it stays out of the connect and reconnect logs,
// which nats.go's ConnectedUrlRedacted would not ensure (it masks only a
// password).
func TestConnectLogsNoToken(t *testing.T) {
	const token = "s3cr3tToken"
	dir := t.TempDir()
	withToken := func(o *server.Options) { o.Authorization = token }
	// Restarted on the same port: not one from the ephemeral range, which
	// an outgoing connection may take while the server is down.
	port := testharness.FreePort(t)
	srv := startEmbedded(t, natsjs.EmbeddedOptions{StoreDir: dir, Port: port, Configure: withToken})
	plain := srv.ClientURL()
	var logs testharness.LogBuffer
	c, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{URL: strings.Replace(plain, "://", "://"+token+"@", 1)}, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("Connect with a token URL: %v", err)
	}
	t.Cleanup(c.Close)

	// The same server back on the same port: the client reconnects.
	srv.Shutdown()
	startEmbedded(t, natsjs.EmbeddedOptions{StoreDir: dir, Port: port, Configure: withToken})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "reconnected to NATS") {
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect logged; the log:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, msg := range []string{"connected to NATS", "reconnected to NATS"} {
		if !strings.Contains(logs.String(), `"msg":"`+msg+`","url":"`+plain+`"`) {
			t.Errorf("%q is not logged with url %s; the log:\n%s", msg, plain, logs.String())
		}
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the log holds the token:\n%s", logs.String())
	}
}
