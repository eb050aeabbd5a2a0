//go:build !unix

package natsjs

// lockStore takes no lock where flock is missing.
func lockStore(string) (func(), error) { return func() {}, nil }

func checkStoreOwner(string) error { return nil }
