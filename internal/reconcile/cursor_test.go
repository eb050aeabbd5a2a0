package reconcile

import (
	"context"
	"errors"
	"testing"
)

func TestCursorStoreCompareAndSet(t *testing.T) {
	_, kv := testBucket(t)
	ctx := context.Background()
	a := &cursorStore{kv: kv, key: cursorKey("s")}
	b := &cursorStore{kv: kv, key: cursorKey("s")}
	if _, found, err := a.load(ctx); err != nil || found {
		t.Fatalf("load of a new cursor: found=%v err=%v", found, err)
	}
	if _, _, err := b.load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.save(ctx, cursor{Seq: 5, Pending: map[string]int64{"x": 3}}); err != nil {
		t.Fatal(err)
	}
	if err := b.save(ctx, cursor{Seq: 1}); !errors.Is(err, errCursorConflict) {
		t.Fatalf("second creator: %v, want errCursorConflict", err)
	}
	c, found, err := b.load(ctx)
	if err != nil || !found || c.Seq != 5 || c.Pending["x"] != 3 {
		t.Fatalf("load = %+v, %v, %v", c, found, err)
	}
	if err := b.save(ctx, cursor{Seq: 9}); err != nil {
		t.Fatal(err)
	}
	if err := a.save(ctx, cursor{Seq: 6}); !errors.Is(err, errCursorConflict) {
		t.Fatalf("stale writer: %v, want errCursorConflict", err)
	}
}

// A save that was written though its answer was lost does not make the
// next save a conflict: the reconciler stepped down with "another replica
// wrote the reconciler cursor" when none had, and took its lease back. A
// cursor another replica wrote meanwhile is still a conflict.
func TestCursorSaveWithLostAnswer(t *testing.T) {
	_, kv := testBucket(t)
	ctx := context.Background()
	lossy := &lostAnswers{KeyValue: kv}
	a := &cursorStore{kv: lossy, key: cursorKey("s")}
	if _, _, err := a.load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.save(ctx, cursor{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	lossy.lose.Store(true)
	if err := a.save(ctx, cursor{Seq: 2}); err == nil {
		t.Fatal("the save whose answer was lost succeeded")
	}
	if err := a.save(ctx, cursor{Seq: 3}); err != nil {
		t.Fatalf("save after a save whose answer was lost: %v, want it written", err)
	}
	if c, _, err := a.load(ctx); err != nil || c.Seq != 3 {
		t.Fatalf("load = %+v, %v; want Seq 3", c, err)
	}

	b := &cursorStore{kv: kv, key: cursorKey("s")}
	if _, _, err := b.load(ctx); err != nil {
		t.Fatal(err)
	}
	lossy.lose.Store(true)
	if err := a.save(ctx, cursor{Seq: 4}); err == nil {
		t.Fatal("the save whose answer was lost succeeded")
	}
	if err := b.save(ctx, cursor{Seq: 10}); !errors.Is(err, errCursorConflict) {
		t.Fatalf("B's save over A's unconfirmed one: %v, want errCursorConflict", err)
	}
	if _, _, err := b.load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.save(ctx, cursor{Seq: 11}); err != nil {
		t.Fatal(err)
	}
	if err := a.save(ctx, cursor{Seq: 5}); !errors.Is(err, errCursorConflict) {
		t.Fatalf("A's save over B's cursor: %v, want errCursorConflict", err)
	}
}
