package natsjs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// EmbeddedOptions configures the embedded server.
type EmbeddedOptions struct {
	// StoreDir holds the JetStream data; it survives restarts.
	StoreDir string
	// ServerName identifies the node in logs and cluster metadata.
	ServerName string
	// Host and Port, when Port is not zero, make the server reachable over
	// TCP (for the nats CLI, or a second process); by default it only
	// accepts in-process connections, so nothing listens on the network.
	Host string
	Port int
	// Cluster makes this node part of a JetStream cluster (tests of
	// clustering): the cluster name, this node's route listen port, and
	// the routes to the other nodes.
	Cluster *EmbeddedCluster
	// SyncAlways writes every stored message to disk before it is
	// acknowledged (nats-server's default syncs every 2 minutes).
	SyncAlways bool
	// Configure, if set, adjusts the server options last (tests: users,
	// permissions, TLS).
	Configure func(*server.Options)
}

// EmbeddedCluster joins the node to a JetStream cluster.
type EmbeddedCluster struct {
	Name   string
	Host   string
	Port   int
	Routes []string
}

// EmbeddedServer is a running embedded nats-server.
type EmbeddedServer struct {
	ns     *server.Server
	unlock func()

	// The write errors publishes look at, read at most every
	// healthInterval: Healthz walks every stream and consumer (about
	// 30 µs), too much for each of thousands of events a second.
	mu        sync.Mutex
	checkedAt time.Time
	health    []server.HealthzError
}

// ErrStoreInUse means another process runs an embedded server on the
// same store directory.
var ErrStoreInUse = errors.New("store directory in use")

// embeddedReadyTimeout bounds the wait for the embedded server to accept
// connections. JetStream recovers its store first: after an unclean stop
// (a power cut), a large store (the ledger never expires) on a slow disk
// can take minutes. Giving up sooner would restart the process into the
// same recovery, over and over.
const embeddedReadyTimeout = 15 * time.Minute

// StartEmbedded starts the server and waits until it accepts connections,
// or ctx ends (a stop signal during a long recovery of its store).
func StartEmbedded(ctx context.Context, opts EmbeddedOptions, log *slog.Logger) (*EmbeddedServer, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("embedded NATS: store directory is required")
	}
	if err := os.MkdirAll(opts.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("embedded NATS: create store directory (NATS_STORE_DIR): %w", err)
	}
	if err := checkStoreOwner(opts.StoreDir); err != nil {
		return nil, err
	}
	unlock, err := lockStore(opts.StoreDir)
	if err != nil {
		return nil, err
	}
	started := false
	defer func() {
		if !started {
			unlock()
		}
	}()
	sopts := &server.Options{
		ServerName: opts.ServerName,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		Host:       opts.Host,
		Port:       opts.Port,
		DontListen: opts.Port == 0,
		NoSigs:     true,
		SyncAlways: opts.SyncAlways,
		// The JetStream domain is not set: a single-host install needs none.
	}
	if sopts.Host == "" {
		sopts.Host = "127.0.0.1"
	}
	if c := opts.Cluster; c != nil {
		sopts.DontListen = false
		sopts.Cluster = server.ClusterOpts{Name: c.Name, Host: c.Host, Port: c.Port}
		routes, err := parseRoutes(c.Routes)
		if err != nil {
			return nil, err
		}
		sopts.Routes = routes
	}
	if opts.Configure != nil {
		opts.Configure(sopts)
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: configure server: %w", err)
	}
	if log != nil {
		ns.SetLoggerV2(&logAdapter{log: log.With("component", "nats-server")}, false, false, false)
	}
	go ns.Start()
	if !waitReady(ctx, ns.ReadyForConnections, embeddedReadyTimeout, readyLogEvery, log) {
		ns.Shutdown()
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("embedded NATS: stopped before the server was ready: %w", err)
		}
		return nil, fmt.Errorf("embedded NATS: server not ready after %s", embeddedReadyTimeout)
	}
	started = true
	return &EmbeddedServer{ns: ns, unlock: unlock}, nil
}

// readyLogEvery is how often a slow start of the embedded server is
// logged; readyPoll how long each wait for it lasts, so that a stop
// signal ends the wait within it.
const (
	readyLogEvery = 15 * time.Second
	readyPoll     = time.Second
)

