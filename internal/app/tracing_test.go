package app

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/repeatlog"
	"github.com/stowline/stowline/internal/testharness"
	"github.com/stowline/stowline/internal/testpki"
	"github.com/stowline/stowline/internal/tracing"
)

func TestTracingEnabled(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want bool
	}{
		{nil, false},
		// compose passes ${OTEL_EXPORTER_OTLP_ENDPOINT:-}: empty is off.
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_SDK_DISABLED": "true"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_SDK_DISABLED": "false"}, true},
		// The OpenTelemetry specification reads its booleans without case:
		// an operator's TRUE turns tracing off as true does.
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_SDK_DISABLED": "TRUE"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces", "OTEL_SDK_DISABLED": " True "}, false},
	} {
		if got := tracingEnabled(func(k string) string { return tc.env[k] }); got != tc.want {
			t.Errorf("%v: enabled = %v, want %v", tc.env, got, tc.want)
		}
	}
}

// TestStartTracing: off, the provider is nil (every span a no-op); a
// protocol other than OTLP/HTTP is refused at startup, naming the
// variable; on, it flushes at stop.
func TestStartTracing(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	tp, stop, err := startTracing(context.Background(), "stowline-test", "stowline-test", log)
	if err != nil || tp != nil {
		t.Fatalf("off: provider %v, err %v; want nil, nil", tp, err)
	}
	stop()

	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	if _, _, err := startTracing(context.Background(), "stowline-test", "stowline-test", log); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL") {
		t.Errorf("grpc: err %v, want a usage error naming OTEL_EXPORTER_OTLP_PROTOCOL", err)
	}

	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	// A malformed headers variable: the SDK would print it, credential
	// included, and export without it.
	for name, headers := range map[string]string{
		"OTEL_EXPORTER_OTLP_HEADERS":        "Authorization: Bearer SUPERSECRETTOKEN",
		"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-tenant=a,Authorization=Bearer SUPERSECRET%zz",
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, headers)
			_, _, err := startTracing(context.Background(), "stowline-test", "stowline-test", log)
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), name) || strings.Contains(err.Error(), "SUPERSECRET") {
				t.Errorf("err %v, want a usage error naming %s and not the value", err, name)
			}
		})
	}
	// A sampler the SDK does not know, or a ratio it cannot use: it would
	// trace every study while the log names the sampler asked for.
	for _, tc := range []struct{ sampler, arg, name string }{
		{"parentbased_traceidration", "", "OTEL_TRACES_SAMPLER"},
		{"xray", "", "OTEL_TRACES_SAMPLER"},
		{"traceidratio", "10%", "OTEL_TRACES_SAMPLER_ARG"},
		{"parentbased_traceidratio", "1.5", "OTEL_TRACES_SAMPLER_ARG"},
		{"traceidratio", "NaN", "OTEL_TRACES_SAMPLER_ARG"},
	} {
		t.Setenv("OTEL_TRACES_SAMPLER", tc.sampler)
		t.Setenv("OTEL_TRACES_SAMPLER_ARG", tc.arg)
		if _, _, err := startTracing(context.Background(), "stowline-test", "stowline-test", log); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("sampler %q, arg %q: err %v, want a usage error naming %s", tc.sampler, tc.arg, err, tc.name)
		}
	}
	// The SDK takes either case and spaces around the values.
	t.Setenv("OTEL_TRACES_SAMPLER", " ParentBased_TraceIdRatio")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "1 ")
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20token,x-tenant=a")
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "200")
	tp, stop, err = startTracing(context.Background(), "stowline-test", "stowline-test", log)
	if err != nil || tp == nil {
		t.Fatalf("on: provider %v, err %v", tp, err)
	}
	_, span := tp.Tracer("test").Start(context.Background(), "span")
	if !span.IsRecording() {
		t.Error("on: the default sampler did not record a root span")
	}
	span.End()
	stop() // the export fails (nothing listens): stop still returns
}

