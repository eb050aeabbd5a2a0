package chartcheck

import (
	"cmp"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)

// TestLint runs Helm's linter over the chart, as `helm lint --strict`
// would: warnings fail too.
func TestLint(t *testing.T) {
	res := lint.RunAll(chartDir, required(), release.Namespace)
	for _, m := range res.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint: %v", m)
		} else {
			t.Logf("helm lint: %v", m)
		}
	}
}

// TestDefaults renders the chart with only the required values: the
// ingest and one forwarder group, their Services, PodDisruptionBudgets and
// NetworkPolicies, a Secret and a ServiceAccount; no KEDA, no
// ServiceMonitor.
func TestDefaults(t *testing.T) {
	objs := render(t, required())
	want := map[string]int{
		"Deployment": 2, "Service": 2, "PodDisruptionBudget": 2, "NetworkPolicy": 2,
		"Secret": 1, "ServiceAccount": 1,
	}
	if got := objs.kinds(); !maps.Equal(got, want) {
		t.Errorf("objects %v, want %v", got, want)
	}
	checkRelease(t, objs)
	for _, d := range of[*appsv1.Deployment](objs) {
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
			t.Errorf("deployment %s: replicas %v, want 2 without KEDA", d.Name, d.Spec.Replicas)
		}
	}
}

// TestEverything renders every optional part: KEDA, the ServiceMonitor, an
// existing Secret, NATS credentials, extra volumes, metrics peers, and
// several sources' worth of env.
func TestEverything(t *testing.T) {
	values := merged(required(), map[string]any{
		"keda":           map[string]any{"enabled": true, "useHttps": true, "account": "STOWLINE"},
		"serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "prometheus"}},
		"prometheusRule": map[string]any{"enabled": true, "labels": map[string]any{"release": "prometheus"}},
		"secrets": map[string]any{
			"existingSecret":     "stowline-secrets",
			"existingSecretKeys": []any{"INGEST_TOKEN", "ADMIN_TOKEN", "ORTHANC_PASSWORD", "OAUTH_CLIENT_SECRET", "INGEST_HMAC_SECRET"},
		},
		"nats":    map[string]any{"credsSecret": "stowline-nats"},
		"orthanc": map[string]any{"httpThreadsCount": 200, "reservedThreads": 10},
		"env":     map[string]any{"NATS_CA_FILE": "/etc/stowline/ca/ca.pem", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"},
		"tracing": map[string]any{
			"otlpEndpoint": "http://otel-collector.observability.svc:4318",
			"sampler":      "parentbased_traceidratio", "samplerArg": "0.1",
		},
		"extraVolumes": []any{map[string]any{"name": "ca", "configMap": map[string]any{"name": "stowline-ca"}}},
		"extraVolumeMounts": []any{map[string]any{
			"name": "ca", "mountPath": "/etc/stowline/ca", "readOnly": true,
		}},
		"ingest": map[string]any{"env": map[string]any{"RECONCILE_POLL_INTERVAL": "5s", "INGEST_TRUSTED_PROXIES": "10.0.0.0/8"}},
		"networkPolicy": map[string]any{
			"metricsFrom": []any{map[string]any{
				"namespaceSelector": map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": "monitoring"}},
			}},
			"egress": map[string]any{"extra": []any{map[string]any{
				"to":    []any{map[string]any{"ipBlock": map[string]any{"cidr": "169.254.169.254/32"}}},
				"ports": []any{map[string]any{"port": 80, "protocol": "TCP"}},
			}}},
		},
		"image": map[string]any{"registry": "registry.example.org/imaging/", "tag": "1.2.3"},
	})
	objs := render(t, values)
	want := map[string]int{
		"Deployment": 2, "Service": 2, "PodDisruptionBudget": 2, "NetworkPolicy": 2,
		"ServiceAccount": 1, "ScaledObject": 1, "ServiceMonitor": 1, "PrometheusRule": 1,
	}
	if got := objs.kinds(); !maps.Equal(got, want) {
		t.Errorf("objects %v, want %v (an existing Secret: none created)", got, want)
	}
	checkRelease(t, objs)
	for _, d := range of[*appsv1.Deployment](objs) {
		c := d.Spec.Template.Spec.Containers[0]
		if !strings.HasPrefix(c.Image, "registry.example.org/imaging/stowline-") || !strings.HasSuffix(c.Image, ":1.2.3") {
			t.Errorf("deployment %s: image %s", d.Name, c.Image)
		}
		if component(d.Labels) != "ingest" && d.Spec.Replicas != nil {
			t.Errorf("deployment %s: replicas set while KEDA scales it", d.Name)
		}
		env := envOf(d)
		for k, v := range map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability.svc:4318",
			"OTEL_TRACES_SAMPLER":         "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1",
		} {
			if env[k] != v {
				t.Errorf("deployment %s: %s = %q, want %q (tracing values)", d.Name, k, env[k], v)
			}
		}
	}
	// The tracing collector's port is open to both; so is an extra rule.
	for _, np := range of[*networkingv1.NetworkPolicy](objs) {
		open := map[int32]bool{}
		for _, r := range np.Spec.Egress {
			for _, p := range r.Ports {
				if p.Port != nil {
					open[p.Port.IntVal] = true
				}
			}
		}
		if !open[4318] || !open[80] {
			t.Errorf("NetworkPolicy %s: egress ports %v, want the collector's 4318 and the extra rule's 80", np.Name, open)
		}
	}
	sm := of[*monitoringv1.ServiceMonitor](objs)[0]
	if sm.Labels["release"] != "prometheus" {
		t.Errorf("ServiceMonitor labels %v lack serviceMonitor.labels", sm.Labels)
	}
	if pr := of[*monitoringv1.PrometheusRule](objs)[0]; pr.Labels["release"] != "prometheus" {
		t.Errorf("PrometheusRule labels %v lack prometheusRule.labels", pr.Labels)
	}
	// Orthanc's 200 threads less 10 reserved, 16 connections a replica.
	so := of[*scaledObject](objs)[0]
	if got := so.Spec.MaxReplicaCount; got == nil || *got != 11 {
		t.Errorf("maxReplicaCount %v, want (200-10)/(4x4) = 11", got)
	}
	if len(so.Spec.Triggers) != 2 {
		t.Errorf("triggers %+v, want two (the routine and the stat lane's consumer)", so.Spec.Triggers)
	}
	for _, tr := range so.Spec.Triggers {
		if m := tr.Metadata; m["useHttps"] != "true" || m["account"] != "STOWLINE" {
			t.Errorf("trigger %s metadata %v: useHttps and account not from values", tr.Name, m)
		}
	}
}

