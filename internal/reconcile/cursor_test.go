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
