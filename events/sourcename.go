package events

// DefaultSourceName is the source name Orthanc's Lua script uses when its
// "Stowline.Source" setting is empty: Orthanc's "Name" with every byte
// other than A-Z a-z 0-9 _ - replaced by '-', at most 64 bytes, "orthanc"
// when empty. The reconciler and the audit use it for an Orthanc whose
// source name is not configured, so their events carry the same source
// (and de-duplication ID) as the script's.
func DefaultSourceName(orthancName string) string {
	if orthancName == "" {
		return "orthanc"
	}
	b := []byte(orthancName)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}
