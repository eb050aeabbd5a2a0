// Package testnats starts a real embedded JetStream server for tests.
package testnats

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// Server is a running embedded server with a client connection.
type Server struct {
	*natsjs.EmbeddedServer
	NC *nats.Conn
	JS jetstream.JetStream
}

// Start runs an embedded JetStream server in a temporary directory, with
// the event stream created; all of it is stopped at cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, nil)
}

// StartWith is Start with the server's options changed by configure (a
// small JetStream store, an account's limits) when it is not nil.
func StartWith(t testing.TB, configure func(*server.Options)) *Server {
	t.Helper()
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "test", Configure: configure}, nil)
	if err != nil {
		t.Fatalf("start embedded nats: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := natsjs.DefaultTopology().EnsureEvents(ctx, js); err != nil {
		t.Fatalf("ensure stream: %v", err)
	}
	return &Server{EmbeddedServer: srv, NC: nc, JS: js}
}

// FillStore fills a JetStream store with a stream of its own until the
// server refuses a message, and returns that stream (purge it to free
// the space).
func FillStore(ctx context.Context, t testing.TB, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	fill, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "FILL", Subjects: []string{"fill"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if _, err := js.Publish(ctx, "fill", []byte(strings.Repeat("x", 1024))); err != nil {
			return fill
		}
		if i > 1000 {
			t.Fatal("the store does not fill")
		}
	}
}

// AccountLimits is a StartWith configure that puts the clients in an
// account with these JetStream limits, in nats-server's configuration
// syntax ("max_file: 64K", "max_mem: 0, max_file: 1G").
func AccountLimits(t testing.TB, limits string) func(*server.Options) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "account.conf")
	conf := "accounts { A: { jetstream: { " + limits + " }, users: [{user: u, password: p}] } }\nno_auth_user: u\n"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	parsed, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return func(o *server.Options) {
		o.Accounts, o.Users, o.NoAuthUser = parsed.Accounts, parsed.Users, parsed.NoAuthUser
	}
}

// WaitCounted waits until the consumers of the event stream have counted
// every event stored in it so far. nats-server counts a stored message
// for its consumers after it acknowledged the publish, in a goroutine of
// the stream, in the order stored: a consumer read at once may show
// none pending. Once a consumer of its own counts a message stored last,
// on a subject no lane takes (a triage subject), the others have counted
// theirs. That message is deleted again.
func WaitCounted(ctx context.Context, t testing.TB, js jetstream.JetStream) {
	t.Helper()
	subject := natsjs.TriageSubject("counted")
	stream, err := js.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatalf("wait for the event stream's counts: %v", err)
	}
	// New messages only, and kept through a long wait on a loaded host.
	c, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{FilterSubject: subject, DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy: jetstream.AckExplicitPolicy, InactiveThreshold: time.Minute})
	if err != nil {
		t.Fatalf("consumer to wait for the event stream's counts: %v", err)
	}
	defer func() { _ = stream.DeleteConsumer(context.WithoutCancel(ctx), c.CachedInfo().Name) }()
	ack, err := js.Publish(ctx, subject, nil)
	if err != nil {
		t.Fatalf("publish to wait for the event stream's counts: %v", err)
	}
	defer func() { _ = stream.DeleteMsg(context.WithoutCancel(ctx), ack.Sequence) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatalf("consumer to wait for the event stream's counts: %v", err)
		}
		if info.NumPending == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the event stream's consumers did not count its events within 30 s: %+v", info)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
