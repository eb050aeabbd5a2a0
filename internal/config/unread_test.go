package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestUnread(t *testing.T) {
	tests := []struct {
		name  string
		env   func(t *testing.T) map[string]string
		cfg   func() any
		extra map[string]string
		want  []string
	}{
		{name: "every variable read", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &SingleHost{} }, extra: map[string]string{"STOW_PARALLEL_REQUESTS": "8", "OAUTH_TOKEN_URL": "https://login.example.org/token", "OAUTH_CLIENT_ID": "site", "OAUTH_CLIENT_SECRET": "s3cret-value", "PATH": "/bin"}},
		// The _FILE form of a secret is read as the secret.
		{name: "secrets from files", env: func(t *testing.T) map[string]string {
			e := baseEnv()
			dir := t.TempDir()
			for k, v := range map[string]string{"INGEST_TOKEN": e["INGEST_TOKEN"], "ADMIN_TOKEN": "9a8b7c6d5e4f3a2b1c0d", "OAUTH_CLIENT_SECRET": "s3cret-value"} {
				f := filepath.Join(dir, k)
				if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
					t.Fatal(err)
				}
				delete(e, k)
				e[k+"_FILE"] = f
			}
			e["OAUTH_TOKEN_URL"], e["OAUTH_CLIENT_ID"] = "https://login.example.org/token", "site"
			return e
		}, cfg: func() any { return &SingleHost{} }},
		{name: "misspelt default destination variable", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &SingleHost{} }, extra: map[string]string{"STOW_PARALLEL_REQUEST": "8", "FORWARDER_CONCURENCY": "2"},
			want: []string{"FORWARDER_CONCURENCY", "STOW_PARALLEL_REQUEST"}},
		{name: "named destinations: own variables, secrets from files, rules", env: destEnv,
			cfg: func() any { return &SingleHost{} }},
		{name: "named destinations: a misspelt one, and one DESTINATIONS does not name", env: destEnv,
			cfg:   func() any { return &ForwarderService{} },
			extra: map[string]string{"DESTINATION_AI_2_STOW_PARALLEL_REQUEST": "4", "DESTINATION_RESEARCH_URL": "https://r.example.org"},
			want:  []string{"DESTINATION_AI_2_STOW_PARALLEL_REQUEST", "DESTINATION_RESEARCH_URL"}},
		{name: "destination variables without DESTINATIONS", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &SingleHost{} }, extra: map[string]string{"DESTINATION_AI_URL": "https://ai.example.org"},
			want: []string{"DESTINATION_AI_URL"}},
		{name: "Kubernetes service links are not settings", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &SingleHost{} },
			extra: map[string]string{"FORWARDER_SERVICE_HOST": "10.0.0.1", "FORWARDER_SERVICE_PORT_METRICS": "8081",
				"FORWARDER_PORT": "tcp://10.0.0.1:8081", "FORWARDER_PORT_8081_TCP_ADDR": "10.0.0.1"}},
		{name: "the ingest is not told about the forwarder's variables", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &IngestService{} }, extra: map[string]string{"STOW_PARALLEL_REQUEST": "8", "DESTINATION_AI_URL": "x"}},
		// A misspelt INGEST_HMAC_SECRET left the webhook taking unsigned
		// requests; a misspelt EVENTS_RETENTION gave this process's
		// default to the stream every process shares.
		{name: "misspelt ingest, reconciler and stream variables", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &IngestService{} },
			extra: map[string]string{"INGEST_HMAC_SECRETS_FILE": "/run/secrets/hmac", "INGEST_TRUSTED_PROXY": "10.0.0.0/8",
				"RECONCILE_ENABLE": "false", "EVENTS_RETENTON": "720h", "INGEST_HMAC_MAX_SKEW": "1m"},
			want: []string{"EVENTS_RETENTON", "INGEST_HMAC_SECRETS_FILE", "INGEST_TRUSTED_PROXY", "RECONCILE_ENABLE"}},
		{name: "misspelt dead-letter and stream variables of the forwarder", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg:   func() any { return &ForwarderService{} },
			extra: map[string]string{"DEADLETTER_RETENTON": "1440h", "EVENTS_DEDUP_WINDOW": "1h", "EVENTS_RETENTION": "336h"},
			want:  []string{"DEADLETTER_RETENTON", "EVENTS_DEDUP_WINDOW"}},
		// A misspelt NATS_REPLICAS let this process scale the shared
		// streams down to one replica at its start; the nats CLI's own
		// variables are no misspelling.
		{name: "misspelt NATS variables, and the nats CLI's", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &ForwarderService{} },
			extra: map[string]string{"NATS_REPLICA": "3", "NATS_CREDS_FIL": "/run/secrets/nats.creds",
				"NATS_CONTEXT": "prod", "NATS_CREDS": "/run/secrets/nats.creds", "NATS_TIMEOUT": "5s", "NATS_CA": "/ca.pem",
				"NATS_SERVICE_HOST": "10.0.0.2", "NATS_PORT_4222_TCP": "tcp://10.0.0.2:4222"},
			want: []string{"NATS_CREDS_FIL", "NATS_REPLICA"}},
		// A misspelt ORTHANC_PASSWORD left every Orthanc read refused, a
		// misspelt TLS_LISTEN_CERT_FILE the listeners on plain HTTP;
		// Orthanc's Docker images read ORTHANC__* and ORTHANC_JSON.
		{name: "misspelt Orthanc and listener variables", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &ForwarderService{} },
			extra: map[string]string{"ORTHANC_PASWORD": "pw", "TLS_LISTEN_CERT": "/c.pem", "TLS_SERVER_NAME": "other-tool",
				"ORTHANC__NAME": "main", "ORTHANC_JSON": "{}", "ORTHANC_ADMIN_PASSWORD": "pw", "ORTHANC_SERVICE_HOST": "10.0.0.3"},
			want: []string{"ORTHANC_PASWORD", "TLS_LISTEN_CERT"}},
		{name: "named sources: own variables, and one ORTHANC_SOURCES does not name", env: func(*testing.T) map[string]string {
			e := baseEnv()
			delete(e, "ORTHANC_URL")
			e["ORTHANC_SOURCES"] = "cardio-2"
			e["ORTHANC_CARDIO_2_URL"] = "http://cardio:8042"
			e["ORTHANC_CARDIO_2_USERNAME"] = "stowline"
			e["ORTHANC_CARDIO_2_PASSWORD"] = "pw-0123"
			return e
		}, cfg: func() any { return &IngestService{} },
			extra: map[string]string{"ORTHANC_CARDIO_2_PASWORD": "pw", "ORTHANC_PACS_URL": "http://pacs:8042"},
			want:  []string{"ORTHANC_CARDIO_2_PASWORD", "ORTHANC_PACS_URL"}},
		// A misspelt FORWARD_WINDOWS left backfills running through the
		// day on the site's uplink, a misspelt PRIORITY_RULE left stat
		// studies behind routine ones, both without a word.
		{name: "misspelt forwarding windows and priority rule", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg:   func() any { return &SingleHost{} },
			extra: map[string]string{"FORWARD_WINDOW": "backfill=22:00-07:00", "PRIORITY_RULES": "'CT' in study.modalities", "FORWARDER_STAT_CONCURRENCY": "2"},
			want:  []string{"FORWARD_WINDOW", "PRIORITY_RULES"}},
		{name: "the ingest is not told about the forwarding windows", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &IngestService{} }, extra: map[string]string{"FORWARD_WINDOWS": "backfill=22:00-07:00"}},
		{name: "the forwarder is not told about the priority rule", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &ForwarderService{} }, extra: map[string]string{"PRIORITY_RULE": "'CT' in study.modalities"}},
		// A misspelt de-identification variable, whatever its prefix,
		// left the destination receiving the originals.
		{name: "misspelt de-identification variables", env: destEnv,
			cfg:   func() any { return &ForwarderService{} },
			extra: map[string]string{"DESTINATION_AI_2_STOW_DEIDENTIFIY": "basic", "DESTINATION_AI_2_DEIDENTIFY_KEYFILE": "/k", "DEIDENTIFY_KEY": "/k"},
			want:  []string{"DEIDENTIFY_KEY", "DESTINATION_AI_2_DEIDENTIFY_KEYFILE", "DESTINATION_AI_2_STOW_DEIDENTIFIY"}},
		// A near miss (DEID, any case) is refused too; DEID inside a
		// word is another tool's.
		{name: "near misses of de-identification variables", env: destEnv,
			cfg:   func() any { return &ForwarderService{} },
			extra: map[string]string{"STOW_DEIDENITFY": "basic", "stow_deidentify": "basic", "DESTINATION_AI_2_DEID_KEY_FILE": "/k", "K8S_NODEID": "n1"},
			want:  []string{"DESTINATION_AI_2_DEID_KEY_FILE", "STOW_DEIDENITFY", "stow_deidentify"}},
		// A routing rule not read, in any case: its destination took
		// every study.
		{name: "misspelt routing rules", env: destEnv,
			cfg:   func() any { return &ForwarderService{} },
			extra: map[string]string{"DESTINATION_ARCHIVE_MATCHES": "true", "destination_ai_2_match": "true", "DESTINATION_AI-2_INSTANCE_MATCH": "true"},
			want:  []string{"DESTINATION_AI-2_INSTANCE_MATCH", "DESTINATION_ARCHIVE_MATCHES", "destination_ai_2_match"}},
		{name: "the ingest is not told about routing rules", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &IngestService{} }, extra: map[string]string{"destination_ai_match": "true", "DESTINATION_AI_MATCHES": "true"}},
		{name: "the ingest is not told about de-identification variables", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &IngestService{} }, extra: map[string]string{"DEIDENTIFY_KEY_FILE": "/k", "STOW_DEIDENTIFY": "basic"}},
		{name: "the forwarder is not told about the ingest's variables", env: func(*testing.T) map[string]string { return baseEnv() },
			cfg: func() any { return &ForwarderService{} }, extra: map[string]string{"INGEST_HMAC_SECRET": "x", "RECONCILE_POLL_INTERVAL": "5s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env(t)
			env["NATS_URL"] = "nats://nats.example.org:4222" // the services need it; the single host ignores it
			for k, v := range tt.extra {
				env[k] = v
			}
			cfg := tt.cfg()
			if err := Load(mapEnv(env), cfg); err != nil {
				t.Fatal(err)
			}
			var environ []string
			for k, v := range env {
				environ = append(environ, k+"="+v)
			}
			if got := Unread(environ, cfg); !slices.Equal(got, tt.want) {
				t.Errorf("Unread = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestStopsStart: the names that stop a de-identifying process's start
// when it does not read them.
func TestStopsStart(t *testing.T) {
	for _, tt := range []struct {
		name string
		want bool
	}{
		{"DESTINATION_RESEARCH_STOW_DEIDENTIFIY", true},
		{"DEIDENTIFY_KEYFILE", true},
		{"STOW_DEIDENITFY", true}, // no DEIDENT
		{"stow_deidentify", true},
		{"Stow_DeIdentify", true},
		{"DEID_KEY", true},
		{"NODEIDENTITY", true}, // DEIDENT anywhere, as before
		{"K8S_NODEID", false},
		{"CODEID", false},
		{"STOW_PARALLEL_REQUEST", false},
		{"DE_IDENTIFY", false},
	} {
		if got := StopsStart(tt.name); got != tt.want {
			t.Errorf("StopsStart(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestStopsStartNamesNoVariableRead: every variable stowline reads that
// StopsStart matches is a de-identification setting, so the match
// (DEID, any case) flags only names stowline does not read as misspelt
// ones of these.
func TestStopsStartNamesNoVariableRead(t *testing.T) {
	for _, v := range append(Vars(&SingleHost{}, &IngestService{}, &ForwarderService{}, &Audit{}, &ReplayCommand{}, &CheckCommand{}), Vars(&Destination{})...) {
		if StopsStart(v.Name) && !strings.Contains(v.Name, "DEIDENTIFY") {
			t.Errorf("%s, a variable stowline reads, looks like a misspelt de-identification setting", v.Name)
		}
	}
}

// TestUnreadRule: a routing rule not read stops the start, naming the
// variable and the destinations it could be for: as a warning,
// DESTINATION_AI_MATCHES sent the AI vendor every study.
func TestUnreadRule(t *testing.T) {
	tests := []struct {
		name         string
		destinations string // DESTINATIONS; "" unset
		variable     string
		want         []string // in the error; none: no error
		notWant      string
	}{
		{name: "MATCHES", destinations: "archive,ai", variable: "DESTINATION_AI_MATCHES",
			want: []string{"DESTINATION_AI_MATCHES: set but not read", `"ai" (DESTINATION_AI_MATCH, DESTINATION_AI_INSTANCE_MATCH)`, "takes every study"}, notWant: "archive"},
		{name: "INSTANCE_MATCHS", destinations: "archive,ai", variable: "DESTINATION_AI_INSTANCE_MATCHS",
			want: []string{"DESTINATION_AI_INSTANCE_MATCHS", `"ai" (DESTINATION_AI_MATCH, DESTINATION_AI_INSTANCE_MATCH)`}, notWant: "archive"},
		{name: "ai-2 without its underscore", destinations: "archive,ai-2", variable: "DESTINATION_AI2_MATCH",
			want: []string{"DESTINATION_AI2_MATCH", `"ai-2" (DESTINATION_AI_2_MATCH, DESTINATION_AI_2_INSTANCE_MATCH)`}, notWant: "archive"},
		{name: "ai-2 with its hyphen", destinations: "archive,ai-2", variable: "DESTINATION_AI-2_MATCH",
			want: []string{"DESTINATION_AI-2_MATCH", `"ai-2"`}, notWant: "archive"},
		{name: "lower case", destinations: "archive,ai", variable: "destination_ai_match",
			want: []string{"destination_ai_match", `"ai"`}, notWant: "archive"},
		{name: "letters swapped", destinations: "archive,ai", variable: "DESTINATION_AI_MACTH",
			want: []string{"DESTINATION_AI_MACTH", `"ai"`}},
		{name: "a prefix of two names", destinations: "ai,ai-2", variable: "DESTINATION_AI2_MATCH",
			want: []string{`"ai" (DESTINATION_AI_MATCH`, `or "ai-2" (DESTINATION_AI_2_MATCH`}},
		{name: "a destination DESTINATIONS does not name", destinations: "archive,ai", variable: "DESTINATION_RESEARCH_MATCH",
			want: []string{"DESTINATION_RESEARCH_MATCH", "then remove it", `"archive" (DESTINATION_ARCHIVE_MATCH`, `or "ai" (DESTINATION_AI_MATCH`}},
		{name: "without DESTINATIONS", variable: "DESTINATION_DEFAULT_MATCH",
			want: []string{"DESTINATION_DEFAULT_MATCH", "with DESTINATIONS unset", `"default", takes every study`}},
		// A misspelt prefix: not even warned of, and ai took every study.
		{name: "DESTINATIONS_ prefix", destinations: "archive,ai", variable: "DESTINATIONS_AI_MATCH",
			want: []string{"DESTINATIONS_AI_MATCH: set but not read", `"ai" (DESTINATION_AI_MATCH, DESTINATION_AI_INSTANCE_MATCH)`}, notWant: "archive"},
		{name: "DESTINATON_ prefix", destinations: "archive,ai", variable: "DESTINATON_AI_MATCH",
			want: []string{"DESTINATON_AI_MATCH", `"ai" (DESTINATION_AI_MATCH`}, notWant: "archive"},
		{name: "prefix without its underscore", destinations: "archive,ai", variable: "DESTINATIONAI_MATCH",
			want: []string{"DESTINATIONAI_MATCH", `"ai" (DESTINATION_AI_MATCH`}, notWant: "archive"},
		{name: "a destination whose name starts with S", destinations: "archive,sales", variable: "DESTINATION_SALES_MATCHES",
			want: []string{`"sales" (DESTINATION_SALES_MATCH`}, notWant: "archive"},
		// MATCH with one letter left out or doubled was a warning only.
		{name: "MATH", destinations: "archive,ai", variable: "DESTINATION_AI_MATH", want: []string{"DESTINATION_AI_MATH", `"ai"`}, notWant: "archive"},
		{name: "MACH", destinations: "archive,ai", variable: "DESTINATION_AI_MACH", want: []string{"DESTINATION_AI_MACH", `"ai"`}, notWant: "archive"},
		{name: "ATCH", destinations: "archive,ai", variable: "DESTINATION_AI_ATCH", want: []string{"DESTINATION_AI_ATCH", `"ai"`}, notWant: "archive"},
		{name: "MATTCH", destinations: "archive,ai", variable: "DESTINATION_AI_INSTANCE_MATTCH", want: []string{"DESTINATION_AI_INSTANCE_MATTCH", `"ai"`}, notWant: "archive"},
		{name: "MTCH", destinations: "archive,ai", variable: "DESTINATION_AI_MTCH", want: []string{"DESTINATION_AI_MTCH", `"ai"`}, notWant: "archive"},
		{name: "another destination variable", destinations: "archive,ai", variable: "DESTINATION_AI_STOW_PARALLEL_REQUEST"},
		{name: "another destination variable under DESTINATIONS_", destinations: "archive,ai", variable: "DESTINATIONS_AI_STOW_PARALLEL_REQUEST"},
		{name: "a destination named like a rule", destinations: "archive,ai", variable: "DESTINATION_MACHINE_URL"},
		{name: "a destination named one letter from MATCH", destinations: "archive,ai", variable: "DESTINATION_BATCH_URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := baseEnv()
			if tt.destinations != "" {
				delete(env, "DICOMWEB_URL")
				env["DESTINATIONS"] = tt.destinations
				for _, n := range strings.Split(tt.destinations, ",") {
					env[DestinationVarPrefix(n)+"URL"] = "https://" + n + ".example.org/dicomweb"
				}
			}
			var cfg SingleHost
			if err := Load(mapEnv(env), &cfg); err != nil {
				t.Fatal(err)
			}
			if got := Unread([]string{tt.variable + "=true"}, &cfg); !slices.Equal(got, []string{tt.variable}) {
				t.Fatalf("Unread = %q, want %q", got, tt.variable)
			}
			err := UnreadRule(tt.variable, &cfg)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("UnreadRule = %v, want nil (a warning)", err)
				}
				return
			}
			if err == nil {
				t.Fatal("UnreadRule = nil, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("UnreadRule = %v, want it to say %q", err, w)
				}
			}
			if tt.notWant != "" && strings.Contains(err.Error(), tt.notWant) {
				t.Errorf("UnreadRule = %v: names %q, which it cannot be for", err, tt.notWant)
			}
		})
	}
	if err := UnreadRule("DESTINATION_AI_MATCHES", &IngestService{}); err != nil {
		t.Errorf("UnreadRule for the ingest = %v: it reads no destination", err)
	}
}