// TestStartTracingRefusesBadEndpoints: an endpoint the exporter cannot
// use, a CA file it cannot read, or a client certificate and key it
// cannot pair, stops the start naming the variable and never its
// credentials. The SDK took "otel-collector:4318" for a
// URL of scheme otel-collector and no host (every export failed), printed
// a malformed one on stderr and exported to https://localhost:4318, and
// trusted the system's CAs instead of an unreadable file; it connected
// without a client certificate it could not load.
func TestStartTracingRefusesBadEndpoints(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ca := testpki.NewCA(t, "otlp")
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	const endpoint, traces = "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	const cert, tracesCert = "OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"
	const clientCert, clientKey = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY"
	const tracesClientCert, tracesClientKey = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"
	_, certFile, keyFile := ca.Issue(t, "stowline", false)
	_, otherCert, _ := ca.Issue(t, "other", false)
	for _, tc := range []struct {
		name string
		env  map[string]string
		bad  string // the variable named; "" for none
	}{
		{"no scheme", map[string]string{endpoint: "otel-collector:4318"}, endpoint},
		{"no scheme, traces", map[string]string{endpoint: "http://collector:4318", traces: "collector:4318/v1/traces"}, traces},
		{"an IP without a scheme", map[string]string{endpoint: "10.0.0.7:4318"}, endpoint},
		{"malformed, with credentials", map[string]string{endpoint: "http://SECRETUSER:SECRETPASS@collector:43 18"}, endpoint},
		{"malformed, overridden by a good traces URL", map[string]string{endpoint: "http://SECRETUSER:SECRETPASS@%zz", traces: "http://collector:4318/v1/traces"}, endpoint},
		{"grpc scheme", map[string]string{endpoint: "grpc://collector:4317"}, endpoint},
		{"no host", map[string]string{endpoint: "http:///v1"}, endpoint},
		{"a port without a host", map[string]string{endpoint: "http://:4318"}, endpoint},
		{"unreadable CA", map[string]string{endpoint: "https://collector:4318", cert: filepath.Join(t.TempDir(), "missing.pem")}, cert},
		{"a CA file without a certificate", map[string]string{endpoint: "https://collector:4318", tracesCert: notPEM}, tracesCert},
		{"a client certificate without its key", map[string]string{endpoint: "https://collector:4318", clientCert: certFile}, clientCert},
		{"a client key without its certificate", map[string]string{endpoint: "https://collector:4318", tracesClientKey: keyFile}, tracesClientKey},
		{"an unreadable client key", map[string]string{endpoint: "https://collector:4318", clientCert: certFile, clientKey: filepath.Join(t.TempDir(), "missing.key")}, clientKey},
		{"a key of another certificate", map[string]string{endpoint: "https://collector:4318", tracesClientCert: otherCert, tracesClientKey: keyFile}, tracesClientCert},
		// The exporter keeps only scheme, host and path.
		{"credentials in the URL", map[string]string{endpoint: "https://SECRETUSER:SECRETPASS@collector:4318/otlp"}, endpoint},
		{"a key in the query", map[string]string{endpoint: "https://collector:4318", traces: "https://collector:4318/v1/traces?api-key=SECRETKEY"}, traces},
		{"an empty query and a fragment carry nothing", map[string]string{endpoint: "https://collector:4318/otlp?#x"}, ""},
		// TLS on one side only: the exporter refused to start, naming nothing.
		{"a CA with an http endpoint", map[string]string{endpoint: "http://collector:4318", cert: ca.CAFile}, cert},
		{"a client certificate with an http traces endpoint", map[string]string{endpoint: "https://collector:4318", traces: "http://collector:4318/v1/traces",
			tracesClientCert: certFile, tracesClientKey: keyFile}, tracesClientCert},
		{"good", map[string]string{endpoint: " https://collector:4318/otlp ", traces: "HTTPS://collector:4318/v1/traces", cert: ca.CAFile, tracesCert: ca.CAFile,
			clientCert: certFile, clientKey: keyFile, tracesClientCert: certFile, tracesClientKey: keyFile}, ""},
		{"good, plain", map[string]string{endpoint: "http://collector:4318/otlp"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, name := range []string{endpoint, traces, cert, tracesCert, clientCert, clientKey, tracesClientCert, tracesClientKey} {
				t.Setenv(name, tc.env[name])
			}
			t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "200")
			tp, stop, err := startTracing(context.Background(), "stowline-test", "stowline-test", log)
			if tc.bad == "" {
				if err != nil || tp == nil {
					t.Fatalf("provider %v, err %v; want a provider", tp, err)
				}
				stop()
				return
			}
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tc.bad) || strings.Contains(err.Error(), "SECRET") {
				t.Errorf("err %v, want a usage error naming %s, without the credentials", err, tc.bad)
			}
		})
	}
}

