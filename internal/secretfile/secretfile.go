// Package secretfile reads secrets kept in files: Docker and Kubernetes
// secrets, or files an operator writes, that stowline reads again when
// they may have been rotated.
package secretfile

import (
	"fmt"
	"os"
	"strings"
)

// Read returns the content of the secret file at path without its
// trailing line break (an editor's, or echo's). An empty secret is an
// error: read as unset, it would turn off what it guards. Errors name the
// file, never its content.
func Read(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}
