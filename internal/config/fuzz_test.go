package config

import (
	"strings"
	"testing"
)

// FuzzLoad: no environment value makes Load panic, and every error names
// a variable the program reads.
func FuzzLoad(f *testing.F) {
	f.Add("STOW_MAX_BYTES", "1GiB")
	f.Add("FORWARDER_CONCURRENCY", "-1")
	f.Add("FORWARDER_ACK_WAIT", "1h1h1h")
	f.Add("DICOMWEB_URL", "http://[::1")
	f.Add("OAUTH_SCOPES", ",,, ,")
	f.Add("ORTHANC_URL", "http://u:p@x")
	f.Add("EVENTS_RETENTION", "-5m")
	f.Add("STOW_MAX_BYTES", "9223372036854775807TiB")
	names := map[string]bool{}
	for _, v := range Vars(&SingleHost{}) {
		names[v.Name] = true
	}
	f.Fuzz(func(t *testing.T, key, value string) {
		env := baseEnv()
		env[key] = value
		err := Load(mapEnv(env), &SingleHost{})
		if err == nil {
			return
		}
		for line := range strings.SplitSeq(err.Error(), "\n") {
			named := false
			for n := range names {
				if strings.Contains(line, n) {
					named = true
					break
				}
			}
			if !named {
				t.Fatalf("error line %q names no variable", line)
			}
		}
	})
}

func FuzzByteSize(f *testing.F) {
	for _, s := range []string{"0", "1", "1KiB", "500MB", "1GiB", "16 TiB", "-1", "1.5GB", "GB", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b ByteSize
		if err := b.UnmarshalText([]byte(s)); err != nil {
			return
		}
		if b < 0 {
			t.Fatalf("%q parsed to a negative size %d", s, b)
		}
		var again ByteSize
		if err := again.UnmarshalText([]byte(b.String())); err != nil || again != b {
			t.Fatalf("%q -> %d -> %q -> %d, %v", s, b, b.String(), again, err)
		}
	})
}