// TestCheckTracingEnv: a tracing variable the SDK or its exporter would
// misread is refused, naming it. A negative OTEL_BSP_MAX_QUEUE_SIZE or
// OTEL_BSP_MAX_EXPORT_BATCH_SIZE panicked in NewBatchSpanProcessor and a
// huge one ran out of memory; OTEL_EXPORTER_OTLP_TIMEOUT=abc and a pair
// without '=' in OTEL_RESOURCE_ATTRIBUTES printed a line on stderr and
// started with the defaults; OTEL_EXPORTER_OTLP_COMPRESSION=zstd
// exported uncompressed without a word.
func TestCheckTracingEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		bad  string // the variable named; "" for none
	}{
		{"nothing set", nil, ""},
		{"the defaults written out", map[string]string{"OTEL_BSP_SCHEDULE_DELAY": "5000", "OTEL_BSP_EXPORT_TIMEOUT": "30000",
			"OTEL_BSP_MAX_QUEUE_SIZE": "2048", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "512", "OTEL_EXPORTER_OTLP_TIMEOUT": "10000",
			"OTEL_EXPORTER_OTLP_COMPRESSION": "none", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"}, ""},
		{"the ceilings", map[string]string{"OTEL_BSP_SCHEDULE_DELAY": "3600000", "OTEL_BSP_EXPORT_TIMEOUT": "3600000",
			"OTEL_BSP_MAX_QUEUE_SIZE": "32768", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "32768", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3600000"}, ""},
		{"insecure as the scheme says", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_INSECURE": "TRUE"}, ""},
		{"secure as the scheme says", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": " false"}, ""},
		{"the traces flag wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			"OTEL_EXPORTER_OTLP_INSECURE": "false", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"}, ""},
		{"the traces endpoint's scheme wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://vendor.example/v1/traces", "OTEL_EXPORTER_OTLP_INSECURE": "false"}, ""},
		{"a ratio", map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, ""},
		// Read as false, which https agrees with.
		{"insecure 0 with https", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318", "OTEL_EXPORTER_OTLP_INSECURE": "0"}, ""},
		{"no limits", map[string]string{"OTEL_BSP_EXPORT_TIMEOUT": "0", "OTEL_EXPORTER_OTLP_TIMEOUT": "0"}, ""},
		{"the smallest", map[string]string{"OTEL_BSP_SCHEDULE_DELAY": "1", "OTEL_BSP_MAX_QUEUE_SIZE": "1", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1"}, ""},
		{"a queue smaller than the default batch", map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "100"}, ""},
		{"the exporter's values trimmed", map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": " 200 ", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": " gzip",
			"OTEL_RESOURCE_ATTRIBUTES": " service.namespace = imaging , team=pacs%20ops "}, ""},

		{"negative queue", map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "-5"}, "OTEL_BSP_MAX_QUEUE_SIZE"},
		{"zero queue", map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "OTEL_BSP_MAX_QUEUE_SIZE"},
		{"huge queue", map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "99999999999"}, "OTEL_BSP_MAX_QUEUE_SIZE"},
		// About 1.3 GB of spans while the collector hangs.
		{"a queue of a million", map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "1000000"}, "OTEL_BSP_MAX_QUEUE_SIZE"},
		{"a batch of a million", map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "32768", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1000000"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"},
		// Exports spoke TLS to a plain collector, or sent the headers in clear text.
		{"insecure false, the default written out, with http", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			"OTEL_EXPORTER_OTLP_INSECURE": "false"}, "OTEL_EXPORTER_OTLP_INSECURE"},
		{"insecure 1, read as false", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			"OTEL_EXPORTER_OTLP_INSECURE": "1"}, "OTEL_EXPORTER_OTLP_INSECURE"},
		{"insecure true with https", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://vendor.example",
			"OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"}, "OTEL_EXPORTER_OTLP_TRACES_INSECURE"},
		{"traces insecure false over a right insecure", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			"OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false"}, "OTEL_EXPORTER_OTLP_TRACES_INSECURE"},
		// Every study traced all the same.
		{"a ratio with the default sampler", map[string]string{"OTEL_TRACES_SAMPLER_ARG": "0.1"}, "OTEL_TRACES_SAMPLER_ARG"},
		{"a ratio with always_on", map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_always_on", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, "OTEL_TRACES_SAMPLER_ARG"},
		{"negative batch", map[string]string{"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "-1"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"},
		{"batch over the default queue", map[string]string{"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"},
		{"batch over the queue", map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "200"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"},
		{"schedule delay 0 spins", map[string]string{"OTEL_BSP_SCHEDULE_DELAY": "0"}, "OTEL_BSP_SCHEDULE_DELAY"},
		{"schedule delay with a unit", map[string]string{"OTEL_BSP_SCHEDULE_DELAY": "5s"}, "OTEL_BSP_SCHEDULE_DELAY"},
		{"schedule delay with a space the SDK does not trim", map[string]string{"OTEL_BSP_SCHEDULE_DELAY": " 100"}, "OTEL_BSP_SCHEDULE_DELAY"},
		{"schedule delay over an hour", map[string]string{"OTEL_BSP_SCHEDULE_DELAY": "3600001"}, "OTEL_BSP_SCHEDULE_DELAY"},
		{"negative export timeout", map[string]string{"OTEL_BSP_EXPORT_TIMEOUT": "-1"}, "OTEL_BSP_EXPORT_TIMEOUT"},
		{"export timeout overflowing a duration", map[string]string{"OTEL_BSP_EXPORT_TIMEOUT": "9999999999999"}, "OTEL_BSP_EXPORT_TIMEOUT"},
		{"OTLP timeout not a number", map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "abc"}, "OTEL_EXPORTER_OTLP_TIMEOUT"},
		{"OTLP timeout in seconds", map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"}, "OTEL_EXPORTER_OTLP_TIMEOUT"},
		{"negative traces timeout", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "-10"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"},
		{"zstd", map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"},
		{"GZIP, read as none", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "GZIP"}, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"},
		{"a resource pair without '='", map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment"}, "OTEL_RESOURCE_ATTRIBUTES"},
		{"a trailing comma", map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "a=b,"}, "OTEL_RESOURCE_ATTRIBUTES"},
		{"a resource pair without a key", map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "a=b, =c"}, "OTEL_RESOURCE_ATTRIBUTES"},
		{"a resource value not URL-encoded", map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "team=100%"}, "OTEL_RESOURCE_ATTRIBUTES"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkTracingEnv(func(k string) string { return tc.env[k] })
			if tc.bad == "" {
				if err != nil {
					t.Fatalf("err %v, want none", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("err %v, want one naming %s", err, tc.bad)
			}
		})
	}
}

// TestStartTracingRefusesAsConfiguration: a bad tracing variable stops
// the start as other bad configuration does: exit status 2, the
// program's "invalid configuration", every bad variable named and no
// header's value. They printed without the prefix, one at a time.
func TestStartTracingRefusesAsConfiguration(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "-5")
	if tp, stop, err := startTracing(t.Context(), "forwarder", "stowline-forwarder", log); err != nil || tp != nil {
		t.Fatalf("tracing off: provider %v, err %v; want nil, nil: the SDK is not started, its variables not read", tp, err)
	} else {
		stop()
	}

	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization: Bearer SUPERSECRET")
	t.Setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")
	_, _, err := startTracing(t.Context(), "forwarder", "stowline-forwarder", log)
	var stderr strings.Builder
	if code := ExitCode("forwarder", err, &stderr); code != 2 {
		t.Errorf("exit status %d, want 2 (err %v)", code, err)
	}
	out := stderr.String()
	if !strings.HasPrefix(out, "forwarder: invalid configuration:\n") || strings.Contains(out, "SUPERSECRET") {
		t.Errorf("stderr %q: want it to start with \"forwarder: invalid configuration:\", without the header's value", out)
	}
	for _, name := range []string{"OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_COMPRESSION"} {
		if !strings.Contains(out, name) {
			t.Errorf("stderr %q does not name %s", out, name)
		}
	}
}

// TestTracingVarsAreDocumented: every OTEL_* variable the compose test
// accepts is in docs/tracing.md, which the README links.
func TestTracingVarsAreDocumented(t *testing.T) {
	docs, err := os.ReadFile("../../docs/tracing.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range TracingVars {
		if !strings.Contains(string(docs), "`"+v+"`") {
			t.Errorf("docs/tracing.md does not document %s", v)
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "(docs/tracing.md)") {
		t.Error("README.md does not link docs/tracing.md")
	}
}

// spanStart finds a span started with a literal name in Go source:
// tracer.Start(ctx, "name", ...) or the forwarder's f.startSpan.
var spanStart = regexp.MustCompile(`(?:startSpan|\.Start)\([^"\n]*, "([^"]+)"`)

// TestSpanNamesAreDocumented: every span the code starts with a literal
// name is in docs/tracing.md (its tree or its attribute table), so that
// a new span does not go undocumented ("verify study (QIDO-RS)" did).
func TestSpanNamesAreDocumented(t *testing.T) {
	docs, err := os.ReadFile("../../docs/tracing.md")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	err = filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && path != "../.." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata"):
			return filepath.SkipDir
		case d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go"):
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range spanStart.FindAllSubmatch(src, -1) {
			names = append(names, string(m[1]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The forwarder's spans at least: a pattern that stopped matching
	// would pass with nothing checked.
	for _, want := range []string{"forward study", "orthanc list instances", "verify study (QIDO-RS)", "token fetch", "webhook event"} {
		if !slices.Contains(names, want) {
			t.Errorf("span %q not found in the source (found %q): the pattern is out of date", want, names)
		}
	}
	for _, name := range names {
		if !strings.Contains(string(docs), name) {
			t.Errorf("docs/tracing.md does not document the span %q", name)
		}
	}
}

// An audit's publish span names the dedupe ID it published with, as the
// webhook's and the reconciler's do: the audit's own IDs
// (…/audit/<destination>) are what tells its copies apart.
func TestPublishTracedNamesTheMessageID(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "src",
		OrthancStudyID: "6b9e19d9-62094390-5f9ddb01-4a191ae7-9766b715", StudyInstanceUID: "1.2.3", LastUpdate: "20261204T055500"}
	msgID := ev.MsgID() + "/audit/ai"
	if _, err := publishTraced(context.Background(), tp, "audit enqueue", "audit", "ai", ev, msgID, func(context.Context) (*jetstream.PubAck, error) {
		return &jetstream.PubAck{Stream: "STOWLINE_EVENTS", Sequence: 7}, nil
	}); err != nil {
		t.Fatal(err)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans ended, want 1", len(spans))
	}
	attrs := map[attribute.Key]string{}
	for _, a := range spans[0].Attributes() {
		attrs[a.Key] = a.Value.String()
	}
	for k, want := range map[attribute.Key]string{tracing.MessageID: msgID, tracing.Origin: "audit", tracing.Destination: "ai", tracing.StreamSeq: "7"} {
		if attrs[k] != want {
			t.Errorf("%s = %q, want %q", k, attrs[k], want)
		}
	}
}

// failingExporter fails its exports while down is set.
type failingExporter struct {
	down atomic.Bool
}

func (e *failingExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error {
	if e.down.Load() {
		return errors.New("failed to send to http://collector:4318/v1/traces: 503 Service Unavailable")
	}
	return nil
}

func (e *failingExporter) Shutdown(context.Context) error { return nil }

// TestFailedExportsLogged: a collector that is down made the SDK print a
// plain line on stderr for every batch, outside the JSON log. The failures
// are in the JSON log instead: the first, then one a minute with the
// count, and the return once.
func TestFailedExportsLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs testharness.LogBuffer
		inner := &failingExporter{}
		inner.down.Store(true)
		e := &loggedExporter{SpanExporter: inner, log: slog.New(slog.NewJSONHandler(&logs, nil)), failures: repeatlog.Failures{Every: time.Minute}}
		spans := make([]sdktrace.ReadOnlySpan, 3)
		for range 30 { // 150 s of batches every 5 s
			if err := e.ExportSpans(t.Context(), spans); err != nil {
				t.Fatalf("ExportSpans: %v, want the failure logged, not handed to the global handler", err)
			}
			time.Sleep(5 * time.Second)
		}
		inner.down.Store(false)
		if err := e.ExportSpans(t.Context(), spans); err != nil {
			t.Fatal(err)
		}
		out := logs.String()
		if n := strings.Count(out, "tracing: spans not exported"); n != 3 {
			t.Errorf("%d warnings over 150 s of failed exports, want 3 (at 0 s, 60 s, 120 s):\n%s", n, out)
		}
		if !strings.Contains(out, `"msg":"tracing: exports resumed","failed_batches":30,"dropped_spans":90`) {
			t.Errorf("no 'resumed' line counting 30 batches and 90 spans:\n%s", out)
		}
	})
}

// TestStartTracingLogsFailedExports: the provider startTracing builds
// reports a collector's refusal in the JSON log.
func TestStartTracingLogsFailedExports(t *testing.T) {
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "tenant unknown", http.StatusBadRequest)
	}))
	t.Cleanup(collector.Close)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
	var logs testharness.LogBuffer
	tp, stop, err := startTracing(t.Context(), "stowline-test", "stowline-test", slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	_, span := tp.Tracer("test").Start(t.Context(), "span")
	span.End()
	testharness.WaitFor(t, "the failed export in the log", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), `"msg":"tracing: spans not exported, dropped"`) && strings.Contains(logs.String(), "400 Bad Request")
	})
}
