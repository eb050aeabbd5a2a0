//go:build unix

package natsjs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockStore takes an exclusive lock on dir for this process: nats-server
// takes none, and two servers on one store each number their own events
// and overwrite the other's, losing events already acknowledged. The
// lock goes with the process, so a killed one leaves none behind.
func lockStore(dir string) (release func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "stowline.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: lock store directory (NATS_STORE_DIR): %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("embedded NATS: store directory %s is in use by another process (NATS_STORE_DIR): %w", dir, ErrStoreInUse)
		}
		return nil, fmt.Errorf("embedded NATS: lock store directory (NATS_STORE_DIR): %w", err)
	}
	return func() { f.Close() }, nil
}
