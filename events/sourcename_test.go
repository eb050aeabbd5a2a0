package events

import "testing"

func TestDefaultSourceNameMatchesTheLuaScript(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "orthanc"},
		{"orthanc-main", "orthanc-main"},
		{"My Orthanc 1.2", "My-Orthanc-1-2"},
		{"Ünï", "--n--"}, // the script works on bytes: two bytes, two dashes
		{"a/b.c*d>e", "a-b-c-d-e"},
		{string(make([]byte, 70)), "----------------------------------------------------------------"},
	}
	for _, tt := range tests {
		got := DefaultSourceName(tt.in)
		if got != tt.want {
			t.Errorf("DefaultSourceName(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if !ValidSource(got) {
			t.Errorf("DefaultSourceName(%q) = %q is not a valid source", tt.in, got)
		}
	}
}
