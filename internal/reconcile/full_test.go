package reconcile_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/reconcile"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

// quietOrthanc is a source whose change log is empty.
type quietOrthanc struct{}

func (quietOrthanc) System(context.Context) (orthancapi.System, error) {
	return orthancapi.System{}, nil
}
func (quietOrthanc) Changes(context.Context, int64, int, ...string) (orthancapi.Changes, error) {
	return orthancapi.Changes{Done: true}, nil
}
func (quietOrthanc) LastChange(context.Context) (int64, error) { return 0, nil }
func (quietOrthanc) Study(context.Context, string) (orthancapi.Study, error) {
	return orthancapi.Study{}, errors.New("no study")
}
func (quietOrthanc) SeriesStudy(context.Context, string) (orthancapi.Study, error) {
	return orthancapi.Study{}, errors.New("no study")
}
func (quietOrthanc) Now(context.Context) (time.Time, error) { return time.Now(), nil }
func (quietOrthanc) Exists(context.Context, string, string) (bool, error) {
	return false, nil
}
func (quietOrthanc) InstanceStudy(context.Context, string) (orthancapi.Study, error) {
	return orthancapi.Study{}, errors.New("no study")
}

// TestLeaseRefusedForStorageIsReported: with JetStream's storage full
// no replica can write the source's lease, so nobody polls the source
// and nothing the webhook missed is queued. /readyz said nothing (a
// replica without the lease reported itself fine) and the log said the
// lease could not be read. The check now names the full storage, and
// once space is freed the lease is taken and the check clears, with no
// restart.
func TestLeaseRefusedForStorageIsReported(t *testing.T) {
	js := testnats.StartWith(t, func(o *server.Options) { o.JetStreamMaxStore = 64 << 10 }).JS
	ctx := t.Context()
	kv, err := natsjs.DefaultTopology().EnsureReconcile(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	// Something else fills the store.
	fill := testnats.FillStore(ctx, t, js)

	reg := prometheus.NewRegistry()
	rec, err := reconcile.New(reconcile.Options{
		Sources: []reconcile.Source{{Name: "orthanc-a", Orthanc: quietOrthanc{}}}, KV: kv, Publisher: publisher{js},
		PollInterval: 100 * time.Millisecond, LeaseTTL: 300 * time.Millisecond, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = rec.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	check := rec.Checks()["reconcile_orthanc-a"]

	waitFor(t, "the check to name the full storage", func() (bool, string) {
		err := check(ctx)
		return err != nil && errors.Is(err, natsjs.ErrStorageFull), "check: " + errString(err)
	})
	if err := fill.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the lease taken and the check clear once space is freed", func() (bool, string) {
		held := metric(t, reg, "stowline_reconcile_lease_held", map[string]string{"source": "orthanc-a"})
		err := check(ctx)
		return held == 1 && err == nil, "lease held " + strconv.FormatFloat(held, 'f', -1, 64) + ", check: " + errString(err)
	})
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s; %s", what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
