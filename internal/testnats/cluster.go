package testnats

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
)

// ClusterName is the name every StartCluster cluster has.
const ClusterName = "stowline-test"

// Cluster is a JetStream cluster of real nats-servers running in this
// process. Each node listens on TCP for clients and routes, as separate
// hosts would, so programs under test connect with a URL list. Route
// connections between nodes pass through in-process TCP links, so a node
// can be cut off (Kill) as a crashed host would be.
type Cluster struct {
	Nodes []*Node
}

// Node is one server of a Cluster. Kill (a crash) or Shutdown (an orderly
// stop) and Restart simulate losing a host and bringing it back on the
// same disk and addresses.
type Node struct {
	// Name is the server name (what stream info reports as leader or
	// replica).
	Name     string
	StoreDir string
	// ClientPort and RoutePort are picked before any node starts (the
	// links name the route ports) and kept across restarts.
	ClientPort int
	RoutePort  int
	// Logs is everything the node logged, across restarts.
	Logs *testharness.LogBuffer

	// out are the links this node's routes dial, in those the other
	// nodes' routes to it dial: Kill cuts both.
	out, in []*link
	mu      sync.Mutex
	srv     *natsjs.EmbeddedServer
}

// StartCluster starts an n-node JetStream cluster (3 for R3 streams) and
// waits until it has a meta leader that sees every node, so R3 streams
// can be created at once. Every node is shut down at cleanup; a failed
// test gets the tail of each node's log.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("StartCluster: %d nodes", n)
	}
	c := &Cluster{}
	for i := range n {
		c.Nodes = append(c.Nodes, &Node{
			Name:       "n" + strconv.Itoa(i+1),
			StoreDir:   t.TempDir(),
			ClientPort: testharness.FreePort(t),
			RoutePort:  testharness.FreePort(t),
			Logs:       &testharness.LogBuffer{},
		})
	}
	// Every route connection goes through a link, so that Kill can cut a
	// node off before it stops.
	for _, from := range c.Nodes {
		for _, to := range c.Nodes {
			if from == to {
				continue
			}
			l := &link{port: testharness.FreePort(t), target: "127.0.0.1:" + strconv.Itoa(to.RoutePort)}
			if err := l.open(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.close)
			from.out = append(from.out, l)
			to.in = append(to.in, l)
		}
	}
	t.Cleanup(func() {
		for _, node := range c.Nodes {
			node.Shutdown()
		}
		if t.Failed() {
			for _, node := range c.Nodes {
				t.Logf("nats node %s log (tail):\n%s", node.Name, tail(node.Logs.String(), 60))
			}
		}
	})
	for _, node := range c.Nodes {
		if err := node.start(); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitHealthy(t, 60*time.Second)
	c.waitPeers(t, 30*time.Second)
	return c
}

// URLs is the comma-separated client URL list of every node, stopped ones
// included, as NATS_URL would list a cluster's servers.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.Nodes))
	for i, node := range c.Nodes {
		urls[i] = node.ClientURL()
	}
	return strings.Join(urls, ",")
}

// Node returns the node with the given server name, nil if there is none.
func (c *Cluster) Node(name string) *Node {
	for _, node := range c.Nodes {
		if node.Name == name {
			return node
		}
	}
	return nil
}

