package lua

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stowline/stowline/events"
	"github.com/stowline/stowline/internal/dicomgen"
	"github.com/stowline/stowline/internal/testharness"
)

const ingestToken = "lua-test-token-0123456789"

// post is one request the script sent.
type post struct {
	Auth, ContentType string
	Event             map[string]any
}

// ingest is a stand-in for stowline's webhook that can answer 202, answer
// an error, or be down (nothing listening on its address).
type ingest struct {
	addr string

	mu     sync.Mutex
	status int
	posts  []post
	srv    *http.Server
}

func startIngest(t *testing.T) *ingest {
	t.Helper()
	in := &ingest{status: http.StatusAccepted}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	in.addr = ln.Addr().String()
	in.serve(ln)
	t.Cleanup(in.down)
	return in
}

func (in *ingest) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		p := post{Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type")}
		if err := json.Unmarshal(b, &p.Event); err != nil {
			p.Event = map[string]any{"unparsable": string(b)}
		}
		in.mu.Lock()
		in.posts = append(in.posts, p)
		status := in.status
		in.mu.Unlock()
		// Like the real ingest, a body with every answer: Orthanc's
		// HttpPost returns "" for an HTTP error and for an empty body
		// alike, and the script takes "" for an error.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"stand-in":true}`)
	})}
	in.mu.Lock()
	in.srv = srv
	in.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (in *ingest) setStatus(code int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.status = code
}

func (in *ingest) down() {
	in.mu.Lock()
	srv := in.srv
	in.srv = nil
	in.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// up listens again on the same address.
func (in *ingest) up(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", in.addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", in.addr, err)
	}
	in.serve(ln)
}

func (in *ingest) received() []post {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]post(nil), in.posts...)
}

// The script posts each stable study's event on every release under test;
// when the ingest answers an error or is down it logs a warning naming the
// study and keeps working for the next study.
func TestScriptOnEachRelease(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script := scriptPath(t)
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		in := startIngest(t)
		o := testharness.StartOrthanc(t, testharness.OrthancOptions{
			Name:       "lua test", // no Stowline.Source: the name, made a subject token
			Release:    rel,
			LuaScripts: []string{script},
			StableAge:  1,
			Extra: map[string]any{"Stowline": map[string]any{
				"IngestUrl":   "http://" + in.addr + "/webhooks/orthanc",
				"IngestToken": "${STOWLINE_TEST_TOKEN}",
			}},
			Env: []string{"STOWLINE_TEST_TOKEN=" + ingestToken},
		})

		// Announced: the event the ingest expects, with the token.
		id := addStudy(t, o)
		p := waitPost(t, in, 1)
		var st struct {
			MainDicomTags map[string]string
			LastUpdate    string
		}
		o.GetJSON(t, "/studies/"+id, &st)
		want := map[string]any{
			"type": "orthanc.study.stable", "version": float64(1), "source": "lua-test",
			"orthancStudyId": id, "studyInstanceUid": st.MainDicomTags["StudyInstanceUID"], "lastUpdate": st.LastUpdate,
		}
		if !equalEvent(p.Event, want) {
			t.Errorf("event %v, want %v", p.Event, want)
		}
		if p.Auth != "Bearer "+ingestToken || p.ContentType != "application/json" {
			t.Errorf("Authorization %q, Content-Type %q", p.Auth, p.ContentType)
		}

		// The ingest refuses the post.
		in.setStatus(http.StatusUnauthorized)
		id = addStudy(t, o)
		waitPost(t, in, 2)
		waitLog(t, o, "stowline: study "+id+" not announced: ", "answered with an HTTP error")

		// A path the ingest does not serve (it logs nothing then): the
		// warning does not send the reader to the ingest's log alone.
		in.setStatus(http.StatusNotFound)
		id = addStudy(t, o)
		waitPost(t, in, 3)
		waitLog(t, o, "stowline: study "+id+" not announced: ", "answered with an HTTP error", "check the path of IngestUrl",
			"with RECONCILE_ENABLED=false, or before the ingest first ran, run forwarder audit --enqueue")

		// The ingest is down.
		in.down()
		id = addStudy(t, o)
		waitLog(t, o, "stowline: study "+id+" not announced: cannot reach ", "run forwarder audit --enqueue")

		// Back up: the next study is announced again.
		in.setStatus(http.StatusAccepted)
		in.up(t)
		id = addStudy(t, o)
		if p := waitPost(t, in, 4); p.Event["orthancStudyId"] != id {
			t.Errorf("after the failures: event %v, want study %s", p.Event, id)
		}
		if strings.Contains(o.LogTail(1000), "stowline: study "+id+" not announced") {
			t.Errorf("study %s announced and reported as not announced", id)
		}
	})
}

