package natsjs_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
)

// TestStreamLimitKeepsWhatIsQueued: an operator whose NATS disk fills up
// caps a stream (nats stream edit --max-msgs/--max-bytes, or each
// source with --max-msgs-per-subject --discard-per-subject; an account
// that requires max bytes forces one). Reaching the cap must refuse new
// messages, which the webhook answers 503 for (ErrStorageFull) and
// Orthanc or the reconciler sends again, never delete the oldest: those
// are events accepted with a 202 and not forwarded yet, or dead letters
// whose events were terminated. A later start, which updates a stream
// whose settings changed, keeps every setting stowline does not own: it
// dropped DiscardNewPerSubject, and the per-subject cap then deleted
// the oldest, and its update was refused for the operator's DenyDelete,
// DenyPurge or AllowMsgTTL, which JetStream does not let be taken back.
func TestStreamLimitKeepsWhatIsQueued(t *testing.T) {
	const limit = 2
	streams := []struct {
		name    string
		ensure  func(context.Context, natsjs.Topology, jetstream.JetStream) error
		subject string
	}{
		{natsjs.EventStream, func(ctx context.Context, topo natsjs.Topology, js jetstream.JetStream) error {
			_, err := topo.EnsureEvents(ctx, js)
			return err
		}, natsjs.EventSubject("orthanc-a")},
		{natsjs.DeadLetterStream, func(ctx context.Context, topo natsjs.Topology, js jetstream.JetStream) error {
			_, err := topo.EnsureDeadLetters(ctx, js)
			return err
		}, natsjs.DeadLetterSubject(natsjs.DefaultDestination, "orthanc-a")},
	}
	caps := []struct {
		name string
		set  func(*jetstream.StreamConfig)
		kept func(jetstream.StreamConfig) bool
	}{
		{"max messages", func(c *jetstream.StreamConfig) { c.MaxMsgs, c.MaxBytes = limit, 1<<20 },
			func(c jetstream.StreamConfig) bool { return c.MaxMsgs == limit && c.MaxBytes == 1<<20 }},
		{"per subject, discard new, deny delete and purge, message TTLs", func(c *jetstream.StreamConfig) {
			c.MaxMsgsPerSubject, c.DiscardNewPerSubject = limit, true
			c.DenyDelete, c.DenyPurge, c.AllowMsgTTL = true, true, true
		}, func(c jetstream.StreamConfig) bool {
			return c.MaxMsgsPerSubject == limit && c.DiscardNewPerSubject && c.DenyDelete && c.DenyPurge && c.AllowMsgTTL
		}},
	}
	for _, tc := range streams {
		for _, cp := range caps {
			t.Run(tc.name+"/"+cp.name, func(t *testing.T) {
				_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
				ctx := testCtx(t)
				topo := natsjs.DefaultTopology()
				if err := tc.ensure(ctx, topo, js); err != nil {
					t.Fatal(err)
				}
				// The operator's settings, as `nats stream edit` sets them.
				s, err := js.Stream(ctx, tc.name)
				if err != nil {
					t.Fatal(err)
				}
				cfg := s.CachedInfo().Config
				cp.set(&cfg)
				if _, err := js.UpdateStream(ctx, cfg); err != nil {
					t.Fatal(err)
				}
				// A later start with a changed setting updates the stream.
				topo.Retention, topo.DeadLetterRetention = 48*time.Hour, 48*time.Hour
				if err := tc.ensure(ctx, topo, js); err != nil {
					t.Fatalf("a start after the operator's edit: %v", err)
				}
				var refused error
				for i := range limit + 1 {
					msg := &nats.Msg{Subject: tc.subject, Data: []byte(`{}`), Header: nats.Header{}}
					msg.Header.Set(jetstream.MsgIDHeader, "m"+strconv.Itoa(i))
					if _, err := js.PublishMsg(ctx, msg); err != nil {
						refused = err
					}
				}
				info, err := js.Stream(ctx, tc.name)
				if err != nil {
					t.Fatal(err)
				}
				st, got := info.CachedInfo().State, info.CachedInfo().Config
				if !cp.kept(got) || got.MaxAge != 48*time.Hour {
					t.Errorf("after a start: %+v; want the operator's settings kept and MaxAge %s", got, 48*time.Hour)
				}
				if st.FirstSeq != 1 || st.Msgs != limit {
					t.Errorf("stream holds %d messages, %d to %d; want the first %d kept, none deleted to make room and none past the cap", st.Msgs, st.FirstSeq, st.LastSeq, limit)
				}
				if !errors.Is(natsjs.StorageFull(refused), natsjs.ErrStorageFull) {
					t.Errorf("a message past the cap: %v; want it refused as ErrStorageFull", refused)
				}
			})
		}
	}
}

