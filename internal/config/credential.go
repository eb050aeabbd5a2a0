package config

import (
	"fmt"
	"strings"
)

// placeholders are parts of the values documentation and examples put
// where a credential goes: a deployment that copied one as is would
// publish its token.
var placeholders = []string{"changeme", "replaceme", "yourtoken", "yoursecret", "placeholder"}

// checkCredential refuses a shared secret shorter than minLen, one made
// of fewer than 8 different characters (a quarter of its length if less:
// a row of one key, "1234..."
// repeated), or one that reads as a documentation placeholder. It never
// shows the value.
func checkCredential(name, value string, minLen int) error {
	if len(value) < minLen {
		return fmt.Errorf("%s: want at least %d characters", name, minLen)
	}
	distinct := map[rune]bool{}
	for _, r := range value {
		distinct[r] = true
	}
	// A quarter of the length, at most 8: a random 16-character hex
	// token may repeat most of its 16 symbols.
	if want := min(8, len(value)/4); len(distinct) < want {
		return fmt.Errorf("%s: want a random value (it has fewer than %d different characters), e.g. head -c 24 /dev/urandom | base64", name, want)
	}
	folded := strings.NewReplacer("-", "", "_", "", " ", "", ".", "").Replace(strings.ToLower(value))
	for _, p := range placeholders {
		if strings.Contains(folded, p) {
			return fmt.Errorf("%s: the value is a placeholder from an example (%q): set a random one, e.g. head -c 24 /dev/urandom | base64", name, p)
		}
	}
	return nil
}

// checkHeaderToken refuses a bearer token that an Authorization header
// cannot carry as configured: HTTP drops spaces and tabs at the ends of a
// header value, so with one there (a secret file saved as "token \n")
// every request is refused, the right token included, and a control
// character (a second line in the file) no client can send at all. It
// never shows the value.
func checkHeaderToken(name, value string) error {
	if strings.Trim(value, " \t") != value {
		return fmt.Errorf("%s: begins or ends with a space or tab, which HTTP drops from the Authorization header, so no request would match it: remove it (a secret file's final newline is removed already)", name)
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return fmt.Errorf("%s: holds a line break or another control character, which an Authorization header cannot carry (a secret file is read as one line, its final newline removed)", name)
		}
	}
	return nil
}
