package app

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/deident"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/forward"
)

type nopDestination struct{}

func (nopDestination) Store(context.Context, []dicomweb.Part) (*dicomweb.Result, error) {
	return &dicomweb.Result{}, nil
}

// TestDeidentifyWiring: a de-identifying destination is wrapped, gets a
// transfer syntax list without the encodings the rewrite cannot read
// (its own when the variable is unset, said so), and a bad key file is a startup error naming the destination's variable.
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
		implied bool     // the list is the forwarder's own
		wantErr string
	}{
		{name: "no list: the readable ones", key: good, want: []string{"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}, implied: true},
		{name: "big endian dropped", key: good, syntax: []string{"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.70"}, want: []string{"1.2.840.10008.1.2.4.70"}},
		{name: "JPIP deflated dropped", key: good, syntax: []string{"1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.1"}, want: []string{"1.2.840.10008.1.2.1"}},
		// Refused with the configuration (config.Destination) before it
		// gets here; a list that still would is refused all the same.
		{name: "nothing left", key: good, syntax: []string{"1.2.840.10008.1.2.1.99"}, wantErr: "no transfer syntax the de-identifying rewrite writes"},
		{name: "short key", key: short, wantErr: "DESTINATION_AI_DEIDENTIFY_KEY_FILE"},
		{name: "missing key", key: filepath.Join(dir, "none"), wantErr: "DESTINATION_AI_DEIDENTIFY_KEY_FILE"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := &forward.Options{Destination: nopDestination{}, TransferSyntaxes: tt.syntax}
			_, err := deidentify(o, dest(tt.key), log)
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
				slices.ContainsFunc(o.TransferSyntaxes, func(ts string) bool {
					return ts == "1.2.840.10008.1.2.2" || ts == "1.2.840.10008.1.2.1.99" || ts == "1.2.840.10008.1.2.4.95"
				}) {
				t.Errorf("transfer syntaxes %q, want %q first and no big endian or deflated", o.TransferSyntaxes, tt.want)
			}
			// A refusal's advice depends on it: set the variable, or
			// edit the list the operator wrote.
			if o.TransferSyntaxesImplied != tt.implied {
				t.Errorf("TransferSyntaxesImplied = %v, want %v", o.TransferSyntaxesImplied, tt.implied)
			}
		})
	}
}

