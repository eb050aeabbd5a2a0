package config

import (
	"fmt"
	"slices"

	"github.com/stowline/stowline/events"
)

// validateTransferSyntaxes checks STOW_TRANSFER_SYNTAXES: UIDs (digits
// and dots), no repeats.
func validateTransferSyntaxes(uids List) error {
	for i, uid := range uids {
		if !events.ValidUID(uid) {
			return fmt.Errorf("STOW_TRANSFER_SYNTAXES: %q is not a transfer syntax UID (digits separated by dots, at most 64 characters, e.g. 1.2.840.10008.1.2.1)", uid)
		}
		if slices.Contains(uids[:i], uid) {
			return fmt.Errorf("STOW_TRANSFER_SYNTAXES: %s is listed twice", uid)
		}
	}
	return nil
}