// TestMaxReplicas: the forwarders' ceiling follows Orthanc's threads and
// the per-replica connections, an explicit value wins, and the consumer's
// 1000 ack-pending events cap it. A derived ceiling is enforced: each
// replica gets ORTHANC_MAX_CONNECTIONS at the connections it was derived
// from (metadata reads would exceed the estimate otherwise), and a cap
// the values set counts instead.
func TestMaxReplicas(t *testing.T) {
	tests := []struct {
		name                                   string
		threads, reserved, conc, parallel, max int
		keda                                   bool
		env                                    map[string]any
		want                                   int32
		wantCap                                string // the forwarders' ORTHANC_MAX_CONNECTIONS
	}{
		{"orthanc defaults", 50, 10, 4, 16, 0, true, nil, 2, "16"},
		{"more threads", 410, 10, 4, 16, 0, true, nil, 25, "16"},
		{"one request at a time", 50, 10, 2, 1, 0, true, nil, 40, "1"},
		{"ack-pending cap", 100000, 0, 50, 1, 0, true, nil, 20, "1"},
		{"explicit", 50, 10, 4, 4, 7, true, nil, 7, ""},
		{"cap from env", 50, 10, 4, 16, 0, true, map[string]any{"ORTHANC_MAX_CONNECTIONS": 8}, 5, "8"},
		{"no cap from env", 50, 10, 4, 16, 0, true, map[string]any{"ORTHANC_MAX_CONNECTIONS": 0}, 2, "0"},
		{"left unset by env", 50, 10, 4, 16, 0, true, map[string]any{"ORTHANC_MAX_CONNECTIONS": ""}, 2, ""},
		{"no KEDA", 50, 10, 4, 16, 0, false, nil, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, merged(required(), map[string]any{
				"keda":    map[string]any{"enabled": tt.keda},
				"orthanc": map[string]any{"httpThreadsCount": tt.threads, "reservedThreads": tt.reserved},
				"forwarderDefaults": map[string]any{
					"concurrency": tt.conc, "stowParallelRequests": tt.parallel,
					"keda": map[string]any{"maxReplicaCount": tt.max},
					"env":  tt.env,
				},
			}))
			for _, d := range of[*appsv1.Deployment](objs) {
				if component(d.Labels) == "ingest" {
					continue
				}
				if got := envOf(d)["ORTHANC_MAX_CONNECTIONS"]; got != tt.wantCap {
					t.Errorf("forwarder ORTHANC_MAX_CONNECTIONS %q, want %q", got, tt.wantCap)
				}
			}
			if !tt.keda {
				return
			}
			so := of[*scaledObject](objs)[0]
			if so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount != tt.want {
				t.Errorf("maxReplicaCount %v, want %d", so.Spec.MaxReplicaCount, tt.want)
			}
		})
	}
}