// waitReady waits up to timeout for ready (ns.ReadyForConnections), or
// until ctx ends, and says every so often why the process is not up yet.
func waitReady(ctx context.Context, ready func(time.Duration) bool, timeout, every time.Duration, log *slog.Logger) bool {
	start := time.Now()
	logged := start
	for {
		left := timeout - time.Since(start)
		if left <= 0 || ctx.Err() != nil {
			return false
		}
		if ready(min(readyPoll, left)) {
			return true
		}
		if log != nil && time.Since(logged) >= every && time.Since(start) < timeout {
			logged = time.Now()
			log.Info("embedded NATS not ready yet: JetStream is recovering its store (minutes after an unclean stop of a large store)",
				"waited", time.Since(start).Round(time.Second).String(), "timeout", timeout.String())
		}
	}
}

func parseRoutes(routes []string) ([]*url.URL, error) {
	out := make([]*url.URL, 0, len(routes))
	for _, r := range routes {
		u, err := url.Parse(r)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS: route %q: %w", r, err)
		}
		out = append(out, u)
	}
	return out, nil
}

// Connect opens a client connection: in-process when the server does not
// listen, over TCP otherwise.
func (s *EmbeddedServer) Connect(opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.InProcessServer(s.ns), nats.Name("stowline")}, opts...)
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: connect: %w", err)
	}
	return nc, nil
}

// ClientURL is the TCP URL of the server, or "" if it does not listen.
func (s *EmbeddedServer) ClientURL() string {
	if s.ns.Addr() == nil {
		return ""
	}
	return s.ns.ClientURL()
}

// StorageLimits is the server's JetStream storage limits in bytes
// (max_file_store, max_memory_store), false before JetStream runs. The
// embedded server sets neither: nats-server takes 75% of the disk free
// in the store directory at start (plus 75% of what its store already
// held) and 75% of the memory, and these bound an account without
// limits of its own.
func (s *EmbeddedServer) StorageLimits() (file, memory int64, ok bool) {
	c := s.ns.JetStreamConfig()
	if c == nil {
		return 0, 0, false
	}
	return c.MaxStore, c.MaxMemory, true
}

// Shutdown stops the server and waits until it has stopped, so its store
// is flushed and closed.
func (s *EmbeddedServer) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.unlock()
}

// writeErrors reports the streams and consumers the server failed to
// write (a full disk), of stream only when it is not empty: nats-server
// answers none of their writes, not even once space is freed, until it
// restarts, so every publish only times out. The error is ErrStorageFull
// when the disk is full.
func (s *EmbeddedServer) writeErrors(stream string) error {
	return writeErrorIn(s.ns.Healthz(&server.HealthzOptions{Details: true}).Errors, stream)
}

// healthInterval bounds how stale publishWriteErrors may be.
const healthInterval = 100 * time.Millisecond

// publishWriteErrors is writeErrors as of at most healthInterval ago.
func (s *EmbeddedServer) publishWriteErrors(stream string) error {
	s.mu.Lock()
	if time.Since(s.checkedAt) >= healthInterval {
		s.health, s.checkedAt = s.ns.Healthz(&server.HealthzOptions{Details: true}).Errors, time.Now()
	}
	health := s.health
	s.mu.Unlock()
	return writeErrorIn(health, stream)
}

// writeErrorIn is the write error among a server's health errors, of
// stream only when it is not empty, nil if none.
func writeErrorIn(health []server.HealthzError, stream string) error {
	var errs []string
	full := false
	for _, e := range health {
		if !strings.Contains(e.Error, "write error") || stream != "" && e.Stream != stream {
			continue
		}
		errs = append(errs, e.Error)
		for _, f := range []string{"no space left on device", "disk quota exceeded", "file too large"} {
			full = full || strings.Contains(e.Error, f)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return &writeError{full: full, msg: "embedded JetStream cannot store: " + strings.Join(errs, "; ") +
		"; free space on the disk of NATS_STORE_DIR, then restart stowline (nats-server refuses these writes until it restarts)"}
}

// writeError is the embedded server's write error; it is ErrStorageFull
// for a full disk, with its own text (a restart is needed too).
type writeError struct {
	full bool
	msg  string
}

func (e *writeError) Error() string        { return e.msg }
func (e *writeError) Is(target error) bool { return e.full && target == ErrStorageFull }

// NATSServer exposes the underlying server (cluster tests need its details).
func (s *EmbeddedServer) NATSServer() *server.Server { return s.ns }

type logAdapter struct{ log *slog.Logger }

func (l *logAdapter) Noticef(format string, v ...any) { l.log.Info(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