// addStudy stores a small new study with storescu, as a modality does, and
// returns its Orthanc ID.
func addStudy(t *testing.T, o *testharness.Orthanc) string {
	t.Helper()
	uid := dicomgen.NewUID()
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: uid, PatientID: "LUA", PatientName: "Synthetic^Lua",
		Series: 1, InstancesPerSeries: 2, Rows: 8, Columns: 8,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.StoreSCU(t, files...); len(res.Failed) > 0 {
		t.Fatalf("storescu: %v", res.Failed)
	}
	return studyIDOf(t, o, uid)
}

// studyIDOf returns the Orthanc ID of the study uid.
func studyIDOf(t *testing.T, o *testharness.Orthanc, uid string) string {
	t.Helper()
	var found []struct{ ID, Type string }
	if err := o.Do(t.Context(), http.MethodPost, "/tools/lookup", strings.NewReader(uid), &found); err != nil || len(found) != 1 || found[0].Type != "Study" {
		t.Fatalf("lookup study %s: %v %v", uid, found, err)
	}
	return found[0].ID
}

// waitPost waits for the ingest's n-th request and returns it.
func waitPost(t *testing.T, in *ingest, n int) post {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if got := in.received(); len(got) >= n {
			if len(got) > n {
				t.Errorf("%d posts, want %d: %v", len(got), n, got)
			}
			return got[n-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d posts after 20 s, want %d", len(in.received()), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLog waits for a line of Orthanc's log that holds all of parts.
func waitLog(t *testing.T, o *testharness.Orthanc, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for line := range strings.SplitSeq(o.LogTail(1000), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line of Orthanc's log holds all of %q", parts)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func equalEvent(got, want map[string]any) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// A site picks the priority lane in Lua: its StowlinePriority hook, in a
// script of its own, decides for the studies it names; the others get
// Stowline.Priority. Without either the event names no priority (checked
// above: the event is exactly the one without the field).
func TestScriptPriority(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script := scriptPath(t)
	erStudy, oddStudy := dicomgen.NewUID(), dicomgen.NewUID()
	hook := filepath.Join(t.TempDir(), "site.lua")
	if err := os.WriteFile(hook, []byte(`
function StowlinePriority(studyId, tags, metadata)
  if tags['StudyInstanceUID'] == '`+erStudy+`' then return 'STAT' end
  if tags['StudyInstanceUID'] == '`+oddStudy+`' then return 'urgent' end
  return nil
end
`), 0o644); err != nil {
		t.Fatal(err)
	}
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		in := startIngest(t)
		o := testharness.StartOrthanc(t, testharness.OrthancOptions{
			Name:       "lua-priority",
			Release:    rel,
			LuaScripts: []string{script, hook},
			StableAge:  1,
			Extra: map[string]any{"Stowline": map[string]any{
				"IngestUrl":   "http://" + in.addr + "/webhooks/orthanc",
				"IngestToken": "${STOWLINE_TEST_TOKEN}",
				"Priority":    "Low", // any case
			}},
			Env: []string{"STOWLINE_TEST_TOKEN=" + ingestToken},
		})
		addStudyOf(t, o, erStudy)
		if p := waitPost(t, in, 1); p.Event["priority"] != "stat" {
			t.Errorf("the hook's study: event %v, want priority stat", p.Event)
		}
		addStudyOf(t, o, "")
		if p := waitPost(t, in, 2); p.Event["priority"] != "low" {
			t.Errorf("another study: event %v, want Stowline.Priority low", p.Event)
		}
		// An unknown value would get the whole event refused: it is
		// ignored, with a warning, for the next choice.
		addStudyOf(t, o, oddStudy)
		if p := waitPost(t, in, 3); p.Event["priority"] != "low" {
			t.Errorf("the hook's unknown priority: event %v, want Stowline.Priority low", p.Event)
		}
		waitLog(t, o, `StowlinePriority gave priority "urgent", not stat, routine or low; ignored`)
	})
}

// A StudyInstanceUID holding a quote, which Orthanc stores and the
// ingest accepts (events.PlausibleUID takes any printable ASCII but / \ %
// * >), is posted quoted: unescaped, the body was not JSON, the ingest
// refused the event as malformed and the study waited for the reconciler.
func TestScriptQuotesTheUID(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script := scriptPath(t)
	uid := dicomgen.NewUID() + `"2`
	if !events.PlausibleUID(uid) {
		t.Fatalf("the ingest refuses UID %s", uid)
	}
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		in := startIngest(t)
		o := testharness.StartOrthanc(t, testharness.OrthancOptions{
			Name:       "lua-quote",
			Release:    rel,
			LuaScripts: []string{script},
			StableAge:  1,
			Extra: map[string]any{"Stowline": map[string]any{
				"IngestUrl":   "http://" + in.addr + "/webhooks/orthanc",
				"IngestToken": ingestToken,
			}},
		})
		// Stored with a DICOM UID, then given this one, as a modality
		// writing it would have stored the study.
		stored := dicomgen.NewUID()
		addStudyOf(t, o, stored)
		waitPost(t, in, 1)
		modify, err := json.Marshal(map[string]any{"Replace": map[string]string{"StudyInstanceUID": uid}, "Force": true})
		if err != nil {
			t.Fatal(err)
		}
		if err := o.Do(t.Context(), http.MethodPost, "/studies/"+studyIDOf(t, o, stored)+"/modify", bytes.NewReader(modify), nil); err != nil {
			t.Fatalf("store a study of UID %s: %v", uid, err)
		}
		if p := waitPost(t, in, 2); p.Event["studyInstanceUid"] != uid {
			t.Errorf("event %v, want studyInstanceUid %s", p.Event, uid)
		}
	})
}

// addStudyOf stores a small study of that StudyInstanceUID (a new one
// when empty).
func addStudyOf(t *testing.T, o *testharness.Orthanc, uid string) {
	t.Helper()
	files, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
		StudyInstanceUID: uid, PatientID: "LUA", PatientName: "Synthetic^Lua", Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := o.StoreSCU(t, files...); len(res.Failed) > 0 {
		t.Fatalf("storescu: %v", res.Failed)
	}
}

// The script's short time-out for its own post must not stay on the HTTP
// client every Lua script of the Orthanc shares: a site script's call
// to a slower server (an upload of a study elsewhere, a RIS) made after
// a study was announced still gets Orthanc's "HttpTimeout". Orthanc 1.10
// has no SetHttpTimeout, so there the script changes nothing.
func TestScriptLeavesOtherScriptsTheirHTTPTimeout(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script := scriptPath(t)
	const slowAnswer = "slow-server-answered"
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // longer than the script's 3 s, far shorter than Orthanc's default 60 s
		case <-time.After(4 * time.Second):
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, slowAnswer)
	}))
	t.Cleanup(slow.Close)
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		in := startIngest(t)
		o := testharness.StartOrthanc(t, testharness.OrthancOptions{
			Name:       "lua-timeout",
			Release:    rel,
			LuaScripts: []string{script},
			StableAge:  1,
			Extra: map[string]any{
				"ExecuteLuaEnabled": true,
				"Stowline": map[string]any{
					"IngestUrl":   "http://" + in.addr + "/webhooks/orthanc",
					"IngestToken": "${STOWLINE_TEST_TOKEN}",
				},
			},
			Env: []string{"STOWLINE_TEST_TOKEN=" + ingestToken},
		})
		addStudy(t, o)
		waitPost(t, in, 1) // the script has posted, and set its time-out

		// Another script's call, run in the same Lua context.
		b, err := o.Bytes(t.Context(), http.MethodPost, "/tools/execute-script", strings.NewReader(`print(HttpGet('`+slow.URL+`'))`))
		if err != nil || !strings.Contains(string(b), slowAnswer) {
			t.Errorf("another script's HttpGet of a server answering in 4 s: %q, %v; want its answer (Orthanc's HttpTimeout, not the script's 3 s)", b, err)
		}
	})
}

