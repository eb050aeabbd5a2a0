//go:build unix

package natsjs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStoreOwnerChecked: a process run as root on a store another user
// owns is refused before it writes anything (its files, 0600, stopped the
// service's next start); a process that cannot write an entry of its
// store is told to chown it. Entries shared through group or other bits
// pass.
func TestStoreOwnerChecked(t *testing.T) {
	t.Run("root on another user's store", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "nats")
		if err := os.Mkdir(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() != 0 {
			// Not root: the store is already another user's than root's.
			if err := storeOwnerProblem(dir, 0); err == nil || !strings.Contains(err.Error(), "runs as root") {
				t.Fatalf("err %v, want a refusal naming root", err)
			}
			return
		}
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		_, err := StartEmbedded(t.Context(), EmbeddedOptions{StoreDir: dir}, nil)
		if err == nil || !strings.Contains(err.Error(), "runs as root") || !strings.Contains(err.Error(), "User=") {
			t.Fatalf("StartEmbedded as root on uid 65534's store: err %v, want a refusal naming the user to run as", err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			t.Errorf("the refused start wrote %d entries in the store", len(entries))
		}
	})
	tests := []struct {
		name      string
		dir, file os.FileMode
		refused   bool
	}{
		{"file of another user, 0600", 0o777, 0o600, true},
		{"directory of another user, 0750", 0o750, 0o666, true},
		{"shared with everyone", 0o777, 0o666, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "nats")
			block := filepath.Join(dir, "jetstream", "2.blk")
			if err := os.MkdirAll(filepath.Dir(block), 0o777); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(block, nil, tt.file); err != nil {
				t.Fatal(err)
			}
			for path, mode := range map[string]os.FileMode{dir: tt.dir, filepath.Dir(block): 0o777, block: tt.file} {
				if err := os.Chmod(path, mode); err != nil {
					t.Fatal(err)
				}
			}
			// The entries are this process's; the check runs as if for
			// another uid, not root.
			other := os.Geteuid() + 1
			err := storeOwnerProblem(dir, other)
			if tt.refused != (err != nil) || tt.refused && !strings.Contains(err.Error(), "chown -R") {
				t.Fatalf("err %v, want refused %v, naming chown -R", err, tt.refused)
			}
		})
	}
}
