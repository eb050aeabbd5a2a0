package app

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/ledger"
)

// TestAuditTablesWrittenInBlocks: the audit's first run for a new
// destination reports every study Orthanc holds, and --verify a row per
// missing instance; their tables must go out as they are made, not be
// held whole until the walk ends.
func TestAuditTablesWrittenInBlocks(t *testing.T) {
	for _, tt := range []struct {
		name   string
		report func(w io.Writer) (func(i int) error, func() error)
	}{
		{"audit", func(w io.Writer) (func(int) error, func() error) {
			report, flush := auditReporter(w, false)
			return func(i int) error {
				return report(ledger.Finding{Destination: "archive", Source: "main", OrthancStudyID: fmt.Sprintf("study-%d", i),
					StudyInstanceUID: "1.2.3", LastUpdate: "20261126T101500", Reason: ledger.ReasonNeverForwarded})
			}, flush
		}},
		{"audit --verify", func(w io.Writer) (func(int) error, func() error) {
			report, flush := verifyReporter(w, false)
			return func(i int) error {
				return report(ledger.VerifyFinding{Destination: "archive", Source: "main", OrthancStudyID: "s", StudyInstanceUID: "1.2.3",
					Missing: []ledger.MissingInstance{{OrthancInstanceID: fmt.Sprintf("instance-%d", i), SOPInstanceUID: "1.2.3.4"}}})
			}, flush
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			report, flush := tt.report(&out)
			const rows = 3*tableBlock + 7
			for i := range rows {
				if err := report(i); err != nil {
					t.Fatal(err)
				}
				// The header and i+1 rows were given.
				if held := i + 2 - strings.Count(out.String(), "\n"); held > tableBlock {
					t.Fatalf("after %d rows, %d are still held in memory (at most %d)", i+1, held, tableBlock)
				}
			}
			if err := flush(); err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(out.String(), "\n"); got != rows+1 {
				t.Fatalf("%d lines written, want the header and %d rows", got, rows)
			}
		})
	}
}
