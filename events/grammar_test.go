package events

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// The grammars the byte-by-byte validators implement, as regular
// expressions: the specification they are checked against.
var grammars = []struct {
	name  string
	re    *regexp.Regexp
	check func(string) bool
}{
	{"ValidSource", regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`), ValidSource},
	{"PlausibleUID", regexp.MustCompile(`^[!-$&-)+-.0-=?-\[\]-~]{1,256}$`), PlausibleUID},
}

func checkGrammars(t *testing.T, s string) {
	t.Helper()
	for _, g := range grammars {
		if want, got := g.re.MatchString(s), g.check(s); got != want {
			t.Errorf("%s(%q) = %v, the grammar %s says %v", g.name, s, got, g.re, want)
		}
	}
}

func TestValidatorsMatchTheirGrammar(t *testing.T) {
	id := "27f7126f-4f66fb14-03f4081b-f9341db2-53925988"
	for _, s := range []string{
		"", id, id + "\n", "\n" + id, id[:43], id + "0", strings.ToUpper(id),
		strings.Replace(id, "-", "0", 1), strings.Replace(id, "2", "-", 1), strings.Replace(id, "f", "g", 1),
		"27f7126f-4f66fb14-03f4081b-f9341db2-5392598\u00e9",
		"a", "A-z_0", "a.b", "a b", ">", "*", "a\x00", strings.Repeat("a", 64), strings.Repeat("a", 65),
		strings.Repeat("1", 64), "1.2.840.10008", "1.2." + strings.Repeat("9", 61), "é", "1.2/3", "1.2:3",
		strings.Repeat("1", 256), strings.Repeat("1", 257), "1.2+3", "1.2%2F3", `1.2\3`, "1.2\x7f", "1.2~3", "!", "$&)",
	} {
		checkGrammars(t, s)
	}
	// Random strings over an alphabet of the interesting bytes: every
	// class boundary ('/' ':' '@' '[' '`' '{' around the digits and
	// letters), the separators, bytes of multi-byte UTF-8, and what
	// PlausibleUID refuses of printable ASCII ('%' '*' '>' '\') and
	// around it ('!' '~' DEL).
	const alphabet = "0123456789abcdefgzABCDEFGZ-_./:@[`{ \n\x00\xc3\xa9%*>\\!~\x7f"
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		var b []byte
		if rng.IntN(2) == 0 {
			// Near an Orthanc ID: mutate one byte of a valid one.
			b = []byte(id)
			b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
		} else {
			n := rng.IntN(70)
			for range n {
				b = append(b, alphabet[rng.IntN(len(alphabet))])
			}
		}
		checkGrammars(t, string(b))
		if t.Failed() {
			return
		}
	}
}

func FuzzValidatorsMatchTheirGrammar(f *testing.F) {
	f.Add("27f7126f-4f66fb14-03f4081b-f9341db2-53925988")
	f.Add("orthanc-a")
	f.Add("1.2.840.113619.2.1.2411.1031152382.365.1.736169244")
	f.Add("a\n")
	f.Fuzz(checkGrammars)
}
