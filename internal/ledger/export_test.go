package ledger

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testnats"
)

// NewTestBucket starts a NATS server and makes the default destination's
// ledger bucket on it. Exported for the package's external tests; it is
// compiled only with the tests.
func NewTestBucket(t *testing.T) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	ns := testnats.Start(t)
	kv, err := natsjs.DefaultTopology().EnsureLedger(t.Context(), ns.JS, natsjs.DefaultDestination)
	if err != nil {
		t.Fatal(err)
	}
	return ns.JS, kv
}
