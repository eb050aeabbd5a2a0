package testharness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DicomWebPlugin is where Debian's orthanc-dicomweb package installs the
// DICOMweb plugin (under a Release's Root: Release.DicomWebPlugin).
const DicomWebPlugin = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

// Defaults for zero OrthancOptions fields.
const (
	DefaultOrthancName  = "stowline-test"
	DefaultOrthancAET   = "ORTHANC"
	DefaultStableAge    = 2
	DefaultStartTimeout = 30 * time.Second
)

// stopGrace is how long Orthanc may take to shut down after SIGTERM
// (it finishes running jobs and unloads plugins) before it is killed.
const stopGrace = 15 * time.Second

// OrthancOptions configures a test Orthanc. Zero fields get defaults.
type OrthancOptions struct {
	// Name is Orthanc's "Name"; AET its DICOM AE title.
	Name, AET string
	// LuaScripts are paths of Lua scripts to load.
	LuaScripts []string
	// DicomWeb loads the DICOMweb plugin (root /dicom-web/).
	DicomWeb bool
	// StableAge is in seconds; 0 means DefaultStableAge (Orthanc's own
	// default of 60 s is too slow for tests).
	StableAge int
	// Username and Password turn HTTP basic authentication on.
	Username, Password string
	// Extra is merged into the top level of the configuration, maps
	// recursively, Extra winning: e.g. "DicomWeb": {"Servers": {...}}
	// keeps Enable and Root.
	Extra map[string]any
	// ConfigFiles are more configuration files, by name, written beside
	// the harness's own in a directory that Orthanc is given, as Debian's
	// package gives it /etc/orthanc/: Orthanc refuses a key two of them
	// define.
	ConfigFiles map[string]string
	// Env holds extra KEY=VALUE variables; Orthanc expands ${KEY} in its
	// configuration.
	Env []string
	// Verbose starts Orthanc with --verbose.
	Verbose bool
	// StartTimeout bounds waiting for GET /system; 0 means 30 s.
	StartTimeout time.Duration
	// Release is the Orthanc release to run; the zero Release means the
	// first of ReleasesEnv (by default the host's).
	Release Release
}

// Orthanc is a running (or stopped) Orthanc server with its own storage,
// ports and log. Stop and Start restart it on the same storage and ports.
type Orthanc struct {
	Name, URL, AET      string
	Release             Release
	HTTPPort, DicomPort int
	// Dir holds the configuration, storage, index and log.
	Dir                string
	Username, Password string
	ConfigPath         string
	LogPath            string

	opts   OrthancOptions
	client *http.Client

	mu   sync.Mutex
	proc *process // nil while stopped
}

type process struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error // set before done is closed
}

// StartOrthanc starts an Orthanc for the test on free loopback ports with
// storage in a temporary directory. It is stopped when the test ends; if
// the test failed, the tail of Orthanc's log is logged first.
func StartOrthanc(t testing.TB, opts OrthancOptions) *Orthanc {
	t.Helper()
	rel, err := opts.release()
	if err != nil {
		t.Fatal(err)
	}
	opts.Release = rel
	if _, err := rel.version(); err != nil {
		missing(t, err)
	}
	if opts.DicomWeb {
		requireFile(t, opts.Release.DicomWebPlugin())
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout(opts)*3)
	defer cancel()
	o, err := LaunchOrthanc(ctx, dir, opts)
	if err != nil {
		t.Fatalf("start orthanc %s: %v", opts.Release.Name, err)
	}
	t.Cleanup(func() {
		err := o.Close()
		if t.Failed() {
			t.Logf("orthanc %q log tail (%s):\n%s", o.Name, o.LogPath, o.LogTail(60))
		}
		if err != nil {
			t.Errorf("stop orthanc %q: %v", o.Name, err)
		}
	})
	return o
}

// release is opts.Release, or the default release for the zero one.
func (opts OrthancOptions) release() (Release, error) {
	if opts.Release != (Release{}) {
		return opts.Release, nil
	}
	return defaultRelease()
}

func startTimeout(opts OrthancOptions) time.Duration {
	if opts.StartTimeout > 0 {
		return opts.StartTimeout
	}
	return DefaultStartTimeout
}

