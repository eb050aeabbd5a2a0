package orthancapi

import (
	"fmt"

	"github.com/stowline/stowline/internal/ellipsis"
)

// ValidID reports whether id has the exact grammar of an Orthanc resource
// ID: five dash-separated groups of 8 lowercase hex digits (a SHA-1 in
// hex), e.g. "f689ddd2-662f8fe1-8b18180d-ec2a2cee-937917af"; as a regular
// expression, ^[0-9a-f]{8}(-[0-9a-f]{8}){4}$. It is checked byte by byte
// because the ingest validates every webhook event with it;
// TestValidIDMatchesItsGrammar holds it to the expression. An ID that
// passes is safe in a URL path, a NATS subject and a key.
func ValidID(id string) bool {
	if len(id) != 44 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if i%9 == 8 {
			if c != '-' {
				return false
			}
			continue
		}
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// checkID refuses an ID before it is put into a URL.
func checkID(kind, id string) error {
	if !ValidID(id) {
		// %q: the ID came from outside and may hold anything.
		return fmt.Errorf("%w: %s ID %q", ErrInvalidID, kind, ellipsis.Truncate(id, 80))
	}
	return nil
}
