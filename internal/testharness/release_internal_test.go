package testharness

import (
	"errors"
	"reflect"
	"testing"
)

func TestReleasesUnderTest(t *testing.T) {
	t.Setenv(TrixieRootEnv, "/trixie")
	tests := []struct {
		env     string
		want    []Release
		wantErr bool
	}{
		{env: "", want: []Release{{Name: "1.10"}, {Name: "1.12", Root: "/trixie"}}},
		{env: "1.12", want: []Release{{Name: "1.12", Root: "/trixie"}}},
		{env: " 1.12 , 1.10", want: []Release{{Name: "1.12", Root: "/trixie"}, {Name: "1.10"}}},
		{env: "1.11", wantErr: true},
		{env: "1.10,", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.env, func(t *testing.T) {
			t.Setenv(ReleasesEnv, tc.env)
			got, err := releasesUnderTest()
			if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("releasesUnderTest() = %v, %v; want %v (error: %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// A trixie tree that is not there is "not installed": the test skips, or
// fails in CI.
func TestTrixieTreeMissing(t *testing.T) {
	rel := Release{Name: "1.12", Root: t.TempDir()}
	if _, err := rel.version(); !errors.Is(err, ErrMissing) {
		t.Errorf("version() of an empty tree: %v, want ErrMissing", err)
	}
}