// Connect opens a client connection to the cluster that, like stowline's,
// reconnects for ever; it is closed at cleanup.
func (c *Cluster) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to the cluster: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// WaitHealthy waits until every running node reports healthy: it is in
// contact with a meta leader and every stream and consumer replica it
// holds is current (nats-server's /healthz).
func (c *Cluster) WaitHealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var errs []error
		for _, node := range c.Nodes {
			if node.Server() == nil {
				continue
			}
			if err := node.Healthy(); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats cluster not healthy after %s: %v", timeout, errors.Join(errs...))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitPeers waits until the meta leader sees every node with JetStream:
// before that, creating an R3 stream fails for want of peers.
func (c *Cluster) waitPeers(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, node := range c.Nodes {
			if ns := node.NATSServer(); ns != nil && ns.JetStreamIsLeader() && len(ns.JetStreamClusterPeers()) == len(c.Nodes) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the meta leader does not see all %d nodes after %s", len(c.Nodes), timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// MoveLeader makes the named node the leader of a stream, or of one of
// its consumers when consumer is not empty, with a leader stepdown that
// names it preferred, and waits until it leads: a test can then lose the
// node that leads what it cares about.
func (c *Cluster) MoveLeader(t testing.TB, js jetstream.JetStream, nc *nats.Conn, stream, consumer, node string) {
	t.Helper()
	subject := "$JS.API.STREAM.LEADER.STEPDOWN." + stream
	what := "stream " + stream
	if consumer != "" {
		subject = "$JS.API.CONSUMER.LEADER.STEPDOWN." + stream + "." + consumer
		what = "consumer " + consumer
	}
	body := []byte(`{"placement":{"preferred":` + strconv.Quote(node) + `}}`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, err := Leader(js, stream, consumer)
		if err == nil && leader == node {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: leader %q (err %v) after 30 s, want %s", what, leader, err, node)
		}
		if err == nil {
			// The answer only says whether the stepdown started; the
			// loop checks the outcome.
			_, _ = nc.Request(subject, body, 5*time.Second)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Leader is the server name of the leader of a stream, or of one of its
// consumers when consumer is not empty; "" while there is none.
func Leader(js jetstream.JetStream, stream, consumer string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return "", fmt.Errorf("stream %s: %w", stream, err)
	}
	var ci *jetstream.ClusterInfo
	if consumer == "" {
		info, err := s.Info(ctx)
		if err != nil {
			return "", fmt.Errorf("stream %s: %w", stream, err)
		}
		ci = info.Cluster
	} else {
		cons, err := s.Consumer(ctx, consumer)
		if err != nil {
			return "", fmt.Errorf("consumer %s: %w", consumer, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return "", fmt.Errorf("consumer %s: %w", consumer, err)
		}
		ci = info.Cluster
	}
	if ci == nil {
		return "", nil
	}
	return ci.Leader, nil
}

// ClientsNamed counts the node's client connections that gave the name
// (nats.Name): which node a program is connected to.
func (n *Node) ClientsNamed(name string) int {
	ns := n.NATSServer()
	if ns == nil {
		return 0
	}
	cz, err := ns.Connz(&server.ConnzOptions{Limit: 1 << 16})
	if err != nil {
		return 0
	}
	count := 0
	for _, c := range cz.Conns {
		if c.Name == name {
			count++
		}
	}
	return count
}

// ClientURL is the node's client URL (also while it is stopped).
func (n *Node) ClientURL() string {
	return "nats://127.0.0.1:" + strconv.Itoa(n.ClientPort)
}

// Server is the running server, nil while the node is stopped.
func (n *Node) Server() *natsjs.EmbeddedServer {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// NATSServer is the running nats-server, nil while the node is stopped.
func (n *Node) NATSServer() *server.Server {
	if s := n.Server(); s != nil {
		return s.NATSServer()
	}
	return nil
}

// Healthy is nil when the node runs and nats-server's health check
// passes: meta leader known and every replica it holds current.
func (n *Node) Healthy() error {
	ns := n.NATSServer()
	if ns == nil {
		return fmt.Errorf("node %s is stopped", n.Name)
	}
	if h := ns.Healthz(&server.HealthzOptions{}); h.Status != "ok" {
		return fmt.Errorf("node %s: %s %s", n.Name, h.Status, h.Error)
	}
	return nil
}

// Shutdown stops the node in order and waits until its store is closed:
// nats-server hands the leaderships it holds over first, so the others
// have new leaders at once (a rolling restart). Stopping a stopped node
// does nothing.
func (n *Node) Shutdown() {
	n.mu.Lock()
	srv := n.srv
	n.srv = nil
	n.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
	}
}

// Kill stops the node as a crash would, as far as the cluster can tell:
// its route links are cut first, so the leaderships it holds are not
// handed over (Shutdown hands them over) and the other nodes elect new
// leaders only after their election timeout (4-9 s in nats-server).
// Its clients lose their connection when it stops. The store is closed
// cleanly: this is not a test of disk corruption.
func (n *Node) Kill() {
	n.mu.Lock()
	srv := n.srv
	n.srv = nil
	n.mu.Unlock()
	if srv == nil {
		return
	}
	for _, l := range append(append([]*link(nil), n.out...), n.in...) {
		l.close()
	}
	srv.Shutdown()
}

// Restart starts a stopped node again on the same store and ports; it
// returns once the node accepts connections (rejoining the cluster and
// catching up takes longer: WaitHealthy).
func (n *Node) Restart(t testing.TB) {
	t.Helper()
	for _, l := range append(append([]*link(nil), n.out...), n.in...) {
		if err := l.open(); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.start(); err != nil {
		t.Fatal(err)
	}
}

func (n *Node) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		return fmt.Errorf("nats node %s is already running", n.Name)
	}
	routes := make([]string, len(n.out))
	for i, l := range n.out {
		routes[i] = "nats://127.0.0.1:" + strconv.Itoa(l.port)
	}
	log := slog.New(slog.NewTextHandler(n.Logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{
		StoreDir:   n.StoreDir,
		ServerName: n.Name,
		Host:       "127.0.0.1",
		Port:       n.ClientPort,
		Cluster: &natsjs.EmbeddedCluster{
			Name:   ClusterName,
			Host:   "127.0.0.1",
			Port:   n.RoutePort,
			Routes: routes,
		},
		Configure: func(o *server.Options) {
			// Nodes tell each other their route address, and a node
			// that hears of one it is not connected to dials it
			// directly (an implicit route), around the links. An
			// address where nothing listens makes that dial fail once
			// (it is not retried); the configured routes, through the
			// links, connect every pair.
			o.Cluster.Advertise = "127.0.0.1:1"
		},
	}, log)
	if err != nil {
		return fmt.Errorf("start nats node %s: %w", n.Name, err)
	}
	n.srv = srv
	return nil
}

// link is a TCP proxy that carries the route connections one node dials
// to another. Closing it cuts them (and refuses new ones) until it opens
// again on the same port.
type link struct {
	port   int
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
}

func (l *link) open() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(l.port))
	if err != nil {
		return fmt.Errorf("testnats: route link to %s: %w", l.target, err)
	}
	l.ln, l.conns = ln, map[net.Conn]struct{}{}
	go l.serve(ln)
	return nil
}

func (l *link) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed
		}
		go l.relay(c)
	}
}

// relay copies both ways between c and the target until either side
// ends or the link is closed.
func (l *link) relay(c net.Conn) {
	up, err := net.Dial("tcp", l.target)
	if err != nil {
		c.Close()
		return
	}
	if !l.track(c, up) {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
	l.mu.Lock()
	delete(l.conns, c)
	delete(l.conns, up)
	l.mu.Unlock()
}

// track registers both ends, or closes them if the link was closed
// meanwhile.
func (l *link) track(conns ...net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		l.conns[c] = struct{}{}
	}
	return true
}

func (l *link) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil {
		return
	}
	l.ln.Close()
	l.ln = nil
	for c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
