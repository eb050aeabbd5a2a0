package chartcheck

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// commandVarSet is what one command reads: exact names, and patterns for
// the per-source ORTHANC_<NAME>_* variables.
type commandVarSet struct {
	names    map[string]bool
	patterns []*regexp.Regexp
}

func (s commandVarSet) reads(name string) bool {
	if s.names[name] {
		return true
	}
	for _, p := range s.patterns {
		if p.MatchString(name) {
			return true
		}
	}
	return false
}

var (
	varsOnce sync.Once
	vars     map[string]commandVarSet
	varsErr  error

	binOnce sync.Once
	binDir  string // removed by TestMain
	binErr  error
)

// TestMain removes the commands built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// commandBinaries builds the main module's ingest and forwarder once and
// returns the directory holding them.
func commandBinaries(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "chartcheck-bin-"); binErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		build := exec.CommandContext(ctx, "go", "build", "-o", binDir+string(filepath.Separator), "./cmd/ingest", "./cmd/forwarder")
		build.Dir = repoRoot
		if out, err := build.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("build the commands: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// commandVars returns, per command (ingest, forwarder), the variables its
// `-h` lists: the code's own list (internal/config), read by building and
// running the commands of the main module. A secret's VARIABLE_FILE
// counts too.
func commandVars(t *testing.T) map[string]commandVarSet {
	t.Helper()
	dir := commandBinaries(t)
	varsOnce.Do(func() { vars, varsErr = readCommandVars(dir) })
	if varsErr != nil {
		t.Fatal(varsErr)
	}
	return vars
}

// configLoads runs a command with env as its whole environment, the files
// the pods would mount (the paths of the _FILE variables) replaced by
// temporary ones, and NATS_URL pointing at a closed port: it passes when
// the command loaded and validated its configuration (internal/config:
// variables, destinations, routing rules) and then failed to reach NATS:
// it waits for NATS (a warning a try), and is then stopped with SIGTERM,
// which ends it as a stop (exit status 0); or it exited 1 (not 2) before
// (a listener's address or certificate).
func configLoads(t *testing.T, command string, env map[string]string) {
	t.Helper()
	dir := t.TempDir()
	var list []string
	for k, v := range env {
		if strings.HasPrefix(v, "/") && (strings.HasSuffix(k, "_FILE") || strings.HasSuffix(k, "GOOGLE_APPLICATION_CREDENTIALS")) {
			f := filepath.Join(dir, strings.NewReplacer("/", "_").Replace(v))
			// One secret per variable: ADMIN_TOKEN must differ from
			// INGEST_TOKEN.
			content := "chartcheck-" + strings.ToLower(k) + "-0123456789abcdef\n"
			if strings.HasSuffix(k, "CA_FILE") || strings.HasSuffix(k, "CERT_FILE") || strings.HasSuffix(k, "KEY_FILE") {
				// Certificates and keys are loaded by the configuration:
				// one file holding a key and its certificate serves as
				// any of them (a CA, a client pair, an assertion key).
				content = keyAndCertificate(t)
			}
			if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			v = f
		}
		if k == "NATS_URL" {
			v = "nats://127.0.0.1:1"
		}
		list = append(list, k+"="+v)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(commandBinaries(t), command))
	cmd.Env = list
	var out bytes.Buffer
	pr, pw := io.Pipe()
	// One writer for both: os/exec then copies stdout and stderr to it
	// from one goroutine, not two writing out at once.
	w := io.MultiWriter(&out, pw)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "cannot reach NATS") {
				waiting <- true
				_ = cmd.Process.Signal(syscall.SIGTERM)
				_, _ = io.Copy(io.Discard, pr)
				return
			}
		}
		waiting <- false
	}()
	err := cmd.Wait()
	_ = pw.Close()
	waited := <-waiting
	var exit *exec.ExitError
	exited1 := errors.As(err, &exit) && exit.ExitCode() == 1
	if waited && err != nil || !waited && !exited1 || strings.Contains(out.String(), "invalid configuration") {
		t.Errorf("%s with the rendered environment: %v, want its configuration loaded and NATS unreachable (waited for and stopped, exit status 0; or exit status 1):\n%s", command, err, out.String())
	}
}

func readCommandVars(dir string) (map[string]commandVarSet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := map[string]commandVarSet{}
	for _, cmd := range []string{"ingest", "forwarder"} {
		var stderr bytes.Buffer
		h := exec.CommandContext(ctx, filepath.Join(dir, cmd), "-h")
		h.Env = []string{} // -h reads nothing, and must not see this machine's variables
		h.Stderr = &stderr
		if err := h.Run(); err != nil {
			return nil, fmt.Errorf("%s -h: %w\n%s", cmd, err, stderr.String())
		}
		set, err := parseUsage(stderr.String())
		if err != nil {
			return nil, fmt.Errorf("%s -h: %w", cmd, err)
		}
		out[cmd] = set
	}
	return out, nil
}

// fileVariant finds "(or NAME_FILE: a file holding it)" in a description.
var fileVariant = regexp.MustCompile(`\(or ([A-Z0-9_<>]+_FILE): a file holding it\)`)

// parseUsage reads config.Usage's table: a header line starting with
// VARIABLE, then one variable a line, up to a blank line.
func parseUsage(s string) (commandVarSet, error) {
	set := commandVarSet{names: map[string]bool{}}
	add := func(name string) {
		if strings.Contains(name, "<NAME>") {
			set.patterns = append(set.patterns, regexp.MustCompile("^"+strings.ReplaceAll(regexp.QuoteMeta(name), "<NAME>", "[A-Z0-9_]+")+"$"))
			return
		}
		set.names[name] = true
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	inTable := false
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && f[0] == "VARIABLE":
			inTable = true
		case inTable && len(f) == 0:
			// The table ends at a blank line (forwarder -h lists its
			// commands after it).
			inTable = false
		case inTable:
			add(f[0])
			for _, m := range fileVariant.FindAllStringSubmatch(line, -1) {
				add(m[1])
			}
		}
	}
	if len(set.names) < 10 {
		return set, fmt.Errorf("only %d variables found: the usage format changed?\n%s", len(set.names), s)
	}
	return set, nil
}

// keyAndCertificate is an RSA private key and its self-signed
// certificate, in PEM: made once.
func keyAndCertificate(t *testing.T) string {
	t.Helper()
	content, err := keyAndCertificatePEM()
	if err != nil {
		t.Fatal(err)
	}
	return content
}

var keyAndCertificatePEM = sync.OnceValues(func() (string, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "chartcheck"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return "", err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})) +
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
})