// TestRefused: values the chart must refuse, with a message that names
// what to fix.
func TestRefused(t *testing.T) {
	noToken := required()
	noToken["secrets"] = map[string]any{"values": map[string]any{"ADMIN_TOKEN": "admin-token-0123456789abcdef"}}
	twoGroups := required()
	twoGroups["forwarders"] = []any{
		map[string]any{"name": "a", "dicomwebURL": "https://a.example.org"},
		map[string]any{"name": "b", "dicomwebURL": "https://b.example.org"},
	}
	noURL := required()
	noURL["forwarders"] = []any{map[string]any{"name": "default"}}
	tests := []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"no ingest token", noToken, "INGEST_TOKEN is required"},
		{"two forwarder groups", twoGroups, "exactly one entry"},
		{"no destination", noURL, "dicomwebURL is required"},
		{"no NATS", merged(required(), map[string]any{"nats": map[string]any{"url": ""}}), "nats.url is required"},
		{"no Orthanc", merged(required(), map[string]any{"orthanc": map[string]any{"url": ""}}), "orthanc.url is required"},
		{"too few Orthanc threads", merged(required(), map[string]any{
			"keda":    map[string]any{"enabled": true},
			"orthanc": map[string]any{"httpThreadsCount": 20, "reservedThreads": 10},
		}), "raise Orthanc's HttpThreadsCount"},
		{"no forwarder left by KEDA", merged(required(), map[string]any{
			"keda":              map[string]any{"enabled": true},
			"forwarderDefaults": map[string]any{"keda": map[string]any{"minReplicaCount": 0}},
		}), "nothing would serve the low lane"},
		// The rules' job names are the ServiceMonitor's: scraped under
		// others, StowlineAbsent fires for good.
		{"a source's own cap under a derived ceiling", merged(required(), map[string]any{
			"keda":              map[string]any{"enabled": true},
			"forwarderDefaults": map[string]any{"env": map[string]any{"ORTHANC_MAIN_MAX_CONNECTIONS": 30}},
		}), "ORTHANC_MAIN_MAX_CONNECTIONS in env: a source's own cap replaces ORTHANC_MAX_CONNECTIONS"},
		{"a cap below the destinations served", merged(withDestinations(map[string]any{"name": "all"}), map[string]any{
			"forwarderDefaults": map[string]any{"env": map[string]any{"ORTHANC_MAX_CONNECTIONS": 1}},
		}), "ORTHANC_MAX_CONNECTIONS 1 in env is below the 2 destinations the group serves"},
		{"a source's cap below the destinations served", merged(withDestinations(map[string]any{"name": "all"}), map[string]any{
			"forwarderDefaults": map[string]any{"env": map[string]any{"ORTHANC_MR_MAX_CONNECTIONS": "1"}},
		}), "ORTHANC_MR_MAX_CONNECTIONS 1 in env is below the 2 destinations the group serves"},
		{"alerts without the ServiceMonitor", merged(required(), map[string]any{
			"prometheusRule": map[string]any{"enabled": true},
		}), "prometheusRule.enabled needs serviceMonitor.enabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderFiles(t, tt.values)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("render error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// checkRelease runs every check that holds for any rendered release.
func checkRelease(t *testing.T, objs objects) {
	t.Helper()
	src := readGoFacts(t)
	vars := commandVars(t)
	deployments := of[*appsv1.Deployment](objs)
	if len(deployments) == 0 {
		t.Fatal("no Deployment")
	}
	for _, d := range deployments {
		checkDeployment(t, d, src, vars)
		role := "forwarder"
		if component(d.Labels) == "ingest" {
			role = "ingest"
		}
		configLoads(t, role, envOf(d))
	}
	checkForwarderGroups(t, deployments)
	checkSelectors(t, objs)
	schema := loadCRD(t, "keda.sh_scaledobjects.yaml", "v1alpha1")
	for _, o := range objs {
		so, ok := o.obj.(*scaledObject)
		if !ok {
			continue
		}
		errs, err := schema.validate(t.Context(), o.yaml)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range errs {
			t.Errorf("ScaledObject %s: KEDA's CRD schema refuses it: %v", o.name, e)
		}
		checkScaledObject(t, so, src, deployments)
	}
}

// component is a pod's app.kubernetes.io/component label.
func component(l map[string]string) string { return l["app.kubernetes.io/component"] }

// azureWorkloadIdentityTokens is where AKS workload identity's webhook
// mounts the service account token (AZURE_FEDERATED_TOKEN_FILE) in a pod
// labelled azure.workload.identity/use: "true" (docs/auth.md).
const azureWorkloadIdentityTokens = "/var/run/secrets/azure/tokens"

func checkDeployment(t *testing.T, d *appsv1.Deployment, src goFacts, vars map[string]commandVarSet) {
	t.Helper()
	pod := d.Spec.Template.Spec
	role := "forwarder"
	grace := src.forwarderShutdownGrace + src.httpShutdownGrace
	if component(d.Labels) == "ingest" {
		role = "ingest"
		grace = src.ingestShutdownGrace
		for _, e := range d.Spec.Template.Spec.Containers[0].Env {
			if e.Name == "INGEST_PUBLISH_TIMEOUT" {
				// In-flight webhooks may wait that long for JetStream.
				timeout, err := time.ParseDuration(e.Value)
				if err != nil {
					t.Errorf("deployment %s: INGEST_PUBLISH_TIMEOUT %q: %v", d.Name, e.Value, err)
				}
				grace = src.ingestGrace(timeout)
			}
		}
	} else {
		for _, e := range d.Spec.Template.Spec.Containers[0].Env {
			if e.Name == "FORWARDER_SHUTDOWN_GRACE" {
				g, err := time.ParseDuration(e.Value)
				if err != nil {
					t.Errorf("deployment %s: FORWARDER_SHUTDOWN_GRACE %q: %v", d.Name, e.Value, err)
				}
				grace = g + src.httpShutdownGrace
			}
		}
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("deployment %s: %d containers, want 1", d.Name, len(pod.Containers))
	}
	c := pod.Containers[0]

	// Security: non-root, read-only root filesystem, no privilege
	// escalation, no capabilities, no API token.
	if p := pod.SecurityContext; p == nil || p.RunAsNonRoot == nil || !*p.RunAsNonRoot {
		t.Errorf("deployment %s: pod does not require a non-root user", d.Name)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Errorf("deployment %s: no container securityContext", d.Name)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("deployment %s: root filesystem not read-only", d.Name)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("deployment %s: privilege escalation allowed", d.Name)
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) > 0:
		t.Errorf("deployment %s: capabilities %v, want all dropped", d.Name, sc.Capabilities)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("deployment %s: mounts a service account token stowline never uses", d.Name)
	}

	// Its replicas are spread over the nodes: the scheduler's own
	// default lets three share one, and that node's loss or drain would
	// take the ingest (webhook and reconciler) or a group whole.
	spread := false
	for _, c := range pod.TopologySpreadConstraints {
		spread = spread || c.TopologyKey == "kubernetes.io/hostname" && c.MaxSkew == 1 && c.LabelSelector != nil &&
			labels.SelectorFromSet(c.LabelSelector.MatchLabels).Matches(labels.Set(d.Spec.Template.Labels)) &&
			len(c.LabelSelector.MatchLabels) == len(d.Spec.Selector.MatchLabels)
	}
	if !spread {
		t.Errorf("deployment %s: topologySpreadConstraints %+v, want its pods spread over kubernetes.io/hostname", d.Name, pod.TopologySpreadConstraints)
	}

	// Probes on the container's port: /healthz alive, /readyz ready.
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		want := "/healthz"
		if name == "readiness" {
			want = "/readyz"
		}
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.String() != "http" {
			t.Errorf("deployment %s: %s probe %+v, want GET %s on port http", d.Name, name, p, want)
		}
	}
	// The kubelet waits 1 s by default; /readyz may take web.ReadyTimeout
	// (a slow Orthanc, token endpoint or JetStream API), and a probe cut
	// short marks the pod unready: out of the ingest's Service, stalling
	// a rollout, blocking node drains through the PodDisruptionBudget.
	if p := c.ReadinessProbe; p != nil && time.Duration(max(p.TimeoutSeconds, 1))*time.Second <= src.readyTimeout {
		t.Errorf("deployment %s: readiness probe timeoutSeconds %d, want more than /readyz's %v (web.ReadyTimeout)", d.Name, p.TimeoutSeconds, src.readyTimeout)
	}
	if src.readyTimeout <= 0 {
		t.Errorf("web.ReadyTimeout not read from the source")
	}
	// The startup probe outlasts the slowest start that still succeeds:
	// the listener opens after the provisionings, one after the other,
	// each bounded by app.provisionTimeout (a forwarder's event stream,
	// destinations and status bucket; the ingest's event stream and
	// reconciler bucket), with startSpare for the NATS connect and the
	// rest. Killed sooner, the pod restarts into the same slow start
	// without its own error (60 s would kill a forwarder whose
	// provisionings took 70 s in all).
	provisionings := map[string]int{"forwarder": 3, "ingest": 2}[role]
	if want := time.Duration(provisionings)*src.provisionTimeout + startSpare; c.StartupProbe == nil || probeBudget(c.StartupProbe) < want {
		t.Errorf("deployment %s: the startup probe gives the start %v, want at least %v: %d x %v (app.provisionTimeout) + %v",
			d.Name, probeBudget(c.StartupProbe), want, provisionings, src.provisionTimeout, startSpare)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" {
		t.Fatalf("deployment %s: ports %v, want one named http", d.Name, c.Ports)
	}

	// The orchestrator waits at least stowline's own shutdown grace.
	sleep := time.Duration(0)
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		sleep = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	if tg := pod.TerminationGracePeriodSeconds; tg == nil || time.Duration(*tg)*time.Second < sleep+grace {
		t.Errorf("deployment %s: terminationGracePeriodSeconds %v, want at least %v (preStop %v + stowline's grace %v)", d.Name, tg, sleep+grace, sleep, grace)
	}

	// Every variable is one the command reads; the listen address is the
	// container's port.
	env := map[string]string{}
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			t.Errorf("deployment %s: %s set twice", d.Name, e.Name)
		}
		// The env maps may take a value from a Secret (a tracing
		// vendor's key); nothing else comes from elsewhere.
		if e.ValueFrom != nil {
			if ref := e.ValueFrom.SecretKeyRef; ref == nil || ref.Name == "" || ref.Key == "" || e.Value != "" {
				t.Errorf("deployment %s: %s: valueFrom %+v, want a secretKeyRef only", d.Name, e.Name, e.ValueFrom)
			}
			continue
		}
		env[e.Name] = e.Value
	}
	for _, e := range c.Env {
		// `forwarder -h` lists DESTINATION_<NAME>_<VARIABLE>: the names
		// are the destinations DESTINATIONS declares, the variables the
		// default destination's (the code ignores any other).
		if role == "forwarder" && strings.HasPrefix(e.Name, "DESTINATION_") {
			if !destinationVar(e.Name, destinationNames(env), src) {
				t.Errorf("deployment %s: %s is no variable of a destination DESTINATIONS (%q) declares", d.Name, e.Name, env["DESTINATIONS"])
			}
			continue
		}
		if !vars[role].reads(e.Name) && !src.tracingVars[e.Name] {
			t.Errorf("deployment %s: %s is not a variable `%s -h` lists, nor one of the OTEL_* variables of docs/tracing.md", d.Name, e.Name, role)
		}
	}
	addr := map[string]string{"ingest": "INGEST_ADDR", "forwarder": "FORWARDER_ADDR"}[role]
	if env[addr] != ":"+strconv.Itoa(int(c.Ports[0].ContainerPort)) {
		t.Errorf("deployment %s: %s = %q, want :%d (the container port)", d.Name, addr, env[addr], c.Ports[0].ContainerPort)
	}
	for _, required := range []string{"NATS_URL", "NATS_REPLICAS"} {
		if env[required] == "" {
			t.Errorf("deployment %s: %s not set", d.Name, required)
		}
	}
	if role == "forwarder" {
		checkDestinationsEnv(t, d.Name, env, src)
	}
	if role == "ingest" && env["INGEST_TOKEN_FILE"] == "" {
		t.Errorf("deployment %s: INGEST_TOKEN_FILE not set", d.Name)
	}
	// HTTPS listeners answer only HTTPS: the kubelet's probes follow them.
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
		if p == nil || p.HTTPGet == nil {
			continue
		}
		if got, want := cmp.Or(p.HTTPGet.Scheme, corev1.URISchemeHTTP), listenScheme(env); !strings.EqualFold(string(got), want) {
			t.Errorf("deployment %s: %s probe scheme %s, want %s (TLS_LISTEN_CERT_FILE %q)", d.Name, name, got, want, env["TLS_LISTEN_CERT_FILE"])
		}
	}

	// Every _FILE variable names a file a volume provides, and a secret
	// reaches only the commands that read it.
	mounts := map[string]string{} // mount path -> volume
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for name, path := range env {
		if !strings.HasSuffix(name, "_FILE") {
			continue
		}
		dir, file := path[:strings.LastIndex(path, "/")], path[strings.LastIndex(path, "/")+1:]
		if dir == azureWorkloadIdentityTokens && d.Spec.Template.Labels["azure.workload.identity/use"] == "true" {
			continue // the webhook mounts it when the pod is created
		}
		vol, ok := volumes[mounts[dir]]
		if !ok {
			t.Errorf("deployment %s: %s=%s: no volume mounted at %s", d.Name, name, path, dir)
			continue
		}
		if vol.Secret != nil && !hasItem(vol.Secret.Items, file) {
			t.Errorf("deployment %s: %s=%s: secret volume %s has no item %s", d.Name, name, path, vol.Name, file)
		}
	}
	for _, v := range pod.Volumes {
		if v.Secret == nil {
			continue
		}
		for _, it := range v.Secret.Items {
			// The file is named after the variable: a role's NATS
			// password key (nats.passwordKey) is mounted as NATS_PASSWORD.
			if v.Name == "secrets" && env[it.Path+"_FILE"] == "" {
				t.Errorf("deployment %s: secret %s mounted as %s but no %s_FILE points to it", d.Name, it.Key, it.Path, it.Path)
			}
		}
	}
	for _, m := range c.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("deployment %s: mount of unknown volume %s", d.Name, m.Name)
		}
	}
}