// Orthanc sends every Lua request through its "HttpProxy" (set for its
// peers or a cloud archive), the post to the ingest included. When that
// proxy cannot reach the ingest, the warning says so, without the proxy's
// credentials, and names the remedy, which works: NO_PROXY in Orthanc's
// environment.
func TestScriptNamesOrthancsProxy(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script := scriptPath(t)
	const proxySecret = "proxy-password-0123"
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		for _, tt := range []struct {
			name     string
			env      []string
			announce bool
		}{
			{"through the proxy", nil, false},
			{"NO_PROXY names the ingest", []string{"NO_PROXY=127.0.0.1"}, true},
		} {
			t.Run(tt.name, func(t *testing.T) {
				in := startIngest(t)
				o := testharness.StartOrthanc(t, testharness.OrthancOptions{
					Name:       "lua-proxy",
					Release:    rel,
					LuaScripts: []string{script},
					StableAge:  1,
					Extra: map[string]any{
						"HttpProxy": "http://operator:" + proxySecret + "@" + testharness.FreeAddr(t), // nothing listens there
						"Stowline": map[string]any{
							"IngestUrl":   "http://" + in.addr + "/webhooks/orthanc",
							"IngestToken": "${STOWLINE_TEST_TOKEN}",
						},
					},
					Env: append([]string{"STOWLINE_TEST_TOKEN=" + ingestToken}, tt.env...),
				})
				id := addStudy(t, o)
				if tt.announce {
					if p := waitPost(t, in, 1); p.Event["orthancStudyId"] != id {
						t.Errorf("event %v, want study %s", p.Event, id)
					}
					return
				}
				waitLog(t, o, "stowline: study "+id+" not announced: cannot reach ", "Orthanc's HttpProxy", "NO_PROXY")
				if strings.Contains(o.LogTail(1000), proxySecret) {
					t.Error("Orthanc's log holds the proxy's password")
				}
			})
		}
	})
}

