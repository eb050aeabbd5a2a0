package app

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/forward"
)

type nopDestination struct{}

func (nopDestination) Store(context.Context, []dicomweb.Part) (*dicomweb.Result, error) {
	return &dicomweb.Result{}, nil
}

// TestDeidentifyWiring: a de-identifying destination is wrapped, gets a
// transfer syntax list without the encodings the rewrite cannot read,
// and a bad key file is a startup error naming the destination's variable.
func TestDeidentifyWiring(t *testing.T) {
	dir := t.TempDir()
	good, short := filepath.Join(dir, "good"), filepath.Join(dir, "short")
	if err := os.WriteFile(good, []byte(strings.Repeat("k", 40)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(short, []byte("0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dest := func(key string) *config.NamedDestination {
		return &config.NamedDestination{Name: "ai", Var: "DESTINATION_AI_", Destination: config.Destination{Deidentify: config.Deidentify{
			Mode: config.DeidentifyBasic, KeyFile: key, PatientPrefix: "ANON-", BurnedIn: config.DeidentifyBurnedInExclude}}}
	}
	log := slog.New(slog.DiscardHandler)
	for _, tt := range []struct {
		name    string
		key     string
		syntax  []string
		want    []string // first syntaxes of the list
		wantErr string
	}{
		{name: "no list: the readable ones", key: good, want: []string{"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}},
		{name: "big endian dropped", key: good, syntax: []string{"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.70"}, want: []string{"1.2.840.10008.1.2.4.70"}},
		{name: "nothing left", key: good, syntax: []string{"1.2.840.10008.1.2.1.99"}, wantErr: "DESTINATION_AI_STOW_TRANSFER_SYNTAXES lists only"},
		{name: "short key", key: short, wantErr: "DESTINATION_AI_DEIDENTIFY_KEY_FILE"},
		{name: "missing key", key: filepath.Join(dir, "none"), wantErr: "DESTINATION_AI_DEIDENTIFY_KEY_FILE"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := &forward.Options{Destination: nopDestination{}, TransferSyntaxes: tt.syntax}
			err := deidentify(o, dest(tt.key), log)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), strings.Repeat("k", 40)) {
					t.Error("the key is in the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if forward.StudyPseudonym(o.Destination) == nil {
				t.Error("the destination is not wrapped")
			}
			if len(o.TransferSyntaxes) < len(tt.want) || !slices.Equal(o.TransferSyntaxes[:len(tt.want)], tt.want) ||
				slices.Contains(o.TransferSyntaxes, "1.2.840.10008.1.2.2") || slices.Contains(o.TransferSyntaxes, "1.2.840.10008.1.2.1.99") {
				t.Errorf("transfer syntaxes %q, want %q first and no big endian or deflated", o.TransferSyntaxes, tt.want)
			}
		})
	}
}