// startSpare is the startup probe's time beyond the provisionings: the
// NATS connect and the rest of a start.
const startSpare = 30 * time.Second

// probeBudget is how long a probe may fail before the kubelet acts, with
// Kubernetes' defaults for what it leaves out; 0 without a probe.
func probeBudget(p *corev1.Probe) time.Duration {
	if p == nil {
		return 0
	}
	return time.Duration(p.InitialDelaySeconds+cmp.Or(p.PeriodSeconds, 10)*cmp.Or(p.FailureThreshold, 3)) * time.Second
}

func hasItem(items []corev1.KeyToPath, path string) bool {
	for _, it := range items {
		if it.Path == path {
			return true
		}
	}
	return false
}

// checkSelectors: each Deployment's selector matches its pods; each
// Service, PodDisruptionBudget and NetworkPolicy selects the pods of
// exactly one Deployment; the ServiceMonitor selects every Service.
func checkSelectors(t *testing.T, objs objects) {
	t.Helper()
	deployments := of[*appsv1.Deployment](objs)
	for _, d := range deployments {
		sel := labels.SelectorFromSet(d.Spec.Selector.MatchLabels)
		if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("deployment %s: selector %v does not match its pods %v", d.Name, d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
		}
	}
	selects := func(kind, name string, set map[string]string) {
		t.Helper()
		n := 0
		for _, d := range deployments {
			if labels.SelectorFromSet(set).Matches(labels.Set(d.Spec.Template.Labels)) {
				n++
			}
		}
		if n != 1 || len(set) == 0 {
			t.Errorf("%s %s: selector %v matches the pods of %d deployments, want 1", kind, name, set, n)
		}
	}
	for _, s := range of[*corev1.Service](objs) {
		selects("service", s.Name, s.Spec.Selector)
		// A forwarder is unready while Orthanc or a token endpoint is
		// down, but its Service carries only the admin API (dead
		// letters, replay), which needs JetStream alone: it must stay
		// reachable then. The ingest's Service routes to ready pods only.
		if want := component(s.Labels) != "ingest"; s.Spec.PublishNotReadyAddresses != want {
			t.Errorf("service %s: publishNotReadyAddresses %v, want %v", s.Name, s.Spec.PublishNotReadyAddresses, want)
		}
		if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].TargetPort.String() != "http" {
			t.Errorf("service %s: ports %v, want one to the pods' port http", s.Name, s.Spec.Ports)
		}
	}
	for _, p := range of[*policyv1.PodDisruptionBudget](objs) {
		selects("PodDisruptionBudget", p.Name, p.Spec.Selector.MatchLabels)
		// Pods are unready while JetStream, Orthanc or a destination's
		// token endpoint is down, all of them at once; with the default
		// policy (IfHealthyBudget) none may then be evicted, and every
		// node drain waits for the outage to end.
		if pol := p.Spec.UnhealthyPodEvictionPolicy; pol == nil || *pol != policyv1.AlwaysAllow {
			t.Errorf("PodDisruptionBudget %s: unhealthyPodEvictionPolicy %v, want AlwaysAllow: an outage that makes every pod unready would block node drains", p.Name, pol)
		}
	}
	for _, np := range of[*networkingv1.NetworkPolicy](objs) {
		selects("NetworkPolicy", np.Name, np.Spec.PodSelector.MatchLabels)
		for _, r := range np.Spec.Ingress {
			if len(r.From) == 0 {
				t.Errorf("NetworkPolicy %s: an ingress rule without peers admits everyone", np.Name)
			}
		}
	}
	for _, sm := range of[*monitoringv1.ServiceMonitor](objs) {
		sel := labels.SelectorFromSet(sm.Spec.Selector.MatchLabels)
		for _, s := range of[*corev1.Service](objs) {
			if !sel.Matches(labels.Set(s.Labels)) {
				t.Errorf("ServiceMonitor %s does not select service %s", sm.Name, s.Name)
				continue
			}
			// Exactly one endpoint scrapes it, with the scheme of the
			// pods behind it.
			var eps []monitoringv1.Endpoint
			for _, ep := range sm.Spec.Endpoints {
				if endpointKeeps(t, ep, component(s.Labels)) {
					eps = append(eps, ep)
				}
			}
			if len(eps) != 1 {
				t.Errorf("ServiceMonitor %s: %d endpoints scrape service %s, want 1", sm.Name, len(eps), s.Name)
				continue
			}
			for _, d := range deployments {
				if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
					if got, want := eps[0].Scheme.String(), listenScheme(envOf(d)); cmp.Or(got, "http") != want {
						t.Errorf("ServiceMonitor %s: service %s scraped over %q, want %s (its pods' TLS_LISTEN_CERT_FILE)", sm.Name, s.Name, got, want)
					}
				}
			}
		}
		for _, ep := range sm.Spec.Endpoints {
			if ep.Port != "http" || ep.Path != "/metrics" {
				t.Errorf("ServiceMonitor %s: endpoint %+v, want port http, /metrics", sm.Name, ep)
			}
			// The job alerts.yml's StowlineDown matches, whatever the release.
			job := false
			for _, r := range ep.RelabelConfigs {
				job = job || r.TargetLabel == "job" && r.Replacement != nil && *r.Replacement == "stowline-$1" &&
					len(r.SourceLabels) == 1 && r.SourceLabels[0] == componentLabel
			}
			if !job {
				t.Errorf("ServiceMonitor %s: no relabeling sets job to stowline-<component>", sm.Name)
			}
		}
	}
}