// LaunchOrthanc is StartOrthanc for programs that are not tests: it writes
// the configuration into dir (which the caller owns and removes) and starts
// Orthanc. Call Close to stop it.
func LaunchOrthanc(ctx context.Context, dir string, opts OrthancOptions) (*Orthanc, error) {
	if opts.Name == "" {
		opts.Name = DefaultOrthancName
	}
	if opts.AET == "" {
		opts.AET = DefaultOrthancAET
	}
	if opts.StableAge == 0 {
		opts.StableAge = DefaultStableAge
	}
	if opts.StableAge < 0 {
		return nil, fmt.Errorf("testharness: StableAge %d is negative", opts.StableAge)
	}
	if len(opts.AET) > 16 {
		return nil, fmt.Errorf("testharness: AET %q is longer than 16 characters", opts.AET)
	}
	if (opts.Username == "") != (opts.Password == "") {
		return nil, errors.New("testharness: set both Username and Password, or neither")
	}
	for _, k := range []string{"Name", "DicomAet", "HttpPort", "DicomPort", "StorageDirectory", "IndexDirectory"} {
		// The harness owns these: it finds its Orthanc by name and ports.
		if _, ok := opts.Extra[k]; ok {
			return nil, fmt.Errorf("testharness: Extra must not set %q: use OrthancOptions (Name, AET) or leave it to the harness", k)
		}
	}
	rel, err := opts.release()
	if err != nil {
		return nil, err
	}
	opts.Release = rel
	if _, err := rel.version(); err != nil {
		return nil, err
	}
	if opts.DicomWeb {
		if p := opts.Release.DicomWebPlugin(); !fileExists(p) {
			return nil, fmt.Errorf("testharness: DICOMweb plugin of Orthanc %s %s: %w", opts.Release.Name, p, ErrMissing)
		}
	}
	for _, sub := range []string{"storage", "index", "conf"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, err
		}
	}
	configPath := filepath.Join(dir, "orthanc.json")
	if len(opts.ConfigFiles) > 0 {
		configPath = filepath.Join(dir, "conf", "orthanc.json")
		for name, text := range opts.ConfigFiles {
			if name != filepath.Base(name) || name == "orthanc.json" || filepath.Ext(name) != ".json" {
				return nil, fmt.Errorf("testharness: ConfigFiles: %q is not a .json file name other than orthanc.json", name)
			}
			if err := os.WriteFile(filepath.Join(dir, "conf", name), []byte(text), 0o600); err != nil {
				return nil, err
			}
		}
	}
	o := &Orthanc{
		Name:       opts.Name,
		AET:        opts.AET,
		Release:    opts.Release,
		Dir:        dir,
		Username:   opts.Username,
		Password:   opts.Password,
		ConfigPath: configPath,
		LogPath:    filepath.Join(dir, "orthanc.log"),
		opts:       opts,
		client:     &http.Client{Timeout: 2 * time.Minute, Transport: closingBeforeOrthanc()},
	}
	// A free port can be taken between probing and Orthanc's bind (other
	// tests run in parallel): try again with new ports.
	for attempt := 0; attempt < 3; attempt++ {
		if err = o.pickPorts(); err != nil {
			return nil, err
		}
		if err = o.writeConfig(); err != nil {
			return nil, err
		}
		if err = o.start(ctx); err == nil || !errors.Is(err, errPortInUse) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return o, nil
}

// pickPorts picks the HTTP and DICOM ports. Orthanc listens on all
// interfaces, so the probe does too; pickPort never gives a port twice.
func (o *Orthanc) pickPorts() error {
	h, err := pickPort("")
	if err != nil {
		return err
	}
	d, err := pickPort("")
	if err != nil {
		return err
	}
	o.HTTPPort, o.DicomPort = h, d
	o.URL = "http://127.0.0.1:" + strconv.Itoa(h)
	return nil
}

func (o *Orthanc) config() (map[string]any, error) {
	lua := make([]string, 0, len(o.opts.LuaScripts))
	for _, s := range o.opts.LuaScripts {
		abs, err := filepath.Abs(s)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("lua script: %w", err)
		}
		lua = append(lua, abs)
	}
	plugins := []string{}
	if o.opts.DicomWeb {
		plugins = append(plugins, o.Release.DicomWebPlugin())
	}
	cfg := map[string]any{
		"Name":                  o.Name,
		"StorageDirectory":      filepath.Join(o.Dir, "storage"),
		"IndexDirectory":        filepath.Join(o.Dir, "index"),
		"HttpPort":              o.HTTPPort,
		"DicomPort":             o.DicomPort,
		"DicomAet":              o.AET,
		"RemoteAccessAllowed":   true,
		"AuthenticationEnabled": o.Username != "",
		"StableAge":             o.opts.StableAge,
		"LuaScripts":            lua,
		"Plugins":               plugins,
		// Tests send to whatever AE title they like.
		"DicomCheckCalledAet": false,
	}
	if o.Username != "" {
		cfg["RegisteredUsers"] = map[string]any{o.Username: o.Password}
	}
	if o.opts.DicomWeb {
		cfg["DicomWeb"] = map[string]any{"Enable": true, "Root": "/dicom-web/"}
	}
	return mergeConfig(cfg, o.opts.Extra), nil
}

