package deadletter_test

import (
	"bytes"
	"context"
	"errors"
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
)

// An event the forwarder cannot read (a rollback to forwarders older
// than the ingest that wrote it, or a message not from stowline) is
// dead-lettered with its bytes and headers as stored, and a replay
// stores them again unchanged, for forwarders that read them. It was
// terminated, with no dead letter: the study was lost for the
// destination.
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
		{Subject: natsjs.EventSubject("orthanc-a"), Data: []byte(`{"type":"study.stable","version":1,"source":"orthanc-a",` +
			`"orthancStudyId":"27f7126f-4f66fb14-03f4081b-f9341db2-53925988","studyInstanceUid":"` + uid + `",` +
			`"lastUpdate":"20261205T013000","priority":"urgent"}`),
			Header: nats.Header{"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}},
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
		Consumer:        cons,
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
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.AckFloor.Stream == 2 && info.NumAckPending == 0 && info.NumPending == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the events were not settled: %+v", info)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	if got := letters[0].Raw.Header["X-Origin"]; len(got) != 1 || got[0] != "by hand" {
		t.Errorf("the letter kept header X-Origin %q, want the message's", got)
	}

	// Once the forwarders read it, the replay stores each event again,
	// unchanged, for the destination.
	replayed, err := replay(ctx, store, deadletter.Filter{ReasonContains: "undecodable"}, false)
	if err != nil || len(replayed) != len(sent) {
		t.Fatalf("Replay = %d letters, %v; want %d", len(replayed), err, len(sent))
	}
	stream, err := ns.JS.Stream(ctx, natsjs.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range sent {
		got, err := stream.GetMsg(ctx, uint64(len(sent)+i+1))
		if err != nil {
			t.Fatalf("replayed event %d: %v", i, err)
		}
		if want := natsjs.DestinationSubject(natsjs.DefaultDestination, "orthanc-a"); got.Subject != want || !bytes.Equal(got.Data, m.Data) {
			t.Errorf("replayed event %d: %q on %s; want %q on %s", i, got.Data, got.Subject, m.Data, want)
		}
		for k := range m.Header {
			if k != jetstream.MsgIDHeader && got.Header.Get(k) != m.Header.Get(k) {
				t.Errorf("replayed event %d: header %s = %q, want %q", i, k, got.Header.Get(k), m.Header.Get(k))
			}
		}
		if id := got.Header.Get(jetstream.MsgIDHeader); id != deadletter.ReplayMsgID(&replayed[i].Event, replayed[i].Seq) {
			t.Errorf("replayed event %d: dedupe ID %q, want a fresh one", i, id)
		}
	}
	// Nothing lost: the replayed events wait for the destination's
	// forwarders, their letters gone.
	low, err := ns.JS.Consumer(ctx, natsjs.EventStream, natsjs.LaneConsumerName(natsjs.DefaultDestination, events.PriorityLow))
	if err != nil {
		t.Fatal(err)
	}
	if info := low.CachedInfo(); info.NumPending != uint64(len(sent)) {
		t.Errorf("the low lane holds %d events, want the %d replayed", info.NumPending, len(sent))
	}
	if left, err := store.List(ctx, deadletter.Filter{All: true}); err != nil || len(left) != 0 {
		t.Errorf("%d letters left after the replay (err %v)", len(left), err)
	}
}