// componentLabel is a Service's component label as Prometheus's
// Kubernetes discovery names it.
const componentLabel = "__meta_kubernetes_service_label_app_kubernetes_io_component"

// endpointKeeps reports whether a ServiceMonitor endpoint's keep and
// drop relabelings on the component label let a Service of that
// component through (Prometheus anchors the regex).
func endpointKeeps(t *testing.T, ep monitoringv1.Endpoint, component string) bool {
	t.Helper()
	for _, r := range ep.RelabelConfigs {
		action := strings.ToLower(r.Action)
		if action != "keep" && action != "drop" {
			continue
		}
		if len(r.SourceLabels) != 1 || r.SourceLabels[0] != componentLabel {
			t.Errorf("endpoint %s: a %s relabeling on %v, want on the component label only", ep.Port, action, r.SourceLabels)
			continue
		}
		re, err := regexp.Compile("^(?:" + cmp.Or(r.Regex, "(.*)") + ")$")
		if err != nil {
			t.Errorf("endpoint %s: regex %q: %v", ep.Port, r.Regex, err)
			continue
		}
		if re.MatchString(component) != (action == "keep") {
			return false
		}
	}
	return true
}

// listenScheme is the scheme a container's listeners serve:
// TLS_LISTEN_CERT_FILE set makes them HTTPS only (config.ListenTLS).
func listenScheme(env map[string]string) string {
	if env["TLS_LISTEN_CERT_FILE"] != "" {
		return "https"
	}
	return "http"
}

