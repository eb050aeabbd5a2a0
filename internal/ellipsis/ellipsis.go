// Package ellipsis shortens text for one-line displays: error messages,
// tables and the status page.
package ellipsis

import "unicode/utf8"

// Truncate returns s if it has at most n runes, else its first n-1 runes
// followed by "…", so the result is never longer than n runes and never
// splits a character.
func Truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	runes := 0
	for i := range s {
		if runes == n-1 {
			return s[:i] + "…"
		}
		runes++
	}
	return s
}
