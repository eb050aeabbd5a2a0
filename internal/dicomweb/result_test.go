package dicomweb

import (
	"slices"
	"testing"
)

func TestMissing(t *testing.T) {
	res := &Result{Stored: []Instance{{SOPInstanceUID: "a"}, {SOPInstanceUID: "c"}}}
	tests := []struct {
		name string
		res  *Result
		sent []string
		want []string
	}{
		{"all stored", res, []string{"a", "c"}, nil},
		{"some missing, order kept", res, []string{"d", "a", "b", "c"}, []string{"d", "b"}},
		{"duplicates reported once", res, []string{"b", "b", "a"}, []string{"b"}},
		{"nothing sent", res, nil, nil},
		{"nil result misses everything", nil, []string{"a", "b"}, []string{"a", "b"}},
		{"empty result", &Result{}, []string{"x"}, []string{"x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.res.Missing(tt.sent); !slices.Equal(got, tt.want) {
				t.Fatalf("Missing = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReasonText(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{FailureReasonText(272), "processing failure"},
		{FailureReasonText(45070), "instance already exists"},
		{FailureReasonText(45071), "instance pending at the destination: being created by another request, or left by an earlier store that failed and was not cleaned up (Azure: delete it, then store it again)"},
		{FailureReasonText(43265), "StudyInstanceUID does not match the study in the request URL"},
		{FailureReasonText(0xA701), "refused: out of resources"},
		{FailureReasonText(0xA9FF), "data set does not match SOP Class"},
		{FailureReasonText(0xC001), "cannot understand"},
		{FailureReasonText(0xC122), "referenced Transfer Syntax not supported"},
		{FailureReasonText(0x0124), "refused: not authorized (the destination's permissions deny storing it)"},
		{FailureReasonText(0x0120), "missing attribute"},
		{FailureReasonText(0xA778), "refused by the archive (dcm4chee 0xA778: a Patient ID conflicting with the study's or missing, or a rejected instance sent again; see its log)"},
		{FailureReasonText(7), "failure reason 7 (0x0007)"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