// A user and password written in IngestUrl are refused: Orthanc logs the
// URL of a failed post whole, password included.
func TestIngestURLCredentialsNotLogged(t *testing.T) {
	t.Parallel()
	script := scriptPath(t)
	const secret = "url-password-0123"
	addr := testharness.FreeAddr(t) // nothing listens there
	o := testharness.StartOrthanc(t, testharness.OrthancOptions{
		Name:       "lua-url-credentials",
		LuaScripts: []string{script},
		StableAge:  1,
		Extra: map[string]any{"Stowline": map[string]any{
			"IngestUrl":   "http://operator:" + secret + "@" + addr + "/webhooks/orthanc",
			"IngestToken": "${STOWLINE_TEST_TOKEN}",
		}},
		Env: []string{"STOWLINE_TEST_TOKEN=" + ingestToken},
	})
	id := addStudy(t, o)
	waitLog(t, o, "stowline: study "+id+" not announced: ", `"Stowline.IngestUrl" holds a user or password`)
	if strings.Contains(o.LogTail(1000), secret) {
		t.Errorf("Orthanc's log holds the password of IngestUrl:\n%s", o.LogTail(1000))
	}
}

// An https IngestUrl needs Orthanc to trust the ingest's certificate
// (HttpsCACertificates): when it does not, the warning says so rather
// than only "cannot reach", and with the CA named the post goes through.
func TestScriptNamesTheIngestsCertificate(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script := scriptPath(t)
	var mu sync.Mutex
	posts := 0
	ingest := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		posts++
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"stand-in":true}`)
	}))
	t.Cleanup(ingest.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ingest.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		for _, tt := range []struct {
			name  string
			extra map[string]any
		}{
			{"CA not named", nil},
			{"CA named", map[string]any{"HttpsCACertificates": ca}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				extra := map[string]any{"Stowline": map[string]any{
					"IngestUrl":   ingest.URL + "/webhooks/orthanc",
					"IngestToken": "${STOWLINE_TEST_TOKEN}",
				}}
				maps.Copy(extra, tt.extra)
				o := testharness.StartOrthanc(t, testharness.OrthancOptions{
					Name: "lua-tls", Release: rel, LuaScripts: []string{script}, StableAge: 1,
					Extra: extra, Env: []string{"STOWLINE_TEST_TOKEN=" + ingestToken},
				})
				mu.Lock()
				before := posts
				mu.Unlock()
				id := addStudy(t, o)
				if tt.extra == nil {
					waitLog(t, o, "stowline: study "+id+" not announced: cannot reach ", "HttpsCACertificates")
					return
				}
				deadline := time.Now().Add(20 * time.Second)
				for {
					mu.Lock()
					n := posts
					mu.Unlock()
					if n > before {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("no post over https with the CA named; Orthanc's log:\n%s", o.LogTail(20))
					}
					time.Sleep(50 * time.Millisecond)
				}
			})
		}
	})
}

// The README's IngestToken is "${STOWLINE_INGEST_TOKEN}": an Orthanc
// started without that variable in its environment reads it as empty,
// and the warning sends the reader to that environment, not only to a
// configuration that looks set.
func TestScriptNamesAnUnsetTokenVariable(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script := scriptPath(t)
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		in := startIngest(t)
		o := testharness.StartOrthanc(t, testharness.OrthancOptions{
			Name:       "lua-unset-token",
			Release:    rel,
			LuaScripts: []string{script},
			StableAge:  1,
			Extra: map[string]any{"Stowline": map[string]any{
				"IngestUrl":   "http://" + in.addr + "/webhooks/orthanc",
				"IngestToken": "${STOWLINE_TEST_TOKEN_NEVER_SET}",
			}},
		})
		id := addStudy(t, o)
		waitLog(t, o, "stowline: study "+id+" not announced: ", "IngestToken", "Orthanc's environment")
		if got := in.received(); len(got) != 0 {
			t.Errorf("posted without a token: %v", got)
		}
	})
}

// scriptPath is the absolute path of the script under test, for
// Orthanc's LuaScripts.
func scriptPath(t *testing.T) string {
	t.Helper()
	script, err := filepath.Abs("stowline.lua")
	if err != nil {
		t.Fatal(err)
	}
	return script
}

// Orthanc runs the Lua callbacks one at a time: behind a slow post or a
// site script, a study's StableStudy callback may run after the study got
// another instance (a late dose report). Its LastUpdate has one-second
// resolution: an event posted then may carry the ID of the study once
// complete, and the next StableStudy's event, the one that sees the late
// instance, would be dropped as its duplicate. So the script announces a
// study only while Orthanc calls it stable, and once when it is stable
// again; a study it cannot read is announced as before. The site script
// below (loaded after stowline.lua, calling its OnStableStudy as the
// README asks) changes the study just before the first callback, as a
// lagging queue does.
func TestScriptWaitsForAStudyChangedSinceStable(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script := scriptPath(t)
	tests := []struct {
		name string
		// change is Lua run in the first callback of the study, before
		// the script's; it may use studyId and lateFile.
		change string
		// instances the study ends with; 0: deleted.
		instances int
	}{
		{"an instance arrived", `
  local f = assert(io.open(lateFile, 'rb'))
  local dicom = f:read('*a')
  f:close()
  RestApiPost('/instances', dicom, true)`, 2},
		{"the study cannot be read", `
  RestApiDelete('/studies/' .. studyId, true)`, 0},
	}
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				// The late instance: a series of its own in the study.
				uid := dicomgen.NewUID()
				late, err := dicomgen.WriteStudy(t.TempDir(), dicomgen.StudySpec{
					StudyInstanceUID: uid, PatientID: "LUA", PatientName: "Synthetic^Lua", Series: 1, InstancesPerSeries: 1, Rows: 8, Columns: 8,
				})
				if err != nil {
					t.Fatal(err)
				}
				lateFile := late[0]
				site := filepath.Join(t.TempDir(), "site.lua")
				if err := os.WriteFile(site, []byte(`
