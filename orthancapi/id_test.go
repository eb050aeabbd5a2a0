package orthancapi_test

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/stowline/stowline/orthancapi"
)

func TestValidID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{studyID, true},
		{"00000000-00000000-00000000-00000000-00000000", true},
		{"", false},
		{strings.ToUpper(studyID), false},
		{studyID[:35], false},          // four groups
		{studyID + "-00000000", false}, // six groups
		{strings.Replace(studyID, "-", "_", 1), false},
		{"8a8cf898-ca27c490-d0c7058c-929d0581-2bbf104g", false},
		{"8a8cf898ca27c490-d0c7058c-929d0581-2bbf104d-", false},
		{"../../../../tools/reset/aaaaaaaaaaaaaaaaaaaa", false},
		{"8a8cf898-ca27c490-d0c7058c-929d0581-2bbf10%2", false},
	}
	for _, tc := range tests {
		if got := orthancapi.ValidID(tc.id); got != tc.want {
			t.Errorf("ValidID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

// idGrammar is the specification ValidID implements byte by byte.
var idGrammar = regexp.MustCompile(`^[0-9a-f]{8}(-[0-9a-f]{8}){4}$`)

func checkIDGrammar(t *testing.T, s string) {
	t.Helper()
	if want, got := idGrammar.MatchString(s), orthancapi.ValidID(s); got != want {
		t.Errorf("ValidID(%q) = %v, the grammar %s says %v", s, got, idGrammar, want)
	}
}

func TestValidIDMatchesItsGrammar(t *testing.T) {
	for _, s := range []string{
		"", studyID, studyID + "\n", "\n" + studyID, studyID[:43], studyID + "0", strings.ToUpper(studyID),
		strings.Replace(studyID, "-", "0", 1), strings.Replace(studyID, "2", "-", 1), strings.Replace(studyID, "c", "g", 1),
		studyID[:43] + "\u00e9", "a", "a-b", "..",
	} {
		checkIDGrammar(t, s)
	}
	// Random strings over an alphabet of the interesting bytes: every
	// class boundary ('/' ':' '@' '`' 'g' around the digits and
	// letters), the separators, and bytes of multi-byte UTF-8.
	const alphabet = "0123456789abcdefgzABCDEFGZ-_./:@[`{ \n\x00\xc3\xa9"
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		var b []byte
		if rng.IntN(2) == 0 {
			// Near an Orthanc ID: mutate one byte of a valid one.
			b = []byte(studyID)
			b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
		} else {
			for range rng.IntN(50) {
				b = append(b, alphabet[rng.IntN(len(alphabet))])
			}
		}
		checkIDGrammar(t, string(b))
		if t.Failed() {
			return
		}
	}
}

func FuzzValidIDMatchesItsGrammar(f *testing.F) {
	f.Add("27f7126f-4f66fb14-03f4081b-f9341db2-53925988")
	f.Add("27f7126f-4f66fb14-03f4081b-f9341db2-5392598\n")
	f.Add("../../tools/reset")
	f.Fuzz(checkIDGrammar)
}
