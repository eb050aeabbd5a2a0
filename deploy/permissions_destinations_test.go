package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/app"
	"github.com/stowline/stowline/internal/config"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/natsjs"
	"github.com/stowline/stowline/internal/testharness"
)

// subjects is the publish and subscribe allow (and deny) lists of a
// permissions block.
type subjects struct {
	Publish, Subscribe struct{ Allow, Deny []string }
}

// docBlock reads the ```json block after the line "<!-- marker -->" of
// docs/nats-permissions.md.
func docBlock(t *testing.T, marker string) subjects {
	t.Helper()
	doc := string(readFile(t, "docs/nats-permissions.md"))
	m := regexp.MustCompile("(?s)<!-- " + regexp.QuoteMeta(marker) + " -->\\s*```json\\n(.*?)```").FindStringSubmatch(doc)
	if m == nil {
		t.Fatalf("docs/nats-permissions.md has no block %q", marker)
	}
	var s subjects
	dec := json.NewDecoder(strings.NewReader(m[1]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("block %q: %v", marker, err)
	}
	return s
}

func (s subjects) named(name string) subjects {
	var out subjects
	for _, v := range s.Publish.Allow {
		out.Publish.Allow = append(out.Publish.Allow, strings.ReplaceAll(v, "<name>", name))
	}
	for _, v := range s.Subscribe.Allow {
		out.Subscribe.Allow = append(out.Subscribe.Allow, strings.ReplaceAll(v, "<name>", name))
	}
	for _, v := range s.Publish.Deny {
		out.Publish.Deny = append(out.Publish.Deny, strings.ReplaceAll(v, "<name>", name))
	}
	for _, v := range s.Subscribe.Deny {
		out.Subscribe.Deny = append(out.Subscribe.Deny, strings.ReplaceAll(v, "<name>", name))
	}
	return out
}

func (s subjects) plus(o subjects) subjects {
	s.Publish.Allow = append(slices.Clone(s.Publish.Allow), o.Publish.Allow...)
	s.Subscribe.Allow = append(slices.Clone(s.Subscribe.Allow), o.Subscribe.Allow...)
	s.Publish.Deny = append(slices.Clone(s.Publish.Deny), o.Publish.Deny...)
	s.Subscribe.Deny = append(slices.Clone(s.Subscribe.Deny), o.Subscribe.Deny...)
	return s
}

// without drops the allowed subjects drop matches (a deny stays).
func (s subjects) without(drop *regexp.Regexp) subjects {
	keep := func(v []string) []string {
		return slices.DeleteFunc(slices.Clone(v), drop.MatchString)
	}
	s.Publish.Allow, s.Subscribe.Allow = keep(s.Publish.Allow), keep(s.Subscribe.Allow)
	return s
}

func (s subjects) permissions() *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: s.Publish.Allow, Deny: s.Publish.Deny},
		Subscribe: &server.SubjectPermission{Allow: s.Subscribe.Allow, Deny: s.Subscribe.Deny},
	}
}

// unreadableConsumers matches a scrape's count of lane consumers that
// could not be read, when above 0.
var unreadableConsumers = regexp.MustCompile(`stowline_queue_unreadable_consumers\{[^}]*\} [1-9][0-9]*`)

// defaultOnly are the forwarder block's entries that docs/nats-permissions.md
// says a deployment without a destination named default does not use:
// everything of the consumer stowline-forwarder but its INFO (the queue
// metrics read it), and the ledger stowline_forwarded.
var defaultOnly = regexp.MustCompile(`(CONSUMER\.(CREATE|MSG\.NEXT)\.STOWLINE_EVENTS\.stowline-forwarder|\$JS\.ACK\.STOWLINE_EVENTS\.stowline-forwarder|MAX_DELIVERIES\.STOWLINE_EVENTS\.stowline-forwarder|KV_stowline_forwarded|\$KV\.stowline_forwarded\.)($|\.)`)

