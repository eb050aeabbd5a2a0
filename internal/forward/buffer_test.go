package forward

import (
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/stowline/stowline/internal/dicomweb"
)

// An instance the destination says it changed as it stored it (Coercion,
// Elements Discarded) is kept in the source and recorded as kept; one
// stored as sent with another warning (SOP class mismatch) is not.
func TestWarnedInstancesKept(t *testing.T) {
	k := &sink{warnings: map[string]int{"1.2.3.2": 0xB006, "1.2.3.3": 0xB000, "1.2.3.4": 0xB007}}
	srv := httptest.NewServer(k.handler(nil))
	t.Cleanup(srv.Close)
	src := newMemSource(5)
	f := newForwarder(t, src, srv.URL, nil)
	rep, err := f.transfer(t.Context(), &Attempt{Event: testEvent()})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"1.2.3.2", "1.2.3.3"}; !slices.Equal(rep.kept, want) {
		t.Errorf("kept %v, want %v", rep.kept, want)
	}
	var forwarded []string
	for _, in := range rep.forwarded {
		forwarded = append(forwarded, in.SOPInstanceUID)
	}
	if want := []string{"1.2.3.1", "1.2.3.4", "1.2.3.5"}; !slices.Equal(forwarded, want) {
		t.Errorf("buffer mode would delete %v, want %v", forwarded, want)
	}
	if len(rep.selected) != 5 || len(rep.listed) != 5 {
		t.Errorf("selected %d, listed %d; want 5 and 5", len(rep.selected), len(rep.listed))
	}
}

// A de-identifying destination's answer names the copies' UIDs; every
// list of it, warnings too, is mapped back to the originals (a warning
// left unmapped would not keep its instance in buffer mode).
func TestMapBack(t *testing.T) {
	back := map[string]string{"2.25.1": "1.2.3.1", "2.25.2": "1.2.3.2", "2.25.3": "1.2.3.3"}
	res := &dicomweb.Result{
		Stored:        []dicomweb.Instance{{SOPInstanceUID: "2.25.1", WarningReason: dicomweb.WarningCoercion}},
		Failed:        []dicomweb.FailedInstance{{SOPInstanceUID: "2.25.2"}},
		Warnings:      []dicomweb.Warning{{SOPInstanceUID: "2.25.1", WarningReason: dicomweb.WarningCoercion}},
		OtherFailures: []dicomweb.FailedInstance{{SOPInstanceUID: "2.25.3"}},
	}
	mapBack(res, back)
	if res.Stored[0].SOPInstanceUID != "1.2.3.1" || res.Failed[0].SOPInstanceUID != "1.2.3.2" ||
		res.Warnings[0].SOPInstanceUID != "1.2.3.1" || res.OtherFailures[0].SOPInstanceUID != "1.2.3.3" {
		t.Errorf("mapped back: %+v", res)
	}
}