// TestDiscardOldTakenBack: a stream found discarding its oldest messages
// at its cap (set so by hand, `nats stream edit --discard old`, with a
// cap the operator added) would delete queued events not forwarded yet,
// or dead letters not replayed, to make room. Discard is stowline's
// setting: a start gives it back DiscardNew, whether or not another
// setting changed with it (an unchanged stream is otherwise left alone).
func TestDiscardOldTakenBack(t *testing.T) {
	for _, stream := range []struct {
		name   string
		ensure func(context.Context, natsjs.Topology, jetstream.JetStream) error
	}{
		{natsjs.EventStream, func(ctx context.Context, topo natsjs.Topology, js jetstream.JetStream) error {
			_, err := topo.EnsureEvents(ctx, js)
			return err
		}},
		{natsjs.DeadLetterStream, func(ctx context.Context, topo natsjs.Topology, js jetstream.JetStream) error {
			_, err := topo.EnsureDeadLetters(ctx, js)
			return err
		}},
	} {
		for _, start := range []struct {
			name   string
			change func(*natsjs.Topology)
		}{
			{"start with the same settings", func(*natsjs.Topology) {}},
			{"start with a longer retention", func(topo *natsjs.Topology) {
				topo.Retention, topo.DeadLetterRetention = 2*topo.Retention, 2*topo.DeadLetterRetention
			}},
		} {
			t.Run(stream.name+"/"+start.name, func(t *testing.T) {
				_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
				ctx := testCtx(t)
				topo := natsjs.DefaultTopology()
				if err := stream.ensure(ctx, topo, js); err != nil {
					t.Fatal(err)
				}
				s, err := js.Stream(ctx, stream.name)
				if err != nil {
					t.Fatal(err)
				}
				cfg := s.CachedInfo().Config
				cfg.Discard, cfg.MaxMsgs = jetstream.DiscardOld, 2
				if _, err := js.UpdateStream(ctx, cfg); err != nil {
					t.Fatal(err)
				}
				start.change(&topo)
				if err := stream.ensure(ctx, topo, js); err != nil {
					t.Fatal(err)
				}
				if s, err = js.Stream(ctx, stream.name); err != nil {
					t.Fatal(err)
				}
				if got := s.CachedInfo().Config; got.Discard != jetstream.DiscardNew || got.MaxMsgs != 2 {
					t.Errorf("after a start: discard %v, max messages %d; want discard new (stowline's), the operator's cap of 2 kept", got.Discard, got.MaxMsgs)
				}
			})
		}
	}
}

