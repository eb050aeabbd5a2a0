package deadletter_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// TestWritesSayStorageFull: with JetStream's storage full, the writes a
// forwarder makes as a study ends (its dead letter, its failure time,
// what it stored, the ledger's completed forward) fail with an error
// that says the storage is full. They said "insufficient resources",
// or "resource limits exceeded for account", in the warnings "dead
// letter not stored; the study stays queued" and "study forwarded but
// not recorded as completed", which did not tell the IT team NATS was
// full. Once space is freed, they are stored.
func TestWritesSayStorageFull(t *testing.T) {
	js := testnats.StartWith(t, func(o *server.Options) { o.JetStreamMaxStore = 64 << 10 }).JS
	ctx := testCtx(t)
	topo := natsjs.DefaultTopology()
	dl, err := topo.EnsureDeadLetters(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	failKV, err := topo.EnsureFailureLog(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	ledgerKV, err := topo.EnsureLedger(ctx, js, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	store, failures, done := deadletter.NewStore(js, dl), deadletter.NewFailureLog(failKV, natsjs.DefaultDestination), ledger.New(js, ledgerKV)
	ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "orthanc-a",
		OrthancStudyID: "27f7126f-4f66fb14-03f4081b-f9341db2-53925988", StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500"}
	writes := []struct {
		name  string
		write func(context.Context) error
	}{
		{"dead letter", func(ctx context.Context) error {
			_, _, err := store.Add(ctx, &forward.DeadLetter{Event: *ev, Class: forward.Permanent, Reason: "HTTP 400", OriginalSeq: 1})
			return err
		}},
		{"failure time", func(ctx context.Context) error { _, err := failures.Record(ctx, 1, time.Now()); return err }},
		{"stored instances", func(ctx context.Context) error { return failures.RememberSent(ctx, ev, []string{"1.2.3.4/file"}) }},
		{"completed forward", func(ctx context.Context) error { return done.Completed(ctx, ev, ledger.Outcome{}) }},
	}

	// Something else fills the store.
	fill := testnats.FillStore(ctx, t, js)
	for _, w := range writes {
		if err := w.write(ctx); !errors.Is(err, natsjs.ErrStorageFull) {
			t.Errorf("%s with the storage full: %v; want it to say the storage is full", w.name, err)
		}
	}
	if err := fill.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	for _, w := range writes {
		if err := w.write(ctx); err != nil {
			t.Errorf("%s once space is freed: %v", w.name, err)
		}
	}
}