local stowlineOnStableStudy = OnStableStudy
local lateFile = '`+lateFile+`'
local changed = false
function OnStableStudy(studyId, tags, metadata)
  if tags['StudyInstanceUID'] == '`+uid+`' and not changed then
    changed = true
`+tt.change+`
  end
  stowlineOnStableStudy(studyId, tags, metadata)
  print('test: callback done for ' .. studyId)
end
`), 0o644); err != nil {
					t.Fatal(err)
				}
				in := startIngest(t)
				o := testharness.StartOrthanc(t, testharness.OrthancOptions{
					Name: "lua-changed", Release: rel, LuaScripts: []string{script, site}, StableAge: 1,
					Extra: map[string]any{"Stowline": map[string]any{
						"IngestUrl":   "http://" + in.addr + "/webhooks/orthanc",
						"IngestToken": "${STOWLINE_TEST_TOKEN}",
					}},
					Env: []string{"STOWLINE_TEST_TOKEN=" + ingestToken},
				})
				addStudyOf(t, o, uid)
				id := studyIDOf(t, o, uid)
				// Every callback the study gets has run: two when it
				// changed (Orthanc calls it stable again), one when deleted.
				callbacks := 2
				if tt.instances == 0 {
					callbacks = 1
				}
				waitLogCount(t, o, "test: callback done for "+id, callbacks)
				posts := in.received()
				if len(posts) != 1 || posts[0].Event["orthancStudyId"] != id {
					t.Fatalf("posts %v, want one, of study %s", posts, id)
				}
				if tt.instances == 0 {
					return
				}
				var st struct {
					LastUpdate string
					IsStable   bool
				}
				o.GetJSON(t, "/studies/"+id, &st)
				var instances []struct{ ID string }
				o.GetJSON(t, "/studies/"+id+"/instances", &instances)
				if !st.IsStable || len(instances) != tt.instances || posts[0].Event["lastUpdate"] != st.LastUpdate {
					t.Errorf("event %v; the study: stable %v, %d instances, LastUpdate %s; want its event once stable with %d instances",
						posts[0].Event, st.IsStable, len(instances), st.LastUpdate, tt.instances)
				}
				waitLog(t, o, "stowline: study "+id+" received instances since it was stable")
			})
		}
	})
}

// waitLogCount waits for n lines of Orthanc's log that hold part.
func waitLogCount(t *testing.T, o *testharness.Orthanc, part string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if got := strings.Count(o.LogTail(1000), part); got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lines of Orthanc's log hold %q after 30 s, want %d", strings.Count(o.LogTail(1000), part), part, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stability is each Orthanc process's own memory: with several processes
// sharing one database, one calls a study stable while another still
// stores it. An instance stored within the second of the LastUpdate
// posted leaves LastUpdate as it is, and the complete study's event would
// be dropped as the duplicate of the one posted. So the script posts a
// study only once its LastUpdate is before Orthanc's clock (/tools/now),
// as the reconciler does; a clock it cannot read or parse posts as
// before. The site script below (loaded after stowline.lua) answers
// /tools/now itself in the study's first callback, as an Orthanc whose
// clock is still in the study's second would.
func TestScriptWaitsForTheSecondOfTheLastUpdate(t *testing.T) {
	testharness.RequireBinary(t, "storescu")
	script := scriptPath(t)
	tests := []struct {
		name string
		// clock is the body of the function answering /tools/now in the
		// study's first callback; it may use metadata. Empty: Orthanc's.
		clock string
		// study is the body of the function rewriting the study's answer
		// (answer) in its first callback; empty: Orthanc's as it is.
		study string
		// held: the first callback posts nothing.
		held bool
	}{
		{"the clock in the study's second", `return metadata['LastUpdate']`, "", true},
		// As another process storing an instance between the script's
		// two reads: the study's LastUpdate, read after the clock, is in
		// the clock's second, the callback's is older. Orthanc's own
		// clock is read and parsed.
		{"stored in the clock's second after it was read", "", `
  local now = string.match(restApiGet('/tools/now'), '%d+T%d+')
  return (string.gsub(answer, '"LastUpdate"%s*:%s*"%d+T%d+"', '"LastUpdate" : "' .. now .. '"'))`, true},
		{"the clock read fails", `error('clock unavailable')`, "", false},
		{"the clock unparsable", `return 'not a time'`, "", false},
	}
	testharness.ForEachRelease(t, func(t *testing.T, rel testharness.Release) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				uid := dicomgen.NewUID()
				site := filepath.Join(t.TempDir(), "site.lua")
				if err := os.WriteFile(site, []byte(`