// checkScaledObject: it scales a rendered forwarder Deployment on the
// stream and the consumers the code creates for the destinations that
// Deployment serves, one trigger each: a destination's routine consumer
// (trigger destination-<name>) and its stat lane's
// (destination-<name>-stat), not its low lane's.
func checkScaledObject(t *testing.T, so *scaledObject, src goFacts, deployments []*appsv1.Deployment) {
	t.Helper()
	var target *appsv1.Deployment
	for _, d := range deployments {
		if d.Name == so.Spec.ScaleTargetRef.Name && so.Spec.ScaleTargetRef.Kind == "Deployment" && component(d.Labels) != "ingest" {
			target = d
		}
	}
	if target == nil {
		t.Fatalf("ScaledObject %s: target %+v is no forwarder Deployment of the release", so.Name, so.Spec.ScaleTargetRef)
	}
	want := map[string]bool{}
	wantNames := map[string]string{} // consumer: trigger name
	for _, dest := range servedDestinations(envOf(target)) {
		name := "destination-" + strings.ToLower(strings.ReplaceAll(dest, "_", "-"))
		want[src.consumerName(dest)] = true
		wantNames[src.consumerName(dest)] = name
		want[src.statConsumerName(dest)] = true
		wantNames[src.statConsumerName(dest)] = "stat-" + name
	}
	got := map[string]bool{}
	names := map[string]bool{}
	for _, tr := range so.Spec.Triggers {
		// KEDA refuses a ScaledObject with two triggers of one name.
		if names[tr.Name] {
			t.Errorf("ScaledObject %s: two triggers named %q", so.Name, tr.Name)
		}
		names[tr.Name] = true
		if tr.Type != "nats-jetstream" {
			t.Errorf("ScaledObject %s: trigger type %q, want nats-jetstream", so.Name, tr.Type)
		}
		m := tr.Metadata
		if m["stream"] != src.eventStream {
			t.Errorf("ScaledObject %s: stream %q, want %q (internal/natsjs/topology.go)", so.Name, m["stream"], src.eventStream)
		}
		if got[m["consumer"]] {
			t.Errorf("ScaledObject %s: two triggers on consumer %q", so.Name, m["consumer"])
		}
		got[m["consumer"]] = true
		if n, ok := wantNames[m["consumer"]]; ok && tr.Name != n {
			t.Errorf("ScaledObject %s: trigger on %q named %q, want %q", so.Name, m["consumer"], tr.Name, n)
		}
		for _, k := range []string{"natsServerMonitoringEndpoint", "account", "lagThreshold"} {
			if m[k] == "" {
				t.Errorf("ScaledObject %s: trigger has no %s", so.Name, k)
			}
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("ScaledObject %s: triggers on consumers %v, want those of the destinations %s serves: %v (natsjs.ConsumerName and the stat lane's natsjs.LaneConsumerName)", so.Name, slices.Sorted(maps.Keys(got)), target.Name, slices.Sorted(maps.Keys(want)))
	}
}

// consumerName is natsjs.ConsumerName: the default destination's consumer
// is ForwarderConsumer, another's ForwarderConsumer-<name>.
func (g goFacts) consumerName(destination string) string {
	if destination == "default" {
		return g.forwarderConsumer
	}
	return g.forwarderConsumer + "-" + destination
}

// statConsumerName is natsjs.LaneConsumerName for the stat lane:
// StatConsumerPrefix<name>, the default destination's too.
func (g goFacts) statConsumerName(destination string) string {
	return g.statConsumerPrefix + destination
}

// triggeredConsumers are the consumers KEDA must scale a group on for
// its destinations, sorted: each one's routine and stat-lane consumers.
func (g goFacts) triggeredConsumers(destinations ...string) []string {
	var out []string
	for _, d := range destinations {
		out = append(out, g.consumerName(d), g.statConsumerName(d))
	}
	return slices.Sorted(slices.Values(out))
}

// consumersOf are the consumers of a ScaledObject's triggers, sorted.
func consumersOf(so *scaledObject) []string {
	var out []string
	for _, tr := range so.Spec.Triggers {
		out = append(out, tr.Metadata["consumer"])
	}
	return slices.Sorted(slices.Values(out))
}

// envOf is the environment of a Deployment's container.
func envOf(d *appsv1.Deployment) map[string]string {
	env := map[string]string{}
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	return env
}

// destinationNames are the names DESTINATIONS declares; none without it.
func destinationNames(env map[string]string) []string {
	if env["DESTINATIONS"] == "" {
		return nil
	}
	return strings.Split(env["DESTINATIONS"], ",")
}

// servedDestinations are the destinations a forwarder serves:
// FORWARDER_DESTINATIONS, else every destination (default without
// DESTINATIONS).
func servedDestinations(env map[string]string) []string {
	if s := env["FORWARDER_DESTINATIONS"]; s != "" {
		return strings.Split(s, ",")
	}
	if names := destinationNames(env); names != nil {
		return names
	}
	return []string{"default"}
}

// destinationPrefix is config.DestinationVarPrefix.
func destinationPrefix(name string) string {
	return "DESTINATION_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_"
}

// destinationVar reports whether name is a variable of one of the
// destinations: its prefix and URL, MATCH, INSTANCE_MATCH or one of the
// default destination's variables (a secret also as _FILE).
func destinationVar(name string, destinations []string, src goFacts) bool {
	for _, d := range destinations {
		rest, ok := strings.CutPrefix(name, destinationPrefix(d))
		if !ok {
			continue
		}
		switch rest {
		case "URL", "MATCH", "INSTANCE_MATCH":
			return true
		case "DICOMWEB_URL": // a destination's is its URL
			continue
		}
		if _, known := src.destinationVars[rest]; known {
			return true
		}
		if base, file := strings.CutSuffix(rest, "_FILE"); file && src.destinationVars[base] {
			return true
		}
	}
	return false
}

// checkDestinationsEnv checks a forwarder's destinations as the code
// will: without DESTINATIONS, DICOMWEB_URL; with it, each destination's
// URL, none of the default destination's variables (the forwarder refuses
// them), and FORWARDER_DESTINATIONS among the declared names.
func checkDestinationsEnv(t *testing.T, deployment string, env map[string]string, src goFacts) {
	t.Helper()
	names := destinationNames(env)
	if names == nil {
		if env["DICOMWEB_URL"] == "" {
			t.Errorf("deployment %s: neither DICOMWEB_URL nor DESTINATIONS set", deployment)
		}
		if env["FORWARDER_DESTINATIONS"] != "" {
			t.Errorf("deployment %s: FORWARDER_DESTINATIONS without DESTINATIONS", deployment)
		}
		return
	}
	for v, secret := range src.destinationVars {
		if env[v] != "" || (secret && env[v+"_FILE"] != "") {
			t.Errorf("deployment %s: %s set with DESTINATIONS: the forwarder refuses the one destination's variables", deployment, v)
		}
	}
	for _, n := range names {
		if env[destinationPrefix(n)+"URL"] == "" {
			t.Errorf("deployment %s: destination %s has no %sURL", deployment, n, destinationPrefix(n))
		}
	}
	for _, s := range servedDestinations(env) {
		if !slices.Contains(names, s) {
			t.Errorf("deployment %s: FORWARDER_DESTINATIONS names %q, which DESTINATIONS does not", deployment, s)
		}
	}
}

// checkForwarderGroups: every forwarder Deployment has the same
// destinations' settings (client secrets aside: each gets those of the
// destinations it serves only), no client secret of a destination it does
// not serve, and the same
// FORWARDER_ACK_WAIT, FORWARDER_MAX_DELIVERIES and DEADLETTER_RETENTION
// (each sets every destination's consumer, and the dead-letter stream, to
// its own), and each destination is served by exactly one Deployment.
func checkForwarderGroups(t *testing.T, deployments []*appsv1.Deployment) {
	t.Helper()
	shared := func(env map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range env {
			// Secrets and key files (destinations[].secretFiles) go to
			// the group serving their destination only.
			if strings.HasSuffix(k, "_OAUTH_CLIENT_SECRET_FILE") || strings.HasPrefix(v, "/run/secrets/stowline-dest-file-") {
				continue
			}
			if k == "DESTINATIONS" || strings.HasPrefix(k, "DESTINATION_") || k == "FORWARDER_ACK_WAIT" || k == "FORWARDER_MAX_DELIVERIES" || k == "DEADLETTER_RETENTION" {
				out[k] = v
			}
		}
		return out
	}
	var first *appsv1.Deployment
	servedBy := map[string][]string{}
	for _, d := range deployments {
		if component(d.Labels) == "ingest" {
			continue
		}
		env := envOf(d)
		if first == nil {
			first = d
			for _, n := range destinationNames(env) {
				servedBy[n] = nil
			}
		} else if a, b := shared(envOf(first)), shared(env); !maps.Equal(a, b) {
			t.Errorf("forwarder deployments %s and %s differ in their destinations' variables:\n%v\n%v", first.Name, d.Name, a, b)
		}
		for _, s := range servedDestinations(env) {
			servedBy[s] = append(servedBy[s], d.Name)
		}
		for _, n := range destinationNames(env) {
			if slices.Contains(servedDestinations(env), n) {
				continue
			}
			secret := destinationPrefix(n) + "OAUTH_CLIENT_SECRET"
			if env[secret+"_FILE"] != "" || env[secret] != "" {
				t.Errorf("forwarder deployment %s: %s(_FILE) set, and it does not serve %s", d.Name, secret, n)
			}
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.Name == "destination-"+strings.ToLower(strings.ReplaceAll(n, "_", "-")) {
					t.Errorf("forwarder deployment %s: volume %s mounted, and it does not serve %s", d.Name, v.Name, n)
				}
				if v.Secret != nil && slices.ContainsFunc(v.Secret.Items, func(it corev1.KeyToPath) bool { return it.Key == secret }) {
					t.Errorf("forwarder deployment %s: volume %s holds %s, and it does not serve %s", d.Name, v.Name, secret, n)
				}
			}
		}
	}
	for dest, by := range servedBy {
		if len(by) != 1 {
			t.Errorf("destination %s is served by %v, want exactly one forwarder deployment", dest, by)
		}
	}
}

