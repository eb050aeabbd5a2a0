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
// of fewer than 8 different characters (a row of one key, "1234..."
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
	if len(distinct) < 8 {
		return fmt.Errorf("%s: want a random value (it has fewer than 8 different characters), e.g. head -c 24 /dev/urandom | base64", name)
	}
	folded := strings.NewReplacer("-", "", "_", "", " ", "", ".", "").Replace(strings.ToLower(value))
	for _, p := range placeholders {
		if strings.Contains(folded, p) {
			return fmt.Errorf("%s: the value is a placeholder from an example (%q): set a random one, e.g. head -c 24 /dev/urandom | base64", name, p)
		}
	}
	return nil
}
