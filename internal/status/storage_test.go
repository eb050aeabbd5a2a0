package status_test

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/status"
	"github.com/stowline/stowline/internal/testnats"
)

// TestQueueCollectorStorage: every scrape reports each of stowline's
// streams and buckets (and no other stream of the account) with its
// bytes, messages and size limit when one is set, and the account's
// storage and limits. Nothing showed how full NATS was until it refused
// writes (StowlineNATSStorageFull).
func TestQueueCollectorStorage(t *testing.T) {
	ns := testnats.StartWith(t, testnats.AccountLimits(t, "max_file: 10M, max_mem: 1M"))
	ctx := timeout(t)
	topo := natsjs.DefaultTopology()
	if _, err := topo.EnsureEvents(ctx, ns.JS); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.EnsureDeadLetters(ctx, ns.JS); err != nil {
		t.Fatal(err)
	}
	failures, err := topo.EnsureFailureLog(ctx, ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := topo.EnsureLedger(ctx, ns.JS, "ai"); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.EnsureStatus(ctx, ns.JS); err != nil {
		t.Fatal(err)
	}
	if _, err := failures.Put(ctx, "seq1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	// A limit an operator set on the event stream; and a stream of
	// another application in the same account.
	events, err := ns.JS.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := events.CachedInfo().Config
	cfg.MaxBytes = 1 << 20
	if _, err := ns.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "OTHER", Subjects: []string{"other"}}); err != nil {
		t.Fatal(err)
	}
	info, err := events.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(status.NewQueueCollector(ns.JS, 2*time.Second, nil))
	got := gathered(t, reg)
	wantStreams := []string{"KV_stowline_failures", "KV_stowline_forwarded_ai", "KV_stowline_forwarders", natsjs.DeadLetterStream, natsjs.EventStream}
	if streams := slices.Sorted(maps.Keys(got["stowline_jetstream_stream_bytes"])); !slices.Equal(streams, wantStreams) {
		t.Errorf("streams reported %v; want %v", streams, wantStreams)
	}
	if v := got["stowline_jetstream_stream_bytes"][natsjs.EventStream]; v != float64(info.State.Bytes) || v == 0 {
		t.Errorf("event stream bytes %v; want %d", v, info.State.Bytes)
	}
	if v := got["stowline_jetstream_stream_messages"][natsjs.EventStream]; v != 3 {
		t.Errorf("event stream messages %v; want 3", v)
	}
	if v := got["stowline_jetstream_stream_messages"]["KV_stowline_failures"]; v != 1 {
		t.Errorf("failure bucket messages %v; want 1", v)
	}
	if limits := got["stowline_jetstream_stream_max_bytes"]; len(limits) != 1 || limits[natsjs.EventStream] != 1<<20 {
		t.Errorf("stream limits %v; want the event stream's 1 MiB alone", limits)
	}
	if v := got["stowline_jetstream_account_bytes"]["file"]; v < float64(info.State.Bytes) {
		t.Errorf("account file bytes %v; want at least the event stream's %d", v, info.State.Bytes)
	}
	if limits := got["stowline_jetstream_account_limit_bytes"]; limits["file"] != 10e6 || limits["memory"] != 1e6 {
		t.Errorf("account limits %v; want file 10 MB, memory 1 MB", limits)
	}
}

// gathered is reg's gauges, by name and then by their one label's value.
func gathered(t *testing.T, reg *prometheus.Registry) map[string]map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	for _, mf := range mfs {
		byLabel := map[string]float64{}
		for _, m := range mf.GetMetric() {
			label := ""
			if l := m.GetLabel(); len(l) > 0 {
				label = l[0].GetValue()
			}
			byLabel[label] = m.GetGauge().GetValue()
		}
		out[mf.GetName()] = byLabel
	}
	return out
}

// TestQueueCollectorEmbeddedServerLimit: the account of a single host's
// embedded server has no limits of its own (-1): the server's
// max_file_store (by default 75% of the disk free at start) refuses the
// writes, and is the limit reported, so that StowlineNATSStorageNearFull
// covers a single host. Without the server's limits, none is reported.
func TestQueueCollectorEmbeddedServerLimit(t *testing.T) {
	ns := testnats.StartWith(t, func(o *server.Options) { o.JetStreamMaxStore, o.JetStreamMaxMemory = 8<<20, 4<<20 })
	for _, tc := range []struct {
		name string
		opts []status.QueueOption
		want map[string]float64
	}{
		{"server's limits given", []status.QueueOption{status.WithServerLimits(ns.StorageLimits)}, map[string]float64{"file": 8 << 20, "memory": 4 << 20}},
		{"none given", nil, map[string]float64{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			reg.MustRegister(status.NewQueueCollector(ns.JS, 2*time.Second, nil, tc.opts...))
			got := gathered(t, reg)
			if limits := got["stowline_jetstream_account_limit_bytes"]; !maps.Equal(limits, tc.want) {
				t.Errorf("account limits %v; want %v", limits, tc.want)
			}
			if _, ok := got["stowline_jetstream_account_bytes"]["file"]; !ok {
				t.Error("no stowline_jetstream_account_bytes{storage=\"file\"}")
			}
		})
	}
}