// TestSeveralSources: with env.ORTHANC_SOURCES naming several Orthanc
// sources, each source's password reaches both commands as a file.
func TestSeveralSources(t *testing.T) {
	values := merged(required(), twoSources("http://orthanc.pacs.svc:8042", "http://orthanc.cardio.svc:8042"))
	objs := render(t, values)
	checkRelease(t, objs)
	for _, d := range of[*appsv1.Deployment](objs) {
		env := envOf(d)
		for _, v := range []string{"ORTHANC_MAIN_PASSWORD_FILE", "ORTHANC_CARDIO_2_PASSWORD_FILE"} {
			if env[v] == "" {
				t.Errorf("deployment %s: %s not set", d.Name, v)
			}
		}
	}
}

// TestSeveralSourcesRefuseTheOneSource: with ORTHANC_SOURCES the ingest
// and the forwarders refuse ORTHANC_URL, _USERNAME, _SOURCE_NAME and the
// password (internal/config: "is set but ORTHANC_SOURCES names the
// sources"), which the chart sets from orthanc.* and the Secret's
// ORTHANC_PASSWORD key. A site adding a second Orthanc that kept those
// rendered without a word, and every pod then exited at start. The chart
// refuses it, naming each value, in whichever env map ORTHANC_SOURCES is.
func TestSeveralSourcesRefuseTheOneSource(t *testing.T) {
	const but = " set but ORTHANC_SOURCES (env) names the sources: configure each source with ORTHANC_<NAME>_*"
	sources := func(over map[string]any) map[string]any {
		return merged(merged(required(), twoSources("http://orthanc.pacs.svc:8042", "http://orthanc.cardio.svc:8042")), over)
	}
	orthanc := func(k, v string) map[string]any { return map[string]any{"orthanc": map[string]any{k: v}} }
	// ORTHANC_SOURCES in one component's env map rather than the shared one.
	inMap := func(where string) map[string]any {
		v := merged(required(), map[string]any{"secrets": map[string]any{"values": map[string]any{"ORTHANC_PASSWORD": ""}}})
		v["orthanc"] = map[string]any{"url": "http://orthanc.pacs.svc:8042"}
		src := map[string]any{"ORTHANC_SOURCES": "main", "ORTHANC_MAIN_URL": "http://orthanc.pacs.svc:8042"}
		switch where {
		case "ingest.env":
			v["ingest"] = map[string]any{"env": src}
		case "forwarders[default].env":
			f := v["forwarders"].([]any)[0].(map[string]any)
			maps.Copy(f["env"].(map[string]any), src)
		}
		return v
	}
	tests := []struct {
		name   string
		values map[string]any
		want   string // "": rendered
	}{
		{"the sources alone", sources(nil), ""},
		{"ORTHANC_SOURCES empty", merged(required(), map[string]any{"env": map[string]any{"ORTHANC_SOURCES": ""}}), ""},
		{"orthanc.url", sources(orthanc("url", "http://orthanc.pacs.svc:8042")), "orthanc.url (ORTHANC_URL)" + but},
		{"orthanc.username", sources(orthanc("username", "stowline")), "orthanc.username (ORTHANC_USERNAME)" + but},
		{"orthanc.sourceName", sources(orthanc("sourceName", "orthanc-main")), "orthanc.sourceName (ORTHANC_SOURCE_NAME)" + but},
		{"ORTHANC_PASSWORD in values", sources(map[string]any{"secrets": map[string]any{"values": map[string]any{"ORTHANC_PASSWORD": "x"}}}),
			"the Secret's ORTHANC_PASSWORD key (ORTHANC_PASSWORD_FILE)" + but},
		{"ORTHANC_PASSWORD in an existing Secret", sources(map[string]any{"secrets": map[string]any{"existingSecret": "mine",
			"existingSecretKeys": []any{"INGEST_TOKEN", "ORTHANC_MAIN_PASSWORD", "ORTHANC_PASSWORD", "OAUTH_CLIENT_SECRET"}}}),
			"the Secret's ORTHANC_PASSWORD key (ORTHANC_PASSWORD_FILE)" + but},
		{"ORTHANC_PASSWORD from a Secret of one's own", sources(map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{
			"ORTHANC_PASSWORD": map[string]any{"valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": "orthanc", "key": "password"}}}}}}),
			"ORTHANC_PASSWORD in forwarderDefaults.env" + but},
		// The upgrade of a one-Orthanc site as the review found it: all at once.
		{"the one source's values kept", merged(required(), map[string]any{"env": map[string]any{
			"ORTHANC_SOURCES": "pacs-1,pacs-2", "ORTHANC_PACS_1_URL": "http://orthanc.pacs.svc:8042", "ORTHANC_PACS_2_URL": "http://orthanc-2.pacs.svc:8042",
		}}), "orthanc.url (ORTHANC_URL), orthanc.username (ORTHANC_USERNAME), orthanc.sourceName (ORTHANC_SOURCE_NAME), the Secret's ORTHANC_PASSWORD key (ORTHANC_PASSWORD_FILE)" + but},
		// Only env's is read for the sources' passwords and orthanc.url's
		// check: elsewhere, with orthanc.url set or not, no values rendered
		// (one check said leave it unset, the other that it is required).
		{"in ingest.env", inMap("ingest.env"), "ORTHANC_SOURCES in ingest.env: set it in env"},
		{"in a group's env", inMap("forwarders[default].env"), "ORTHANC_SOURCES in forwarders[default].env: set it in env"},
		{"in ingest.env, orthanc.url unset", func() map[string]any { v := inMap("ingest.env"); v["orthanc"] = map[string]any{}; return v }(),
			"ORTHANC_SOURCES in ingest.env: set it in env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRenderError(t, tt.values, tt.want)
			if tt.want != "" {
				// The templates' own check, not only the schema.
				checkRenderErrorWithoutSchema(t, tt.values, tt.want)
			}
		})
	}
}