// mergeConfig merges src into dst: nested maps are merged recursively,
// any other src value replaces dst's.
func mergeConfig(dst, src map[string]any) map[string]any {
	for k, v := range src {
		sm, sok := v.(map[string]any)
		dm, dok := dst[k].(map[string]any)
		if sok && dok {
			dst[k] = mergeConfig(dm, sm)
			continue
		}
		dst[k] = v
	}
	return dst
}

func (o *Orthanc) writeConfig() error {
	cfg, err := o.config()
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("encode orthanc config: %w", err)
	}
	return os.WriteFile(o.ConfigPath, b, 0o600)
}

var errPortInUse = errors.New("port already in use")

// start launches the process and waits until it answers GET /system and
// accepts DICOM connections.
func (o *Orthanc) start(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.proc != nil {
		return errors.New("orthanc is already running")
	}
	logf, err := os.OpenFile(o.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := []string{}
	if o.opts.Verbose {
		args = append(args, "--verbose")
	}
	if len(o.opts.ConfigFiles) > 0 {
		args = append(args, filepath.Dir(o.ConfigPath)) // every file of it
	} else {
		args = append(args, o.ConfigPath)
	}
	argv, env, err := o.Release.command(args...)
	if err != nil {
		logf.Close()
		return err
	}
	fmt.Fprintf(logf, "==== testharness: starting Orthanc %s (%s) at %s ====\n", o.Release.Name, strings.Join(argv, " "), time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = o.Dir
	// DCMTK disables Nagle's algorithm only when TCP_NODELAY is set;
	// without it every C-STORE waits ~40 ms for a delayed ACK.
	cmd.Env = append(append(append(os.Environ(), env...), "TCP_NODELAY=1"), o.opts.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = SysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", argv[0], err)
	}
	p := &process{cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	o.proc = p

	ctx, cancel := context.WithTimeout(ctx, startTimeout(o.opts))
	defer cancel()
	if err := o.waitReady(ctx, p); err != nil {
		o.stopLocked()
		if strings.Contains(o.LogTail(20), "already in use") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return fmt.Errorf("orthanc %q (http %d, dicom %d): %w\nlog tail:\n%s", o.Name, o.HTTPPort, o.DicomPort, err, o.LogTail(30))
	}
	return nil
}

func (o *Orthanc) waitReady(ctx context.Context, p *process) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			return fmt.Errorf("exited during startup: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w", ctx.Err())
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		var sys struct {
			Name      string
			HttpPort  int
			DicomPort int
		}
		err := o.do(rctx, http.MethodGet, "/system", nil, &sys)
		cancel()
		if err != nil {
			continue
		}
		// Another Orthanc (a parallel test that probed the same free port)
		// may answer on our port while ours fails to bind: only our own
		// answer counts.
		if sys.Name != o.Name || sys.HttpPort != o.HTTPPort || sys.DicomPort != o.DicomPort {
			continue
		}
		// The DICOM server starts before the HTTP server; check anyway.
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(o.DicomPort)), time.Second)
		if err != nil {
			continue
		}
		c.Close()
		return nil
	}
}

// Start restarts a stopped Orthanc on the same storage, configuration and
// ports.
func (o *Orthanc) Start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*startTimeout(o.opts))
	defer cancel()
	if err := o.Restart(ctx); err != nil {
		t.Fatalf("restart orthanc: %v", err)
	}
}

