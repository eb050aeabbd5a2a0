package ledger_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/ledger"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testnats"
	"github.com/stowline/stowline/orthancapi"
)

type publisher struct{ js jetstream.JetStream }

func (p publisher) Publish(ctx context.Context, ev *events.StudyStable) (*jetstream.PubAck, error) {
	return (natsjs.Publisher{JS: p.js}).Publish(ctx, ev)
}

func upload(t *testing.T, o *testharness.Orthanc, uid string, n int) string {
	t.Helper()
	if uid == "" {
		uid = dicomgen.NewUID()
	}
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{StudyInstanceUID: uid, Series: 1, InstancesPerSeries: n, Rows: 16, Columns: 16})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.Upload(t, files...); len(res.Failed) > 0 {
		t.Fatal(res.Failed)
	}
	return uid
}

func run(t *testing.T, a *ledger.Auditor, enqueue bool) (map[string]ledger.Finding, ledger.Summary) {
	t.Helper()
	found := map[string]ledger.Finding{}
	sum, err := a.Run(context.Background(), enqueue, func(f ledger.Finding) error {
		found[f.StudyInstanceUID] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found, sum
}

func TestAudit(t *testing.T) {
	testharness.ForEachRelease(t, testAudit)
}

func testAudit(t *testing.T, rel testharness.Release) {
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "audit-src", StableAge: 2, Release: rel})
	client, err := orthancapi.New(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	ns := testnats.Start(t)
	ctx := context.Background()
	ledgerKV, err := natsjs.DefaultTopology().EnsureLedger(ctx, ns.JS)
	led := ledger.New(ledgerKV)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ledger.NewAuditor(ledger.AuditOptions{
		Sources:   []ledger.Source{{Name: "src", Orthanc: client}},
		Ledger:    led,
		Publisher: publisher{ns.JS},
		PageSize:  1, // every study on its own page
	})
	if err != nil {
		t.Fatal(err)
	}

	forwarded, changed, never := upload(t, o, "", 2), upload(t, o, "", 1), upload(t, o, "", 1)
	o.WaitStable(t, 20*time.Second)
	studies, err := client.Studies(ctx, 0, 100)
	if err != nil || len(studies) != 3 {
		t.Fatalf("Studies = %d, %v", len(studies), err)
	}
	for _, s := range studies {
		if s.StudyInstanceUID == never {
			continue
		}
		// The forwarder recorded a completed forward of these two.
		ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "src",
			OrthancStudyID: s.ID, StudyInstanceUID: s.StudyInstanceUID, LastUpdate: s.LastUpdate}
		if err := led.Record(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	found, sum := run(t, a, false)
	if len(found) != 1 || found[never].Reason != ledger.ReasonNeverForwarded {
		t.Fatalf("findings = %+v, want only %s", found, never)
	}
	if sum != (ledger.Summary{Studies: 3, Forwarded: 2, Findings: 1}) {
		t.Errorf("summary = %+v", sum)
	}

	// An instance arrives later in one forwarded study (LastUpdate has a
	// resolution of a second), and a new study is still receiving.
	time.Sleep(1100 * time.Millisecond)
	upload(t, o, changed, 1)
	o.WaitStable(t, 20*time.Second)
	upload(t, o, "", 1)
	found, sum = run(t, a, true)
	if len(found) != 2 || found[changed].Reason != ledger.ReasonChanged || found[changed].ForwardedLastUpdate == "" ||
		found[changed].ForwardedLastUpdate >= found[changed].LastUpdate {
		t.Fatalf("findings = %+v, want %s changed since its forward and %s", found, changed, never)
	}
	for uid, f := range found {
		if !f.Enqueued || f.Duplicate {
			t.Errorf("%s: enqueued=%v duplicate=%v, want a new event", uid, f.Enqueued, f.Duplicate)
		}
	}
	if sum.Studies != 4 || sum.Unstable != 1 || sum.Enqueued != 2 {
		t.Errorf("summary = %+v, want 4 studies, 1 unstable, 2 enqueued", sum)
	}
	// Enqueued again within the dedupe window: JetStream keeps one. (The
	// study still receiving may have become stable meanwhile: it is new.)
	again, _ := run(t, a, true)
	for uid := range found {
		if f := again[uid]; !f.Enqueued || !f.Duplicate {
			t.Errorf("second --enqueue of %s: %+v, want a duplicate", uid, f)
		}
	}
	if _, ok := again[forwarded]; ok {
		t.Errorf("the forwarded, unchanged study %s is reported", forwarded)
	}
}