// TestNamedDestinationPermissions runs two real forwarders, split by
// destination (FORWARDER_DESTINATIONS), each as its own NATS user with
// exactly the permissions docs/nats-permissions.md gives for named
// destinations, on a nats-server with authorization enabled: both
// destinations' forwarders send the study and record it in their ledger,
// /readyz and /metrics answer, and the server logs no permission
// violation.
func TestNamedDestinationPermissions(t *testing.T) {
	testharness.RequireBinary(t, "Orthanc")
	base := docBlock(t, "permissions: forwarder")
	every := docBlock(t, "permissions template: forwarder, every destination")
	served := docBlock(t, "permissions template: forwarder, served destination")
	if !slices.ContainsFunc(base.Publish.Allow, defaultOnly.MatchString) {
		t.Fatal("the forwarder block has none of the default destination's entries: update defaultOnly")
	}
	base = base.without(defaultOnly)
	userPerms := func(serves string) subjects {
		return base.plus(every.named("archive")).plus(every.named("ai")).plus(served.named(serves))
	}
	const adminPass, archivePass, aiPass = "admin-nats-password-0123", "archive-nats-password-0123", "ai-nats-password-0123"

	src := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "src"})
	dest := testharness.StartOrthanc(t, testharness.OrthancOptions{Name: "dest", DicomWeb: true})

	serverLog := &testharness.LogBuffer{}
	srv, err := natsjs.StartEmbedded(context.Background(), natsjs.EmbeddedOptions{
		StoreDir: t.TempDir(), ServerName: "authz-destinations", Port: -1,
		Configure: func(o *server.Options) {
			o.Users = []*server.User{
				{Username: "admin", Password: adminPass},
				{Username: "forwarder-archive", Password: archivePass, Permissions: userPerms("archive").permissions()},
				{Username: "forwarder-ai", Password: aiPass, Permissions: userPerms("ai").permissions()},
			}
		},
	}, slog.New(slog.NewTextHandler(serverLog, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nats-server log:\n%s", serverLog.String())
		}
	})

	// Both forwarders have every destination's configuration; each serves one.
	start := func(user, pass, serves string) string {
		addr := testharness.FreeAddr(t)
		env := map[string]string{
			"NATS_URL":                           srv.ClientURL(),
			"NATS_USER":                          user,
			"NATS_PASSWORD":                      pass,
			"FORWARDER_ADDR":                     addr,
			"ORTHANC_URL":                        src.URL,
			"ORTHANC_SOURCE_NAME":                "src",
			"DESTINATIONS":                       "archive,ai",
			"DESTINATION_ARCHIVE_URL":            dest.URL + "/dicom-web",
			"DESTINATION_AI_URL":                 dest.URL + "/dicom-web",
			"DESTINATION_AI_MATCH":               "'CT' in study.modalities && size(study.sopClasses) > 0",
			"DESTINATION_AI_INSTANCE_MATCH":      "instance.modality == 'CT'",
			"FORWARDER_DESTINATIONS":             serves,
			"FORWARDER_ACK_WAIT":                 "5s",
			"LOG_LEVEL":                          "debug",
			"DESTINATION_AI_STOW_MAX_BYTES":      "8MiB",
			"DESTINATION_ARCHIVE_STOW_MAX_BYTES": "8MiB",
		}
		run := func(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) error {
			return app.Main[config.ForwarderService](ctx, "forwarder", args, getenv, environ, stdout, stderr, app.RunForwarder)
		}
		testharness.StartProgram(t, "forwarder "+serves, run, env)
		testharness.WaitHTTP(t, "http://"+addr+"/healthz", 30*time.Second)
		return addr
	}
	addrs := []string{start("forwarder-archive", archivePass, "archive"), start("forwarder-ai", aiPass, "ai")}

	// A study arrives and the ingest queues its event.
	uid := dicomgen.NewUID()
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: uid, PatientID: "DEST-PERMS", PatientName: "Synthetic^Destinations",
		Series: 1, InstancesPerSeries: 2, Rows: 32, Columns: 32,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := src.Upload(t, files...); len(res.FailedFiles()) > 0 {
		t.Fatalf("Orthanc refused %v", res.FailedFiles())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	var found []struct{ ID, Type string }
	if err := src.Do(ctx, http.MethodPost, "/tools/lookup", strings.NewReader(uid), &found); err != nil || len(found) == 0 {
		t.Fatalf("lookup study: %v %v", found, err)
	}
	var study struct{ ID, LastUpdate string }
	for _, f := range found {
		if f.Type == "Study" {
			src.GetJSON(t, "/studies/"+f.ID, &study)
		}
	}
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("admin", adminPass))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ev := &events.StudyStable{Type: events.TypeStudyStable, Version: events.Version, Source: "src",
		OrthancStudyID: study.ID, StudyInstanceUID: uid, LastUpdate: study.LastUpdate, ReceivedAt: time.Now().UTC()}
	if _, err := (natsjs.Publisher{JS: js}).Publish(ctx, ev); err != nil {
		t.Fatalf("publish: %v", err)
	}

	// Each destination's forwarder sends it and records it in its ledger.
	for _, d := range []string{"archive", "ai"} {
		for {
			kv, err := js.KeyValue(ctx, natsjs.LedgerBucketOf(d))
			if err == nil {
				var e jetstream.KeyValueEntry
				if e, err = kv.Get(ctx, "src."+study.ID); err == nil && strings.Contains(string(e.Value()), study.LastUpdate) {
					break
				}
			}
			if ctx.Err() != nil {
				t.Fatalf("destination %s: no completed forward recorded: %v", d, err)
			}
			if !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrBucketNotFound) && err != nil {
				t.Logf("destination %s: %v", d, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	var stats struct{ CountInstances int }
	dest.GetJSON(t, "/statistics", &stats)
	if stats.CountInstances != 2 {
		t.Errorf("destination Orthanc holds %d instances, want 2", stats.CountInstances)
	}
	for _, addr := range addrs {
		testharness.WaitHTTP(t, "http://"+addr+"/readyz", 10*time.Second)
		resp, err := http.Get("http://" + addr + "/metrics") // the queue metrics read JetStream
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), "stowline_jetstream_info_success 1") {
			t.Errorf("%s/metrics: the queue metrics could not read JetStream", addr)
		}
		// Each lane consumer is read by its own CONSUMER.INFO: one the
		// permissions leave out is counted here, not in the line above.
		if m := unreadableConsumers.FindString(string(body)); m != "" {
			t.Errorf("%s/metrics: %s: a lane consumer could not be read", addr, m)
		}
	}
	if v := serverLog.String(); strings.Contains(v, "Violation") {
		var lines []string
		for _, l := range strings.Split(v, "\n") {
			if strings.Contains(l, "Violation") {
				lines = append(lines, l)
			}
		}
		t.Errorf("the forwarders were refused something:\n%s", strings.Join(lines, "\n"))
	}
}