// TestNetworkPolicyOpensTheURLsPorts: the egress rules open the ports the
// configured URLs name (NATS servers, each Orthanc source, a forwarder
// group's destination and its token endpoint), besides the listed
// defaults. A policy listing
// 4222, 8042 and 443 only dropped the connections of an Orthanc on
// https:// (443 is the destination's rule, forwarders only) or on 8080,
// NATS on 4223, or an archive on 8443, with no error anywhere: the pods
// timed out.
func TestNetworkPolicyOpensTheURLsPorts(t *testing.T) {
	values := merged(merged(required(), twoSources("https://orthanc.pacs.svc", "http://orthanc.cardio.svc:8080")),
		map[string]any{"nats": map[string]any{"url": "nats://nats-a.nats.svc:4223, nats://nats-b.nats.svc:4223"}})
	values["forwarders"] = []any{map[string]any{"name": "default", "dicomwebURL": "https://archive.example.org:8443/dicom-web",
		"env": map[string]any{"OAUTH_TOKEN_URL": "https://keycloak.example.org:8444/realms/imaging/protocol/openid-connect/token", "OAUTH_CLIENT_ID": "stowline"}}}
	// A source's URL set in a component's env map, not the shared one.
	values["ingest"] = map[string]any{"env": map[string]any{"ORTHANC_CARDIO_2_URL": "http://orthanc.cardio.svc:8081"}}
	want := map[string][]int32{
		"ingest":            {4223, 443, 8080, 8081, 4222, 8042},
		"forwarder-default": {4223, 443, 8080, 8081, 8443, 8444},
	}
	for _, np := range of[*networkingv1.NetworkPolicy](render(t, values)) {
		open := map[int32]bool{}
		for _, r := range np.Spec.Egress {
			seen := map[string]bool{}
			for _, p := range r.Ports {
				key := string(*p.Protocol) + "/" + p.Port.String()
				if seen[key] {
					t.Errorf("NetworkPolicy %s: %s twice in one rule", np.Name, key)
				}
				seen[key], open[p.Port.IntVal] = true, true
			}
		}
		c := component(np.Labels)
		for _, p := range want[c] {
			if !open[p] {
				t.Errorf("NetworkPolicy %s: egress port %d not open (open: %v)", np.Name, p, slices.Sorted(maps.Keys(open)))
			}
		}
		if c == "ingest" && (open[8443] || open[8444]) {
			t.Errorf("NetworkPolicy %s: the destination's or its token endpoint's port is open to the ingest", np.Name)
		}
	}

	// The token endpoint set in the shared env, which the forwarders'
	// containers get too: its port was not opened, and every token fetch
	// timed out.
	values["forwarders"] = []any{map[string]any{"name": "default", "dicomwebURL": "https://archive.example.org:8443/dicom-web"}}
	values = merged(values, map[string]any{"env": map[string]any{"OAUTH_TOKEN_URL": "https://keycloak.idp.svc:8445/realms/imaging/protocol/openid-connect/token", "OAUTH_CLIENT_ID": "stowline"}})
	for _, np := range of[*networkingv1.NetworkPolicy](render(t, values)) {
		if component(np.Labels) != "forwarder-default" {
			continue
		}
		open := map[int32]bool{}
		for _, r := range np.Spec.Egress {
			for _, p := range r.Ports {
				open[p.Port.IntVal] = true
			}
		}
		if !open[8445] {
			t.Errorf("NetworkPolicy %s: the shared env's token endpoint port 8445 not open (open: %v)", np.Name, slices.Sorted(maps.Keys(open)))
		}
	}
}

// A NATS URL over WebSocket without a port opens its scheme's port (80,
// 443), not 4222.
func TestNetworkPolicyWebSocketNATSPort(t *testing.T) {
	values := merged(required(), map[string]any{"nats": map[string]any{"url": "wss://nats.example.org, ws://nats-b.example.org"}})
	for _, np := range of[*networkingv1.NetworkPolicy](render(t, values)) {
		open := map[int32]bool{}
		for _, r := range np.Spec.Egress {
			for _, p := range r.Ports {
				open[p.Port.IntVal] = true
			}
		}
		if !open[443] || !open[80] {
			t.Errorf("NetworkPolicy %s: egress ports %v, want 443 and 80 for wss:// and ws://", np.Name, slices.Sorted(maps.Keys(open)))
		}
	}
}

// TestNetworkPolicyDestinationInTheCluster: the destination rule's
// default, 0.0.0.0/0, is meant as anywhere, but network plugins such as
// Cilium match no pod with an ipBlock: an archive or a token endpoint
// (Keycloak) running in the cluster was cut off, the forwarders timing
// out. With 0.0.0.0/0 the rule lets in every namespace's pods too; with
// narrower blocks, only those.
func TestNetworkPolicyDestinationInTheCluster(t *testing.T) {
	tests := []struct {
		name  string
		cidrs []any // nil: the default
		pods  bool
	}{
		{"the default, anywhere", nil, true},
		{"IPv6 anywhere", []any{"::/0"}, true},
		{"an address block", []any{"203.0.113.0/24"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values := required()
			if tt.cidrs != nil {
				values = merged(values, map[string]any{"networkPolicy": map[string]any{"egress": map[string]any{"destination": map[string]any{"cidrs": tt.cidrs}}}})
			}
			for _, np := range of[*networkingv1.NetworkPolicy](render(t, values)) {
				if component(np.Labels) != "forwarder-default" {
					continue
				}
				pods := false
				for _, r := range np.Spec.Egress {
					ipBlock := false
					for _, p := range r.To {
						ipBlock = ipBlock || p.IPBlock != nil
					}
					for _, p := range r.To {
						pods = pods || ipBlock && p.NamespaceSelector != nil && len(p.NamespaceSelector.MatchLabels) == 0 &&
							len(p.NamespaceSelector.MatchExpressions) == 0 && p.PodSelector == nil
					}
				}
				if pods != tt.pods {
					t.Errorf("NetworkPolicy %s: destination rule lets in every pod: %v, want %v", np.Name, pods, tt.pods)
				}
			}
		})
	}
}

// TestImagePullSecretsBothForms: values.yaml took imagePullSecrets as
// names, and Kubernetes' own form, [{name: regcred}], which most charts
// take, rendered the name "map[name:regcred]": the API server accepted it
// and every pull failed as unauthorized. Both forms name the Secret.
func TestImagePullSecretsBothForms(t *testing.T) {
	for name, secrets := range map[string][]any{
		"names":           {"regcred", "mirror"},
		"Kubernetes' own": {map[string]any{"name": "regcred"}, map[string]any{"name": "mirror"}},
	} {
		t.Run(name, func(t *testing.T) {
			for _, d := range of[*appsv1.Deployment](render(t, merged(required(), map[string]any{"imagePullSecrets": secrets}))) {
				var got []string
				for _, s := range d.Spec.Template.Spec.ImagePullSecrets {
					got = append(got, s.Name)
				}
				if want := []string{"regcred", "mirror"}; !slices.Equal(got, want) {
					t.Errorf("deployment %s: imagePullSecrets %q, want %q", d.Name, got, want)
				}
			}
		})
	}
}

// twoSources configures two Orthanc sources, main and cardio-2, at the
// URLs given, with their passwords in the chart's Secret.
func twoSources(mainURL, cardioURL string) map[string]any {
	return map[string]any{
		"orthanc": map[string]any{"url": "", "username": "", "sourceName": ""},
		"env": map[string]any{
			"ORTHANC_SOURCES":  "main,cardio-2",
			"ORTHANC_MAIN_URL": mainURL, "ORTHANC_MAIN_USERNAME": "stowline",
			"ORTHANC_CARDIO_2_URL": cardioURL, "ORTHANC_CARDIO_2_USERNAME": "stowline",
		},
		"secrets": map[string]any{"values": map[string]any{
			"ORTHANC_PASSWORD":          "",
			"ORTHANC_MAIN_PASSWORD":     "main-password",
			"ORTHANC_CARDIO_2_PASSWORD": "cardio-password",
		}},
	}
}