// So does a key-value bucket's cap (the ledger grows for ever), and
// another setting of the operator's: the compression of a large ledger
// went at the next start that changed a setting. A setting of its stream
// that the bucket's configuration does not carry went too (max-msgs), or
// JetStream refused to take it back (allow-msg-ttl, deny-purge) and the
// start failed.
func TestBucketLimitKept(t *testing.T) {
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
	topo := natsjs.DefaultTopology()
	if _, err := topo.EnsureFailureLog(ctx, js); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, natsjs.FailureBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.(*jetstream.KeyValueBucketStatus).Config()
	cfg.MaxBytes, cfg.Compression = 1<<20, true
	if _, err := js.UpdateKeyValue(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, "KV_"+natsjs.FailureBucket)
	if err != nil {
		t.Fatal(err)
	}
	scfg := s.CachedInfo().Config
	scfg.MaxMsgs, scfg.AllowMsgTTL = 100000, true
	if _, err := js.UpdateStream(ctx, scfg); err != nil {
		t.Fatal(err)
	}
	topo.StoredRetention *= 2 // a setting changed: the bucket is updated
	kv, err = topo.EnsureFailureLog(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if st, err = kv.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.(*jetstream.KeyValueBucketStatus).Config(); got.TTL != topo.StoredRetention || got.MaxBytes != 1<<20 || !got.Compression {
		t.Errorf("after a start: TTL %s, MaxBytes %d, compression %v; want %s and the operator's %d and compression", got.TTL, got.MaxBytes, got.Compression, topo.StoredRetention, 1<<20)
	}
	if s, err = js.Stream(ctx, "KV_"+natsjs.FailureBucket); err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config; got.MaxMsgs != 100000 || !got.AllowMsgTTL {
		t.Errorf("after a start: stream MaxMsgs %d, AllowMsgTTL %v; want the operator's 100000 and true", got.MaxMsgs, got.AllowMsgTTL)
	}
}

// TestFailureLogTTL: what a study's deliveries stored (the failure
// bucket) is kept STORED_RECORD_RETENTION, or as long as the events or
// the dead letters when they are kept longer. It expired with them (30
// days by default): a study sent again after (a late instance, a
// backfill, an audit's enqueue, a replay) found its instances forgotten,
// and the destination's "already exists" for stowline's own copies read
// as conflicts: counted as skipped corrections and kept in the source in
// buffer mode, replaced, or dead-lettered under STOW_ON_CONFLICT=
// deadletter. A start raises the TTL of a bucket made before (the
// previous release's 30 days), and never lowers it: lowered, JetStream
// deletes every older record at once.
func TestFailureLogTTL(t *testing.T) {
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
	const day = 24 * time.Hour
	for _, tt := range []struct {
		name string
		// before is the TTL of the bucket a previous start made (0:
		// none).
		before time.Duration
		// forever: the bucket a previous start made keeps its records
		// for ever (TTL 0, set by hand).
		forever                       bool
		events, letters, stored, want time.Duration
		wantWarned                    bool
	}{
		{name: "the defaults", events: 7 * day, letters: 30 * day, stored: 365 * day, want: 365 * day},
		{name: "letters kept longer", events: 7 * day, letters: 30 * day, stored: 2 * day, want: 30 * day},
		{name: "events kept longer", events: 400 * day, letters: 30 * day, stored: 365 * day, want: 400 * day},
		{name: "the previous release's bucket raised", before: 30 * day, events: 7 * day, letters: 30 * day, stored: 365 * day, want: 365 * day},
		{name: "never lowered", before: 365 * day, events: 7 * day, letters: 30 * day, stored: 90 * day, want: 365 * day, wantWarned: true},
		// 0 is the longest: no warning at every start.
		{name: "kept for ever", forever: true, events: 7 * day, letters: 30 * day, stored: 365 * day, want: 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := js.DeleteKeyValue(ctx, natsjs.FailureBucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
				t.Fatal(err)
			}
			if tt.before > 0 || tt.forever {
				previousFailureLog(ctx, t, js, tt.before)
			}
			var logs bytes.Buffer
			topo := natsjs.DefaultTopology()
			topo.Retention, topo.DeadLetterRetention, topo.StoredRetention = tt.events, tt.letters, tt.stored
			topo.Log = slog.New(slog.NewJSONHandler(&logs, nil))
			kv, err := topo.EnsureFailureLog(ctx, js)
			if err != nil {
				t.Fatal(err)
			}
			if got := bucketTTL(ctx, t, kv); got != tt.want {
				t.Errorf("failure bucket kept %s with EVENTS_RETENTION %s, DEADLETTER_RETENTION %s and STORED_RECORD_RETENTION %s (before: %s), want %s",
					got, tt.events, tt.letters, tt.stored, tt.before, tt.want)
			}
			if warned := strings.Contains(logs.String(), "STORED_RECORD_RETENTION not lowered"); warned != tt.wantWarned {
				t.Errorf("warned %v, want %v:\n%s", warned, tt.wantWarned, logs.String())
			}
		})
	}
}

// previousFailureLog makes the failure bucket as a release before
// STORED_RECORD_RETENTION did: kept for the longer of the events' and
// the letters' retention, here both ttl.
func previousFailureLog(ctx context.Context, t *testing.T, js jetstream.JetStream, ttl time.Duration) {
	t.Helper()
	old := natsjs.DefaultTopology()
	old.Retention, old.DeadLetterRetention, old.StoredRetention = ttl, ttl, 0
	if _, err := old.EnsureFailureLog(ctx, js); err != nil {
		t.Fatal(err)
	}
}

// bucketTTL reads how long kv keeps its records.
func bucketTTL(ctx context.Context, t *testing.T, kv jetstream.KeyValue) time.Duration {
	t.Helper()
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.TTL()
}

// lateWriter is a JetStream whose first update of the failure bucket's
// stream is followed by another group's start that read the bucket
// before it: that start writes its shorter TTL after this one's update.
type lateWriter struct {
	jetstream.JetStream
	ttl  time.Duration
	done bool
}

func (w *lateWriter) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := w.JetStream.UpdateStream(ctx, cfg)
	if err != nil || w.done || cfg.Name != "KV_"+natsjs.FailureBucket {
		return s, err
	}
	w.done = true
	cfg.MaxAge = w.ttl
	return w.JetStream.UpdateStream(ctx, cfg)
}

