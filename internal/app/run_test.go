package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
)

// A NATS connection the client closed for good (it gives up after the
// same authentication error twice, reconnects notwithstanding) ends the
// process with an error, for its supervisor to restart it.
func TestRunEndsWhenNATSCloses(t *testing.T) {
	conn, err := natsjs.Connect(context.Background(), natsjs.ConnectOptions{StoreDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close) // and its embedded server, should run not return
	p := &process{conn: conn, log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- p.run(context.Background()) }()
	conn.NC.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "closed for good") {
			t.Fatalf("run = %v, want the closed connection's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run goes on after its NATS connection closed for good")
	}
}

// scriptedStreams answers Stream with its script's errors in turn, over
// and over (nil: the stream exists, made at streamMade; errRemade: it
// exists, made later); checks counts the calls.
type scriptedStreams struct {
	jetstream.JetStream
	script []error
	checks atomic.Int32
}

var (
	errRemade  = errors.New("made again")
	streamMade = time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
)

func (s *scriptedStreams) Stream(context.Context, string) (jetstream.Stream, error) {
	n := int(s.checks.Add(1)) - 1
	switch err := s.script[n%len(s.script)]; err {
	case nil:
		return madeStream{made: streamMade}, nil
	case errRemade:
		return madeStream{made: streamMade.Add(time.Minute)}, nil
	default:
		return nil, err
	}
}

// madeStream is a stream made at made.
type madeStream struct {
	jetstream.Stream
	made time.Time
}

func (m madeStream) CachedInfo() *jetstream.StreamInfo { return &jetstream.StreamInfo{Created: m.made} }

// watchEventStream ends the process only when two checks in a row find
// the event stream missing: one "not found" (a cluster electing a leader)
// followed by the stream is not enough, nor two with another error (a
// time-out, no connection) between them. A stream made again since the
// start (by another process, first to restart) ends it at once.
func TestWatchEventStream(t *testing.T) {
	notFound, timeout := jetstream.ErrStreamNotFound, context.DeadlineExceeded
	tests := []struct {
		name   string
		script []error
		ends   error // nil: runs on
	}{
		{"present", []error{nil}, nil},
		{"missing", []error{notFound}, errEventStreamLost},
		{"missing every other check", []error{notFound, nil}, nil},
		{"missing around a time-out", []error{notFound, timeout}, nil},
		{"missing twice after a time-out", []error{timeout, notFound, notFound}, errEventStreamLost},
		{"time-outs", []error{timeout}, nil},
		{"not connected", []error{nats.ErrConnectionClosed}, nil},
		{"made again", []error{nil, errRemade}, errEventStreamRemade},
		{"made again while missing", []error{notFound, errRemade}, errEventStreamRemade},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js := &scriptedStreams{script: tt.script}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				done <- watchEventStream(ctx, js, nil, time.Millisecond, streamMade, slog.New(slog.DiscardHandler))
			}()
			if tt.ends != nil {
				select {
				case err := <-done:
					if !errors.Is(err, tt.ends) {
						t.Fatalf("watch = %v, want %v", err, tt.ends)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the watch goes on with the event stream missing")
				}
				return
			}
			waitFor(t, "the watch checking 20 times", func() bool {
				select {
				case err := <-done:
					t.Fatalf("watch = %v after %d checks, want it running", err, js.checks.Load())
				default:
				}
				return js.checks.Load() >= 20
			})
			cancel()
			if err := <-done; err != nil {
				t.Errorf("watch = %v once stopped, want nil", err)
			}
		})
	}
}

// A reconnect has the watch check the stream at once, not an interval
// later (an hour here).
func TestWatchEventStreamChecksOnReconnect(t *testing.T) {
	js := &scriptedStreams{script: []error{nil}}
	reconnected := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- watchEventStream(ctx, js, reconnected, time.Hour, streamMade, slog.New(slog.DiscardHandler))
	}()
	for i := range 3 {
		reconnected <- struct{}{}
		waitFor(t, fmt.Sprintf("check %d, after reconnect %d", i+1, i+1), func() bool { return js.checks.Load() == int32(i+1) })
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("watch = %v once stopped, want nil", err)
	}
}