// Restart is Start for programs that are not tests.
func (o *Orthanc) Restart(ctx context.Context) error {
	var err error
	// Right after a stop the ports can still be held briefly (sockets in
	// TIME_WAIT): retry a few times.
	for attempt := 0; attempt < 10; attempt++ {
		if err = o.start(ctx); err == nil || !errors.Is(err, errPortInUse) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
	return err
}

// ChangePassword restarts Orthanc with password as its user's, as an
// administrator rotating it does.
func (o *Orthanc) ChangePassword(t testing.TB, password string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*startTimeout(o.opts))
	defer cancel()
	if err := o.RestartWithPassword(ctx, password); err != nil {
		t.Fatal(err)
	}
}

// RestartWithPassword is ChangePassword for goroutines other than the
// test's.
func (o *Orthanc) RestartWithPassword(ctx context.Context, password string) error {
	if o.Username == "" {
		return errors.New("change password: this Orthanc has no user")
	}
	if err := o.Close(); err != nil {
		return err
	}
	o.Password = password
	if err := o.writeConfig(); err != nil {
		return err
	}
	return o.Restart(ctx)
}

// Rename restarts Orthanc with name as its "Name", as an administrator
// renaming it does (Orthanc reads its configuration only at start).
func (o *Orthanc) Rename(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*startTimeout(o.opts))
	defer cancel()
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	o.Name = name
	if err := o.writeConfig(); err != nil {
		t.Fatal(err)
	}
	if err := o.Restart(ctx); err != nil {
		t.Fatalf("restart orthanc renamed %s: %v", name, err)
	}
}

// Stop stops Orthanc (SIGTERM, then SIGKILL after 15 s) and keeps its
// storage for Start.
func (o *Orthanc) Stop(t testing.TB) {
	t.Helper()
	if err := o.Close(); err != nil {
		t.Fatalf("stop orthanc: %v", err)
	}
}

// Close stops Orthanc if it runs. It keeps Dir.
func (o *Orthanc) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.stopLocked()
}

func (o *Orthanc) stopLocked() error {
	p := o.proc
	if p == nil {
		return nil
	}
	o.proc = nil
	defer p.log.Close()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("orthanc %q did not stop within %v after SIGTERM and was killed", o.Name, stopGrace)
	}
	var exitErr *exec.ExitError
	if p.err != nil && !(errors.As(p.err, &exitErr) && exitErr.ExitCode() <= 0) {
		// A non-zero exit after SIGTERM is worth knowing; -1 means killed
		// by the signal itself, which is fine.
		return fmt.Errorf("orthanc %q exited: %w", o.Name, p.err)
	}
	return nil
}

// Running reports whether the process is up (it may still be starting).
func (o *Orthanc) Running() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.proc == nil {
		return false
	}
	select {
	case <-o.proc.done:
		return false
	default:
		return true
	}
}

// LogTail returns the last n lines of Orthanc's log.
func (o *Orthanc) LogTail(n int) string {
	f, err := os.Open(o.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	const maxTail = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > maxTail {
		_, _ = f.Seek(-maxTail, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// do sends a request to Orthanc's REST API and decodes a JSON answer into
// out if out is non-nil. path may hold a query string.
// closingBeforeOrthanc is a transport whose idle connections close
// before Orthanc closes them (CivetWeb: 1 s idle, "Keep-Alive:
// timeout=1"): a POST or DELETE sent on one as Orthanc closes it fails
// with EOF, and net/http sends only a GET again by itself.
func closingBeforeOrthanc() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.IdleConnTimeout = 300 * time.Millisecond
	return t
}

func (o *Orthanc) do(ctx context.Context, method, path string, body io.Reader, out any) error {
	resp, err := o.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode JSON: %w", method, path, err)
	}
	return nil
}

// send sends a request to Orthanc's REST API with its credentials and
// returns a 2xx answer; any other is an error naming the method, path,
// status and the start of the body.
func (o *Orthanc) send(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, o.URL+path, body)
	if err != nil {
		return nil, err
	}
	if o.Username != "" {
		req.SetBasicAuth(o.Username, o.Password)
	}
	resp, err := o.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return nil, &httpError{Method: method, Path: path, Status: resp.StatusCode, Body: string(bytes.TrimSpace(msg))}
	}
	return resp, nil
}

// Bytes sends a request as Do does and returns the answer's body as it
// is: an instance's file, a Lua script's output.
func (o *Orthanc) Bytes(ctx context.Context, method, path string, body io.Reader) ([]byte, error) {
	resp, err := o.send(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: read the answer: %w", method, path, err)
	}
	return b, nil
}

type httpError struct {
	Method, Path string
	Status       int
	Body         string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.Path, e.Status, e.Body)
}
