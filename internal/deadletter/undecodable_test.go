package deadletter_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/deadletter"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/forward"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// An event the forwarder cannot read (a rollback to forwarders older
// than the ingest that wrote it) is dead-lettered with its bytes and
// headers as stored, and a replay stores them again unchanged but for
// the trace context (a replay starts a trace anew), for forwarders that
// read them. It was terminated, with no dead letter: the
// study was lost for the destination. A message not from stowline keeps
// its first kilobyte only, for the operator to see what it is, and is not
// replayed: the replay names its letter and goes on with the others.
func TestUndecodableEventDeadLetteredAndReplayedUnchanged(t *testing.T) {
	store, ns := newStore(t)
	ctx := testCtx(t)
	cons, err := ns.JS.Consumer(ctx, natsjs.EventStream, natsjs.ConsumerName(natsjs.DefaultDestination))
	if err != nil {
		t.Fatal(err)
	}
	const uid = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678901234567890"
	sent := []*nats.Msg{
		{Subject: natsjs.EventSubject("orthanc-a"), Data: []byte("not an event\x00\xff"), Header: nats.Header{"X-Origin": {"by hand"}}},
		// A newer ingest's event with a value this build refuses: a
		// priority it does not know.
		{Subject: natsjs.EventSubject("orthanc-a"), Data: []byte(`{"type":"` + events.TypeStudyStable + `","version":1,"source":"orthanc-a",` +
			`"orthancStudyId":"27f7126f-4f66fb14-03f4081b-f9341db2-53925988","studyInstanceUid":"` + uid + `",` +
			`"lastUpdate":"20261205T013000","priority":"urgent"}`),
			Header: nats.Header{"traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "tracestate": {"v=1"}, "X-Origin": {"newer ingest"}}},
	}
	for i, m := range sent {
		m.Header.Set(jetstream.MsgIDHeader, "raw/"+string(rune('a'+i)))
		if _, err := ns.JS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	stow, err := dicomweb.New("http://127.0.0.1:9/dicom-web", nil) // never reached: nothing decodes
	if err != nil {
		t.Fatal(err)
	}
	f, err := forward.New(forward.Options{
		DestinationName: natsjs.DefaultDestination,
		Lanes:           []forward.Lane{{Priority: events.PriorityRoutine, Consumer: cons}},
		SourceFor:       func(string) (forward.Source, error) { return nil, errors.New("no source: nothing decodes") },
		Destination:     stow,
		Concurrency:     1,
		MaxInstances:    1,
		MaxBytes:        1 << 20,
		AckWait:         3 * time.Second,
		RetryDelay:      time.Second,
		RetryMaxDelay:   time.Second,
		ShutdownGrace:   200 * time.Millisecond,
		DeadLetters:     store,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(runCtx) }()
	// Both settled: terminated once their letters are stored.
	waitSettled(t, ctx, cons, 2)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	letters, err := store.List(ctx, deadletter.Filter{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != len(sent) {
		t.Fatalf("%d dead letters, want one for each of the %d events that do not decode", len(letters), len(sent))
	}
	for i, l := range letters {
		if l.Raw == nil || !bytes.Equal(l.Raw.Data, sent[i].Data) || l.Raw.Subject != sent[i].Subject || !strings.HasPrefix(l.Reason, "undecodable: ") ||
			l.Event.Source != "orthanc-a" || l.Destination != natsjs.DefaultDestination || l.Class != forward.Permanent {
			t.Errorf("letter %d: raw %+v, reason %q, event %+v, destination %q, class %q", i, l.Raw, l.Reason, l.Event, l.Destination, l.Class)
		}
	}
	if got := letters[1].Event.StudyInstanceUID; got != uid {
		t.Errorf("the letter of the newer event names study %q, want %q", got, uid)
	}
	if r := letters[0].Raw; !r.Partial || r.Header != nil {
		t.Errorf("the letter of a message not from stowline: partial %v, headers %q; want partial, none", r.Partial, r.Header)
	}
	if r := letters[1].Raw; r.Partial || len(r.Header["traceparent"]) != 1 {
		t.Errorf("the letter of stowline's event: partial %v, headers %q; want whole", r.Partial, r.Header)
	}

	// Once the forwarders read it, the replay stores the event again,
	// unchanged, for the destination; the foreign message's letter stays.
	replayed, err := replay(ctx, store, deadletter.Filter{ReasonContains: "undecodable"}, false)
	if !errors.Is(err, deadletter.ErrPartialLetters) || !strings.Contains(err.Error(), fmt.Sprintf("replay: %d: ", letters[0].Seq)) || len(replayed) != 1 {
		t.Fatalf("Replay = %d letters, %v; want 1, and the foreign message's letter named", len(replayed), err)
	}
	stream, err := ns.JS.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range sent[1:] {
		got, err := stream.GetMsg(ctx, uint64(len(sent)+i+1))
		if err != nil {
			t.Fatalf("replayed event %d: %v", i, err)
		}
		if want := natsjs.DestinationSubject(natsjs.DefaultDestination, "orthanc-a"); got.Subject != want || !bytes.Equal(got.Data, m.Data) {
			t.Errorf("replayed event %d: %q on %s; want %q on %s", i, got.Data, got.Subject, m.Data, want)
		}
		for k := range m.Header {
			want := m.Header.Get(k)
			if k == "traceparent" || k == "tracestate" {
				want = "" // a replay starts a trace anew
			}
			if k != jetstream.MsgIDHeader && got.Header.Get(k) != want {
				t.Errorf("replayed event %d: header %s = %q, want %q", i, k, got.Header.Get(k), want)
			}
		}
		if id := got.Header.Get(jetstream.MsgIDHeader); id != deadletter.ReplayMsgID(&replayed[i]) {
			t.Errorf("replayed event %d: dedupe ID %q, want a fresh one", i, id)
		}
	}
	// Nothing lost: the replayed events wait for the destination's
	// forwarders, their letters gone. The server counts a stored event
	// for the lane's consumer after it acknowledged it: wait for it.
	low, err := ns.JS.Consumer(ctx, natsjs.EventStream, natsjs.LaneConsumerName(natsjs.DefaultDestination, events.PriorityLow))
	if err != nil {
		t.Fatal(err)
	}
	testnats.WaitCounted(ctx, t, ns.JS)
	info, err := low.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending != 1 {
		t.Errorf("the low lane holds %d events, want the one replayed", info.NumPending)
	}
	if left, err := store.List(ctx, deadletter.Filter{All: true}); err != nil || len(left) != 1 || left[0].Seq != letters[0].Seq {
		t.Errorf("letters left after the replay: %d (err %v), want the foreign message's", len(left), err)
	}
}

// waitSettled waits until the consumer's events up to stream sequence
// floor are settled and none is pending.
func waitSettled(t *testing.T, ctx context.Context, cons jetstream.Consumer, floor uint64) {
	t.Helper()
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.AckFloor.Stream == floor && info.NumAckPending == 0 && info.NumPending == 0 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the events were not settled: %+v", info)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