// The ingest and the forwarder end, with errEventStreamLost, once the
// NATS server lost the event stream (deleted, as `nats stream rm` does,
// or the server restarted on an empty store): they create it, and the
// consumers, dead-letter stream and buckets, only at start. Before the
// fix they ran on for good, the ingest answering 503 and the forwarder
// retrying its pulls, alive to /healthz. While the stream exists they go
// on through many checks. A stream made again by another process, first
// to restart, ends them too (errEventStreamRemade): it lacks what each
// makes only at its own start.
func TestServicesEndWhenTheEventStreamIsLost(t *testing.T) {
	const every = 50 * time.Millisecond
	losses := []struct {
		name string
		lose func(t *testing.T, ns *testnats.Server)
		// want: what the service ends with; a stream made again within a
		// check or two may also be found missing twice first.
		want []error
	}{
		{"stream deleted", func(t *testing.T, ns *testnats.Server) {
			if err := ns.JS.DeleteStream(t.Context(), natsjs.EventStream); err != nil {
				t.Fatal(err)
			}
		}, []error{errEventStreamLost}},
		{"stream deleted and made again", func(t *testing.T, ns *testnats.Server) {
			if err := ns.JS.DeleteStream(t.Context(), natsjs.EventStream); err != nil {
				t.Fatal(err)
			}
			if _, err := natsjs.DefaultTopology().EnsureEvents(t.Context(), ns.JS); err != nil {
				t.Fatal(err)
			}
		}, []error{errEventStreamRemade, errEventStreamLost}},
		{"server restarted on an empty store", func(t *testing.T, ns *testnats.Server) {
			u, err := url.Parse(ns.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			port, err := strconv.Atoi(u.Port())
			if err != nil {
				t.Fatal(err)
			}
			ns.Shutdown()
			srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "test", Port: port}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Shutdown)
		}, []error{errEventStreamLost}},
	}
	services := []struct {
		name string
		env  map[string]string
		run  func(ctx context.Context, getenv func(string) string) error
	}{
		{"ingest", map[string]string{"INGEST_TOKEN": "ingest-token-0123456789", "RECONCILE_ENABLED": "false"},
			func(ctx context.Context, getenv func(string) string) error {
				var c config.IngestService
				if err := config.Load(getenv, &c); err != nil {
					return err
				}
				return runIngest(ctx, &c, every, slog.New(slog.DiscardHandler))
			}},
		{"forwarder", map[string]string{"DICOMWEB_URL": "http://127.0.0.1:1/dicomweb"},
			func(ctx context.Context, getenv func(string) string) error {
				var c config.ForwarderService
				if err := config.Load(getenv, &c); err != nil {
					return err
				}
				return runForwarder(ctx, &c, every, slog.New(slog.DiscardHandler))
			}},
	}
	for _, loss := range losses {
		for _, tt := range services {
			t.Run(loss.name+"/"+tt.name, func(t *testing.T) {
				// A port the "restarted" case binds again: not one from the
				// ephemeral range, which an outgoing connection may take
				// while the server is down.
				port := testharness.FreePort(t)
				ns := testnats.StartWith(t, func(o *server.Options) { o.Port, o.DontListen = port, false })
				// Every check is a STREAM.INFO request; the server's own
				// subscription answers it, this one counts it.
				var checks atomic.Int32
				if _, err := ns.NC.Subscribe("$JS.API.STREAM.INFO."+natsjs.EventStream, func(*nats.Msg) { checks.Add(1) }); err != nil {
					t.Fatal(err)
				}
				addr := testharness.FreeAddr(t)
				env := map[string]string{"NATS_URL": ns.ClientURL(), "INGEST_ADDR": addr, "FORWARDER_ADDR": addr}
				for k, v := range tt.env {
					env[k] = v
				}
				ctx, stop := context.WithCancel(t.Context())
				defer stop()
				done := make(chan error, 1)
				go func() { done <- tt.run(ctx, func(k string) string { return env[k] }) }()
				running := func() {
					select {
					case err := <-done:
						t.Fatalf("%s = %v with the event stream in place", tt.name, err)
					default:
					}
				}
				waitFor(t, tt.name+" answering /healthz", func() bool {
					running()
					resp, err := http.Get("http://" + addr + "/healthz")
					if err != nil {
						return false
					}
					resp.Body.Close()
					return resp.StatusCode == http.StatusOK
				})
				from := checks.Load()
				waitFor(t, "20 checks of the event stream", func() bool {
					running()
					return checks.Load() >= from+20
				})

				loss.lose(t, ns)
				select {
				case err := <-done:
					if !slices.ContainsFunc(loss.want, func(want error) bool { return errors.Is(err, want) }) {
						t.Fatalf("%s = %v, want one of %v", tt.name, err, loss.want)
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("%s runs on 20 s after the event stream was lost", tt.name)
				}
			})
		}
	}
}