// TestFailureLogTTLRaised: two forwarder groups with different
// STORED_RECORD_RETENTION start together. An update is no compare-and-set:
// the group with the shorter one, having read the bucket before the
// other's update, wrote its TTL after it, and the shorter stayed. The
// start that raised it reads it again and raises it once more.
func TestFailureLogTTLRaised(t *testing.T) {
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
	const day = 24 * time.Hour
	previousFailureLog(ctx, t, js, 30*day)
	topo := natsjs.DefaultTopology()
	topo.StoredRetention = 400 * day
	kv, err := topo.EnsureFailureLog(ctx, &lateWriter{JetStream: js, ttl: 365 * day})
	if err != nil {
		t.Fatal(err)
	}
	if got := bucketTTL(ctx, t, kv); got != topo.StoredRetention {
		t.Errorf("failure bucket TTL %s after a shorter start's write, want the longest, %s", got, topo.StoredRetention)
	}
}

// racingCreator is a JetStream on which another group's start makes the
// failure bucket, with its own TTL, between this start's look-up (not
// found) and its create.
type racingCreator struct {
	jetstream.JetStream
	other natsjs.Topology
	done  bool
}

func (w *racingCreator) race(ctx context.Context, cfg jetstream.KeyValueConfig) error {
	if w.done || cfg.Bucket != natsjs.FailureBucket {
		return nil
	}
	w.done = true
	_, err := w.other.EnsureFailureLog(ctx, w.JetStream)
	return err
}

func (w *racingCreator) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if err := w.race(ctx, cfg); err != nil {
		return nil, err
	}
	return w.JetStream.CreateKeyValue(ctx, cfg)
}

// lateChecked is a JetStream on which another group's start that read
// the failure bucket before this start's update writes its shorter TTL
// right after this start's first read that finds its update in place.
type lateChecked struct {
	jetstream.JetStream
	ttl              time.Duration
	updated, written bool
}

func (w *lateChecked) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Name == "KV_"+natsjs.FailureBucket {
		w.updated = true
	}
	return w.JetStream.UpdateStream(ctx, cfg)
}

func (w *lateChecked) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := w.JetStream.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return &lateCheckedKV{KeyValue: kv, w: w}, nil
}

type lateCheckedKV struct {
	jetstream.KeyValue
	w *lateChecked
}

func (kv *lateCheckedKV) Status(ctx context.Context) (jetstream.KeyValueStatus, error) {
	st, err := kv.KeyValue.Status(ctx)
	if err != nil || !kv.w.updated || kv.w.written || kv.Bucket() != natsjs.FailureBucket {
		return st, err
	}
	kv.w.written = true
	s, err := kv.w.JetStream.Stream(ctx, "KV_"+natsjs.FailureBucket)
	if err != nil {
		return nil, err
	}
	cfg := s.CachedInfo().Config
	cfg.MaxAge = kv.w.ttl
	if _, err := kv.w.JetStream.UpdateStream(ctx, cfg); err != nil {
		return nil, err
	}
	return st, nil
}

// TestFailureLogTTLRaced: the longest STORED_RECORD_RETENTION of two
// forwarder groups starting together wins: (a) on a fresh install, the
// shorter group's create no longer updates the bucket the other made
// meanwhile; (b) a shorter write landing after the start's read that
// found its update in place is raised at the read after it.
func TestFailureLogTTLRaced(t *testing.T) {
	_, js := connectJS(t, startEmbedded(t, natsjs.EmbeddedOptions{}))
	ctx := testCtx(t)
	const day = 24 * time.Hour
	longer := natsjs.DefaultTopology()
	longer.StoredRetention = 400 * day
	for _, tt := range []struct {
		name string
		// before: the TTL of the bucket a previous start made (0: none).
		before time.Duration
		topo   natsjs.Topology
		js     jetstream.JetStream
	}{
		{name: "fresh install, the longer group creates first", topo: natsjs.DefaultTopology(), js: &racingCreator{JetStream: js, other: longer}},
		{name: "a shorter write lands after the check", before: 30 * day, topo: longer, js: &lateChecked{JetStream: js, ttl: 365 * day}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := js.DeleteKeyValue(ctx, natsjs.FailureBucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
				t.Fatal(err)
			}
			if tt.before > 0 {
				previousFailureLog(ctx, t, js, tt.before)
			}
			if _, err := tt.topo.EnsureFailureLog(ctx, tt.js); err != nil {
				t.Fatal(err)
			}
			kv, err := js.KeyValue(ctx, natsjs.FailureBucket)
			if err != nil {
				t.Fatal(err)
			}
			if got := bucketTTL(ctx, t, kv); got != longer.StoredRetention {
				t.Errorf("failure bucket TTL %s, want the longest, %s", got, longer.StoredRetention)
			}
		})
	}
}
