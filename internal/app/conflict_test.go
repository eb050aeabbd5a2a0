package app

import (
	"testing"

	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomweb"
	"github.com/stowline/stowline/internal/forward"
)

// Each destination's STOW_ON_CONFLICT reaches its forwarder with the
// profile's conflict answers and replace method, and the STOW client can
// do what the method needs.
func TestConflictPolicyFromConfig(t *testing.T) {
	client, err := dicomweb.New("https://dicom.example.org/v2", nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		d       config.NamedDestination
		want    forward.ConflictPolicy
		reasons int
	}{
		{name: "default skip", d: config.NamedDestination{Name: "default", Destination: config.Destination{StowOnConflict: "skip"}},
			want: forward.ConflictPolicy{Action: "skip", Setting: "STOW_ON_CONFLICT"}, reasons: 4},
		{name: "azure replace by upsert", d: config.NamedDestination{Name: "az", Var: "DESTINATION_AZ_",
			Destination: config.Destination{StowOnConflict: "replace", DestinationAuth: config.DestinationAuth{Provider: "azure"}}},
			want: forward.ConflictPolicy{Action: "replace", Method: "put", Setting: "DESTINATION_AZ_STOW_ON_CONFLICT"}, reasons: 4},
		{name: "google dead letters", d: config.NamedDestination{Name: "g", Var: "DESTINATION_G_",
			Destination: config.Destination{StowOnConflict: "deadletter", StowProfile: "google"}},
			want: forward.ConflictPolicy{Action: "deadletter", Setting: "DESTINATION_G_STOW_ON_CONFLICT"}, reasons: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := conflictPolicy(&tt.d)
			if got.Action != tt.want.Action || got.Method != tt.want.Method || got.Setting != tt.want.Setting || len(got.Rules) != tt.reasons {
				t.Errorf("policy %+v, want %+v with %d rules", got, tt.want, tt.reasons)
			}
			if _, err := forward.New(forward.Options{DestinationName: tt.d.Name, SourceFor: func(string) (forward.Source, error) { return nil, nil },
				Destination: client, Concurrency: 1, MaxInstances: 1, MaxBytes: 1, AckWait: 1, RetryDelay: 1, RetryMaxDelay: 1, Conflicts: got}); err != nil {
				t.Errorf("forward.New: %v", err)
			}
		})
	}
}
