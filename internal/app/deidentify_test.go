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

type recordingProber struct{ got []string }

func (p *recordingProber) Probe(_ context.Context, uid string) error {
	p.got = append(p.got, uid)
	return nil
}

// TestDeidentifyProbesUnderThePseudonym: the circuit breaker's probe of
// a de-identifying destination names the study's pseudonym, never its
// original Study Instance UID.
func TestDeidentifyProbesUnderThePseudonym(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte(strings.Repeat("k", 40)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &config.NamedDestination{Name: "ai", Var: "DESTINATION_AI_", Destination: config.Destination{Deidentify: config.Deidentify{
		Mode: config.DeidentifyBasic, KeyFile: key, PatientPrefix: "ANON-", BurnedIn: config.DeidentifyBurnedInExclude}}}
	rec := &recordingProber{}
	o := &forward.Options{Destination: nopDestination{}, Breaker: forward.BreakerOptions{Prober: rec}}
	if err := deidentify(o, d, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	const original = "1.2.826.0.1.3680043.8.498.1"
	if err := o.Breaker.Prober.Probe(t.Context(), original); err != nil {
		t.Fatal(err)
	}
	want := forward.StudyPseudonym(o.Destination)(original)
	if len(rec.got) != 1 || rec.got[0] != want || want == original || !strings.HasPrefix(want, "2.25.") {
		t.Errorf("probed %v, want the pseudonym %s", rec.got, want)
	}
}