// Each de-identifying destination's start is logged with its key's
// fingerprint, never the key, so that the operator can tell that every
// forwarder of the destination uses the same key (before and after a
// rotation).
func TestDeidentifyLogsKeyFingerprint(t *testing.T) {
	secret := strings.Repeat("k", 40)
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &config.NamedDestination{Name: "ai", Var: "DESTINATION_AI_", Destination: config.Destination{Deidentify: config.Deidentify{
		Mode: config.DeidentifyBasic, KeyFile: key, PatientPrefix: "ANON-", BurnedIn: config.DeidentifyBurnedInExclude}}}
	var logs bytes.Buffer
	if _, err := deidentify(&forward.Options{Destination: nopDestination{}}, d, slog.New(slog.NewJSONHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	// printf 'stowline key fingerprint' | openssl dgst -sha256 -hmac "$(cat key)", first 16 hex digits.
	if !strings.Contains(logs.String(), `"destination":"ai"`) || !strings.Contains(logs.String(), `"key_fingerprint":"699d18bff6df025f"`) {
		t.Errorf("no key_fingerprint of destination ai in %s", logs.String())
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("the key is logged: %s", logs.String())
	}
}

// TestDeidentifyKeepsEveryReadableSyntax: a de-identifying destination
// without a transfer syntax list is sent, as they are, the instances in
// every standard syntax the rewrite reads (PS3.5 Annex A, PS3.6 Table
// Little Endian, not deflated; JPIP left out). One missing from its
// list was refused (a video in HEVC: "lossy, which the destination's
// STOW_TRANSFER_SYNTAXES does not list", a variable never set) or
// handed to an Orthanc conversion that fails (JPEG XL); Big Endian and
// Deflated, which the rewrite refuses, are converted.
func TestDeidentifyKeepsEveryReadableSyntax(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte(strings.Repeat("k", 40)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &config.NamedDestination{Name: "ai", Var: "DESTINATION_AI_", Destination: config.Destination{Deidentify: config.Deidentify{
		Mode: config.DeidentifyBasic, KeyFile: key, PatientPrefix: "ANON-", BurnedIn: config.DeidentifyBurnedInInclude}}}
	o := &forward.Options{Destination: nopDestination{}}
	if _, err := deidentify(o, d, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	k, err := deident.NewKeyer([]byte(strings.Repeat("k", 40)), "ANON-")
	if err != nil {
		t.Fatal(err)
	}
	rw, err := deident.New(k, deident.Options{IncludeBurnedIn: true})
	if err != nil {
		t.Fatal(err)
	}
	readable := []string{
		"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.98", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.8.1",
		"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.52", "1.2.840.10008.1.2.4.53",
		"1.2.840.10008.1.2.4.54", "1.2.840.10008.1.2.4.55", "1.2.840.10008.1.2.4.56", "1.2.840.10008.1.2.4.57",
		"1.2.840.10008.1.2.4.58", "1.2.840.10008.1.2.4.59", "1.2.840.10008.1.2.4.60", "1.2.840.10008.1.2.4.61",
		"1.2.840.10008.1.2.4.62", "1.2.840.10008.1.2.4.63", "1.2.840.10008.1.2.4.64", "1.2.840.10008.1.2.4.65",
		"1.2.840.10008.1.2.4.66", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
		"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
		"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100.1", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.101.1",
		"1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102.1", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.103.1",
		"1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.104.1", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.105.1",
		"1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.106.1", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
		"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112",
		"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
	}
	for _, ts := range readable {
		if _, err := rw.Rewrite(io.Discard, bytes.NewReader(minimalFile(ts))); err != nil {
			t.Errorf("%s: the rewrite does not read it: %v", ts, err)
		}
		if !slices.Contains(o.TransferSyntaxes, ts) {
			t.Errorf("%s: not sent as it is (the rewrite reads it)", ts)
		}
	}
	for _, ts := range []string{"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"} {
		if _, err := rw.Rewrite(io.Discard, bytes.NewReader(minimalFile(ts))); !errors.Is(err, deident.ErrUnsupportedSyntax) {
			t.Errorf("%s: Rewrite = %v, want ErrUnsupportedSyntax", ts, err)
		}
		if slices.Contains(o.TransferSyntaxes, ts) {
			t.Errorf("%s: sent as it is, not converted", ts)
		}
	}
}

// minimalFile is a Part-10 file in syntax ts: a CT instance whose pixel
// data is one encapsulated fragment (native in the uncompressed syntaxes).
func minimalFile(ts string) []byte {
	implicit := ts == "1.2.840.10008.1.2"
	header := func(b *bytes.Buffer, group, elem uint16, vr string, n uint32, implicit bool) {
		b.Write(binary.LittleEndian.AppendUint16(nil, group))
		b.Write(binary.LittleEndian.AppendUint16(nil, elem))
		switch {
		case implicit:
			b.Write(binary.LittleEndian.AppendUint32(nil, n))
		case vr == "OB":
			b.WriteString("OB\x00\x00")
			b.Write(binary.LittleEndian.AppendUint32(nil, n))
		default:
			b.WriteString(vr)
			b.Write(binary.LittleEndian.AppendUint16(nil, uint16(n)))
		}
	}
	el := func(b *bytes.Buffer, group, elem uint16, vr, v string, implicit bool) {
		if len(v)%2 == 1 {
			v += "\x00"
		}
		header(b, group, elem, vr, uint32(len(v)), implicit)
		b.WriteString(v)
	}
	var meta, b bytes.Buffer
	el(&meta, 0x0002, 0x0010, "UI", ts, false)
	b.Write(make([]byte, 128))
	b.WriteString("DICM")
	el(&b, 0x0002, 0x0000, "UL", string(binary.LittleEndian.AppendUint32(nil, uint32(meta.Len()))), false)
	b.Write(meta.Bytes())
	el(&b, 0x0008, 0x0016, "UI", "1.2.840.10008.5.1.4.1.1.2", implicit)
	el(&b, 0x0008, 0x0018, "UI", "1.2.826.0.1.3680043.8.498.1", implicit)
	el(&b, 0x0010, 0x0020, "LO", "PAT-42", implicit)
	switch ts {
	case "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99":
		header(&b, 0x7FE0, 0x0010, "OB", 2, implicit)
		b.Write([]byte{1, 2})
	default:
		header(&b, 0x7FE0, 0x0010, "OB", 0xFFFFFFFF, false)
		header(&b, 0xFFFE, 0xE000, "", 0, true) // empty offset table
		header(&b, 0xFFFE, 0xE000, "", 2, true) // one fragment
		b.Write([]byte{1, 2})
		header(&b, 0xFFFE, 0xE0DD, "", 0, true)
	}
	return b.Bytes()
}
