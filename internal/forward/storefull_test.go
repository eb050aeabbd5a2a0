package forward

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// TestLedgerWriteRefusedForFullStorageCounted: a completed forward whose
// ledger record JetStream refuses for want of storage is counted in
// stowline_forwarder_store_full_total{what="ledger"}; it was only
// logged ("study forwarded but not recorded as completed"), and nothing
// an alert could read said the forwarders' writes were being lost.
func TestLedgerWriteRefusedForFullStorageCounted(t *testing.T) {
	ns := testnats.StartWith(t, func(o *server.Options) { o.JetStreamMaxStore = 64 << 10 })
	ctx := t.Context()
	kv, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	records := ledger.New(ns.JS, kv)
	var k sink
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	cons := consumer(t, ns)
	f := newForwarder(t, newMemSource(2), srv.URL, cons, func(o *Options) {
		o.Completed = func(ctx context.Context, ev *events.StudyStable, _ Completion) error {
			return records.Completed(ctx, ev, ledger.Outcome{})
		}
	})
	if _, err := (natsjs.Publisher{JS: ns.JS}).Publish(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	// Something else fills the store once the event is queued.
	testnats.FillStore(ctx, t, ns.JS)

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(runCtx) }()
	waitConsumer(t, cons, func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 && i.NumAckPending == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for what, want := range map[string]float64{storeFullLedger: 1, storeFullDeadLetter: 0, storeFullStored: 0, storeFullFailureTime: 0} {
		if got := testutil.ToFloat64(f.m.storeFull.WithLabelValues(what)); got != want {
			t.Errorf("stowline_forwarder_store_full_total{what=%q} = %v; want %v", what, got, want)
		}
	}
	if _, err := kv.Get(ctx, "a."+testEvent().OrthancStudyID); err == nil {
		t.Error("the ledger holds the record; want it refused for the full storage")
	}
}
