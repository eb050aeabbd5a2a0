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
// store is told to chown it, a lost+found at its top left alone.
func TestStoreOwnerChecked(t *testing.T) {
	t.Run("root on another user's store", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "nats")
		if err := os.Mkdir(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() != 0 {
			// Not root: the store is already another user's than root's.
			if err := storeOwnerProblem(dir, 0, kernelAccess); err == nil || !strings.Contains(err.Error(), "runs as root") {
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
	// The walk asks the kernel; here, as if for a process that may use
	// only what tt.usable names.
	tests := []struct {
		name      string
		lostFound bool
		usable    func(rel string) bool
		refused   string // the entry named; "" passes
	}{
		{"a block file it cannot write", false, func(rel string) bool { return rel != "jetstream/2.blk" }, "jetstream/2.blk"},
		{"a directory it cannot enter", false, func(rel string) bool { return rel != "jetstream" }, "jetstream"},
		{"all usable", false, func(string) bool { return true }, ""},
		// mkfs's lost+found, the store on a file system of its own.
		{"lost+found at the top", true, func(rel string) bool { return rel != "lost+found" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "nats")
			block := filepath.Join(dir, "jetstream", "2.blk")
			if err := os.MkdirAll(filepath.Dir(block), 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(block, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if tt.lostFound {
				if err := os.Mkdir(filepath.Join(dir, "lost+found"), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			usable := func(path string, _ bool) bool {
				rel, _ := filepath.Rel(dir, path)
				return tt.usable(rel)
			}
			err := storeOwnerProblem(dir, os.Geteuid()+1, usable)
			if (tt.refused != "") != (err != nil) || err != nil && (!strings.Contains(err.Error(), filepath.Join(dir, tt.refused)+" in the store") || !strings.Contains(err.Error(), "chown -R")) {
				t.Fatalf("err %v, want refused naming %q and chown -R", err, tt.refused)
			}
		})
	}
	// The kernel's answer: this process may use what it made.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "1.blk"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := storeOwnerProblem(dir, os.Geteuid()+1, kernelAccess); err != nil {
		t.Errorf("a store of this process's own files: %v", err)
	}
}
