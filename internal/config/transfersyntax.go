package config

import (
	"fmt"
	"slices"
	"strings"
)

// maxUIDLen is the longest DICOM UID (PS3.5 §9.1).
const maxUIDLen = 64

// validateTransferSyntaxes checks STOW_TRANSFER_SYNTAXES: UIDs (digits
// and dots), no repeats.
func validateTransferSyntaxes(uids List) error {
	for i, uid := range uids {
		if !validUID(uid) {
			return fmt.Errorf("STOW_TRANSFER_SYNTAXES: %q is not a transfer syntax UID (digits separated by dots, at most %d characters, e.g. 1.2.840.10008.1.2.1)", uid, maxUIDLen)
		}
		if slices.Contains(uids[:i], uid) {
			return fmt.Errorf("STOW_TRANSFER_SYNTAXES: %s is listed twice", uid)
		}
	}
	return nil
}

// validUID reports whether s is a UID: components of digits separated by
// dots, none empty and none with a leading zero (PS3.5 §9.1).
func validUID(s string) bool {
	if s == "" || len(s) > maxUIDLen {
		return false
	}
	for c := range strings.SplitSeq(s, ".") {
		if c == "" || (len(c) > 1 && c[0] == '0') {
			return false
		}
		for i := 0; i < len(c); i++ {
			if c[i] < '0' || c[i] > '9' {
				return false
			}
		}
	}
	return true
}
