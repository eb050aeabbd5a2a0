// Package testbrowser drives a real headless Chromium (Debian's chromium
// package) from tests with chromedp, and saves screenshots as test
// artifacts.
package testbrowser

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/stowline/stowline/internal/testharness"
)

// ArtifactsEnv names the directory screenshots are saved to; by default
// $TMPDIR/stowline-artifacts, which outlives the test.
const ArtifactsEnv = "STOWLINE_ARTIFACTS_DIR"

// Start launches headless Chromium with a fresh profile for the test and
// returns the context of its first tab; the browser stops at cleanup.
// Chromium missing skips the test, or fails it in CI.
func Start(t testing.TB) context.Context {
	t.Helper()
	path := testharness.RequireBinary(t, "chromium")
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// The first action starts the browser and binds it to the context it
	// runs on: it must be ctx itself, not a shorter-lived child.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("testbrowser: start %s: %v", path, err)
	}
	return ctx
}

// BasicAuth makes every later request of the tab carry HTTP basic auth.
func BasicAuth(t testing.TB, ctx context.Context, user, password string) {
	t.Helper()
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatalf("testbrowser: enable network: %v", err)
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
		Headers: network.Headers{"Authorization": auth},
	}); err != nil {
		t.Fatalf("testbrowser: set headers: %v", err)
	}
}

// Screenshot saves a PNG of the whole page as name in the artifacts
// directory, logs its path and returns it.
func Screenshot(t testing.TB, ctx context.Context, name string) string {
	t.Helper()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("testbrowser: screenshot: %v", err)
	}
	dir := os.Getenv(ArtifactsEnv)
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "stowline-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("testbrowser: %v", err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatalf("testbrowser: %v", err)
	}
	t.Logf("screenshot: %s", path)
	return path
}
