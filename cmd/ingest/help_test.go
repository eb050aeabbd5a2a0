package main

import (
	"bytes"
	"strings"
	"testing"
)

// `ingest -h` must not promise what ingest refuses: NATS_URL empty runs
// an embedded server only in cmd/stowline, and ingest stops without one.
func TestHelpSaysNATSURLIsRequired(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"-h"}, func(string) string { return "" }, nil, &out, &errOut); err != nil {
		t.Fatalf("ingest -h: %v", err)
	}
	for line := range strings.Lines(errOut.String()) {
		if strings.HasPrefix(line, "NATS_URL ") && !strings.Contains(line, "required by ingest and forwarder") {
			t.Errorf("ingest -h says of NATS_URL:\n%s\nwithout saying ingest requires it", line)
		}
	}
}
