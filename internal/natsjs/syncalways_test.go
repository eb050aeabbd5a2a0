package natsjs

import (
	"context"
	"log/slog"
	"testing"
)

// The single-host server writes every event to disk before it is
// acknowledged: nothing replicates it.
func TestSingleHostSyncsEveryWrite(t *testing.T) {
	c, err := Connect(context.Background(), ConnectOptions{StoreDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.embedded == nil || !c.embedded.ns.JetStreamConfig().SyncAlways {
		t.Error("the embedded single-host server does not sync every write")
	}
}
