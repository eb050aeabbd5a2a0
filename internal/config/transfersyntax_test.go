package config

import (
	"slices"
	"strings"
	"testing"
)

func TestTransferSyntaxes(t *testing.T) {
	tests := []struct {
		name, value string
		want        []string
		err         string // substring of the error; "" means valid
	}{
		{name: "unset means any", value: "", want: nil},
		{name: "one", value: "1.2.840.10008.1.2.1", want: []string{"1.2.840.10008.1.2.1"}},
		{name: "two with spaces", value: "1.2.840.10008.1.2.1, 1.2.840.10008.1.2.4.70", want: []string{"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"}},
		{name: "a name, not a UID", value: "ExplicitVRLittleEndian", err: `STOW_TRANSFER_SYNTAXES: "ExplicitVRLittleEndian" is not a transfer syntax UID`},
		{name: "empty component", value: "1.2..840", err: "is not a transfer syntax UID"},
		{name: "leading zero", value: "1.02.840", err: "is not a transfer syntax UID"},
		{name: "trailing dot", value: "1.2.840.", err: "is not a transfer syntax UID"},
		{name: "too long", value: "1." + strings.Repeat("2", 63), err: "at most 64"},
		{name: "repeated", value: "1.2.840.10008.1.2.1,1.2.840.10008.1.2.1", err: "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := baseEnv()
			e["STOW_TRANSFER_SYNTAXES"] = tt.value
			var c SingleHost
			err := Load(mapEnv(e), &c)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Forwarder.StowTransferSyntaxes; !slices.Equal(got, tt.want) {
				t.Errorf("STOW_TRANSFER_SYNTAXES = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTransferSyntaxesPerDestination(t *testing.T) {
	e := destEnv(t)
	e["DESTINATION_ARCHIVE_STOW_TRANSFER_SYNTAXES"] = "1.2.840.10008.1.2.1"
	var c SingleHost
	if err := Load(mapEnv(e), &c); err != nil {
		t.Fatal(err)
	}
	ds := c.DestinationList()
	if !slices.Equal(ds[0].StowTransferSyntaxes, []string{"1.2.840.10008.1.2.1"}) || len(ds[1].StowTransferSyntaxes) != 0 {
		t.Errorf("archive %q, ai-2 %q", ds[0].StowTransferSyntaxes, ds[1].StowTransferSyntaxes)
	}
	e["DESTINATION_AI_2_STOW_TRANSFER_SYNTAXES"] = "explicit"
	err := Load(mapEnv(e), &c)
	if err == nil || !strings.Contains(err.Error(), "DESTINATION_AI_2_STOW_TRANSFER_SYNTAXES") {
		t.Fatalf("err = %v, want it to name DESTINATION_AI_2_STOW_TRANSFER_SYNTAXES", err)
	}
}
