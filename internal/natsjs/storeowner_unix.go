//go:build unix

package natsjs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// checkStoreOwner refuses a store that this process would leave, or
// has been left, unusable for its owner. nats-server creates its files
// 0600: a command run as root on a single host's store (forwarder replay
// run, backfill) left files the service user cannot open, and every
// later start of the service failed with "error creating store for
// stream", a restart every 5 s, the site down, and nothing naming the
// owner. systemd's StateDirectory= does not repair it: it descends only
// when the top directory is owned wrongly.
func checkStoreOwner(dir string) error {
	return storeOwnerProblem(dir, os.Geteuid(), kernelAccess)
}

// kernelAccess asks the kernel whether this process may read and write
// path (and enter it, a directory): it honours ACLs, and on NFS the
// server answers (a squashed export).
func kernelAccess(path string, dir bool) bool {
	mode := uint32(unix.R_OK | unix.W_OK)
	if dir {
		mode |= unix.X_OK
	}
	return unix.Faccessat(unix.AT_FDCWD, path, mode, unix.AT_EACCESS) == nil
}

// storeOwnerProblem is checkStoreOwner for a process of uid euid whose
// access to an entry usable tells.
func storeOwnerProblem(dir string, euid int, usable func(path string, dir bool) bool) error {
	info, err := os.Stat(dir)
	if err != nil {
		return nil // MkdirAll or the lock says why
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if owner := int(st.Uid); euid == 0 && owner != 0 {
		// A no-op chown tells whether root's files here would be root's:
		// an NFS export squashing root refuses it, and writes as the
		// squashed user.
		if err := os.Lchown(dir, owner, int(st.Gid)); errors.Is(err, fs.ErrPermission) {
			return nil
		}
		return fmt.Errorf("embedded NATS: store directory %s (NATS_STORE_DIR) belongs to %s, and this process runs as root: "+
			"files it wrote would stop the service's next start; run it as that user (on a systemd host: "+
			"systemd-run --pipe --wait -p User=%s -p EnvironmentFile=/etc/stowline/stowline.env ..., docs/operations.md)",
			dir, userName(owner), userLogin(owner))
	}
	if euid == 0 {
		return nil
	}
	foreign := ""
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrPermission) {
				foreign = path
				return filepath.SkipAll
			}
			return nil
		}
		if d.IsDir() && d.Name() == "lost+found" && filepath.Dir(path) == dir {
			// The store on a file system of its own: mkfs's, root's,
			// never nats-server's.
			return filepath.SkipDir
		}
		if !usable(path, d.IsDir()) {
			foreign = path
			return filepath.SkipAll
		}
		return nil
	})
	if foreign == "" {
		return nil
	}
	return fmt.Errorf("embedded NATS: %s in the store (NATS_STORE_DIR) belongs to another user (a command run as root?), and this process, %s, cannot write it: "+
		"chown -R %s %s, then start again", foreign, userName(euid), userLogin(euid), dir)
}

// userName names uid for a message: "user stowline (uid 998)".
func userName(uid int) string {
	return fmt.Sprintf("user %s (uid %d)", userLogin(uid), uid)
}

// userLogin is uid's login name, or the number when it has none.
func userLogin(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}
