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
	return storeOwnerProblem(dir, os.Geteuid())
}

// storeOwnerProblem is checkStoreOwner for a process of uid euid.
func storeOwnerProblem(dir string, euid int) error {
	info, err := os.Stat(dir)
	if err != nil {
		return nil // MkdirAll or the lock says why
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	owner := int(st.Uid)
	if euid == 0 && owner != 0 {
		return fmt.Errorf("embedded NATS: store directory %s (NATS_STORE_DIR) belongs to %s, and this process runs as root: "+
			"files it wrote would stop the service's next start; run it as that user (on a systemd host: "+
			"systemd-run --pipe --wait -p User=%s -p EnvironmentFile=/etc/stowline/stowline.env ..., docs/operations.md)",
			dir, userName(owner), userLogin(owner))
	}
	if euid == 0 {
		return nil
	}
	groups := map[int]bool{os.Getegid(): true}
	if gs, err := os.Getgroups(); err == nil {
		for _, g := range gs {
			groups[g] = true
		}
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
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && !usableBy(info, st, euid, groups) {
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

// usableBy reports whether the process of uid euid, in groups, may read
// and write the entry (and enter it, a directory), by its owner's,
// group's or others' bits: a volume shared through a group is usable.
func usableBy(info fs.FileInfo, st *syscall.Stat_t, euid int, groups map[int]bool) bool {
	need := fs.FileMode(0o6)
	if info.IsDir() {
		need = 0o7
	}
	perm := info.Mode().Perm()
	switch {
	case int(st.Uid) == euid:
		return perm>>6&need == need
	case groups[int(st.Gid)]:
		return perm>>3&need == need
	default:
		return perm&need == need
	}
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