local stowlineOnStableStudy = OnStableStudy
local restApiGet = RestApiGet
local watching = false -- in the study's first callback
local clock = nil -- answers /tools/now while set; nil: Orthanc does
local study = nil -- rewrites the study's answer while set
local reads = ''  -- what the script read, in order, while watching
function RestApiGet(uri, ...)
  if watching and uri == '/tools/now' then
    reads = reads .. ' clock'
    if clock ~= nil then
      return clock()
    end
  end
  if watching and string.find(uri, '^/studies/') then
    reads = reads .. ' study'
    if study ~= nil then
      return study(restApiGet(uri, ...))
    end
  end
  return restApiGet(uri, ...)
end
local first = true
function OnStableStudy(studyId, tags, metadata)
  if tags['StudyInstanceUID'] == '`+uid+`' and first then
    first = false
    watching = true
`+luaSetIf("clock = function()", tt.clock)+`
`+luaSetIf("study = function(answer)", tt.study)+`
  end
  stowlineOnStableStudy(studyId, tags, metadata)
  if watching then
    watching, clock, study = false, nil, nil
    print('test: the first callback read' .. reads)
  end
  print('test: callback done for ' .. studyId)
end
`), 0o644); err != nil {
					t.Fatal(err)
				}
				in := startIngest(t)
				o := testharness.StartOrthanc(t, testharness.OrthancOptions{
					Name: "lua-same-second", Release: rel, LuaScripts: []string{script, site}, StableAge: 1,
					Extra: map[string]any{"Stowline": map[string]any{
						"IngestUrl":   "http://" + in.addr + "/webhooks/orthanc",
						"IngestToken": "${STOWLINE_TEST_TOKEN}",
					}},
					// Local time 8 hours behind UTC (a POSIX TZ, no tzdata
					// needed): LastUpdate is UTC, and so must the clock be
					// (/tools/now, not /tools/now-local), or every study
					// waits.
					Env: []string{"STOWLINE_TEST_TOKEN=" + ingestToken, "TZ=PST8"},
				})
				addStudyOf(t, o, uid)
				id := studyIDOf(t, o, uid)
				waitLogCount(t, o, "test: callback done for "+id, 1)
				// The clock first: an instance stored after it was read,
				// within the second of the LastUpdate read before it,
				// would leave that LastUpdate as it is.
				if !logHasLineEnding(o, "test: the first callback read clock study") {
					t.Error("the script did not read Orthanc's clock, then the study")
				}
				if tt.held {
					// The post is made within the callback: none by now.
					if posts := in.received(); len(posts) != 0 {
						t.Fatalf("posts %v, want none while Orthanc's clock is in the study's second", posts)
					}
					waitLog(t, o, "stowline: study "+id+" was last updated at ", "not before Orthanc's clock", "by the reconciler")
					// Orthanc does not call the study stable again unless
					// it changes: another instance, as another process
					// stores, gets it a StableStudy of its own, read
					// with Orthanc's clock.
					addStudyOf(t, o, uid)
					waitLogCount(t, o, "test: callback done for "+id, 2)
				}
				posts := in.received()
				var st struct{ LastUpdate string }
				o.GetJSON(t, "/studies/"+id, &st)
				if len(posts) != 1 || posts[0].Event["orthancStudyId"] != id || posts[0].Event["lastUpdate"] != st.LastUpdate {
					t.Errorf("posts %v, want one, of study %s at LastUpdate %s", posts, id, st.LastUpdate)
				}
			})
		}
	})
}

// luaSetIf is the Lua statement assigning the function head with body,
// or nothing when body is empty.
func luaSetIf(head, body string) string {
	if body == "" {
		return ""
	}
	return head + "\n" + body + "\nend"
}

// logHasLineEnding reports whether a line of Orthanc's log ends with
// suffix.
func logHasLineEnding(o *testharness.Orthanc, suffix string) bool {
	for line := range strings.SplitSeq(o.LogTail(1000), "\n") {
		if strings.HasSuffix(strings.TrimRight(line, "\r"), suffix) {
			return true
		}
	}
	return false
}
