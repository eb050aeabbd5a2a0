{{/*
Names, labels, and the environment each container gets. The variables are
the code's (internal/config); deploy/helm/chartcheck checks each one
against `ingest -h` and `forwarder -h`.
*/}}

{{- define "stowline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stowline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "stowline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "stowline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stowline
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "ingest"). */}}
{{- define "stowline.selector" -}}
app.kubernetes.io/name: {{ include "stowline.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The default topologySpreadConstraints of a component's pods: over the
nodes where the scheduler can, so that one node lost or drained takes
one replica, not the ingest (webhook and reconciler) as a whole; the
kube-scheduler's own default lets three share a node.
(dict "root" $ "component" "ingest").
*/}}
{{- define "stowline.spreadOverNodes" -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "stowline.selector" . | nindent 6 }}
  matchLabelKeys: [pod-template-hash]
{{- end -}}

{{- define "stowline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "stowline.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stowline.secretName" -}}
{{- default (printf "%s-secrets" (include "stowline.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* image: (dict "root" $ "repository" .Values.image.ingest). */}}
{{- define "stowline.image" -}}
{{- $repo := .repository -}}
{{- with .root.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{/*
A role's NATS credential, as YAML {credsSecret, credsFrom, passwordKey}:
its own (ingest.nats, or the group's nats over forwarderDefaults.nats)
over the global nats.credsSecret, so that the webhook-facing ingest need
not hold the forwarders' rights ($JS.ACK..., the ledger's writes:
docs/nats-permissions.md). passwordKey: the key of `secrets` mounted as
the role's NATS_PASSWORD file. (dict "root" $ "role" "ingest"), or
"forwarder" with "f" $forwarder.
*/}}
{{- define "stowline.natsAuth" -}}
{{- $root := .root -}}
{{- $own := dict -}}
{{- $where := "ingest.nats" -}}
{{- if eq .role "ingest" -}}
{{- $own = default dict $root.Values.ingest.nats -}}
{{- else -}}
{{- $own = default dict .f.nats -}}
{{- $where = printf "forwarders[%s].nats (or forwarderDefaults.nats)" .f.name -}}
{{- end -}}
{{- $out := dict "credsSecret" (toString (default "" $root.Values.nats.credsSecret)) "credsFrom" "nats.credsSecret" "passwordKey" "NATS_PASSWORD" -}}
{{- with $own.credsSecret }}{{ $_ := set $out "credsSecret" (toString .) }}{{ $_ := set $out "credsFrom" (printf "%s.credsSecret" $where) }}{{ end -}}
{{- with $own.passwordKey }}{{ $_ := set $out "passwordKey" (toString .) }}{{ end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The variable a key of `secrets` is mounted as for a role: its own
name, NATS_PASSWORD for the role's passwordKey. (dict "key" K "auth"
stowline.natsAuth). */}}
{{- define "stowline.secretKeyVar" -}}
{{- ternary "NATS_PASSWORD" .key (eq .key .auth.passwordKey) -}}
{{- end -}}

{{/* The keys of `secrets` each command reads: (dict "root" $). */}}
{{- define "stowline.secretVars.ingest" -}}
{{- $auth := include "stowline.natsAuth" (dict "root" .root "role" "ingest") | fromYaml -}}
{{- $out := list "INGEST_TOKEN" "INGEST_TOKEN_PREVIOUS" "INGEST_HMAC_SECRET" "ADMIN_TOKEN" "ORTHANC_PASSWORD" $auth.passwordKey -}}
{{- join " " (concat $out (splitList " " (include "stowline.sourceSecretVars" .root))) -}}
{{- end -}}
{{/*
Each source's password when env.ORTHANC_SOURCES names several: "pacs-2"
reads ORTHANC_PACS_2_PASSWORD (config.SourceVarPrefix).
*/}}
{{- define "stowline.sourceSecretVars" -}}
{{- $out := list -}}
{{- range splitList "," (toString (default "" .Values.env.ORTHANC_SOURCES)) -}}
{{- with trim . }}{{ $out = append $out (printf "ORTHANC_%s_PASSWORD" (upper (replace "-" "_" .))) }}{{ end -}}
{{- end -}}
{{- join " " $out -}}
{{- end -}}
{{/*
A forwarder group's: the default destination's OAUTH_CLIENT_SECRET without
destinations, with them the DESTINATION_<NAME>_OAUTH_CLIENT_SECRET of each
destination the group serves only (a forwarder reads the settings and
secrets of those only: internal/config, readDynamic).
(dict "root" $ "f" $forwarder).
*/}}
{{- define "stowline.secretVars.forwarder" -}}
{{- $root := .root -}}
{{- $auth := include "stowline.natsAuth" (dict "root" $root "role" "forwarder" "f" .f) | fromYaml -}}
{{- $out := concat (list "ADMIN_TOKEN" "ORTHANC_PASSWORD" $auth.passwordKey) (splitList " " (include "stowline.sourceSecretVars" $root)) -}}
{{- if $root.Values.destinations -}}
{{- range (include "stowline.servedDestinations" . | fromYamlArray) }}{{ $out = append $out (printf "%sOAUTH_CLIENT_SECRET" (include "stowline.destinationPrefix" .)) }}{{ end -}}
{{- else -}}
{{- $out = prepend $out "OAUTH_CLIENT_SECRET" -}}
{{- end -}}
{{- join " " $out -}}
{{- end -}}

{{/* The prefix of a destination's variables: "ai-2" is DESTINATION_AI_2_. */}}
{{- define "stowline.destinationPrefix" -}}
{{- printf "DESTINATION_%s_" (upper (replace "-" "_" .)) -}}
{{- end -}}

{{/* Where a destination's own client Secret is mounted. */}}
{{- define "stowline.destinationSecretDir" -}}
{{- printf "/run/secrets/stowline-destination-%s" (lower (replace "_" "-" .)) -}}
{{- end -}}

{{/*
The key files a forwarder group's pods get, as a list (YAML) of {volume,
secretName, key, dir, var, where}: the group's secretFiles (the variable
as written) and the secretFiles of each destination it serves
(DESTINATION_<NAME>_ + the variable), each a Secret's key mounted in its
own directory, the variable naming the file. Only this group's pods mount
them: not the ingest's (webhook-facing), nor the other groups'.
(dict "root" $ "f" $forwarder).
*/}}
{{- define "stowline.secretFiles" -}}
{{- $root := .root -}}
{{- $f := .f -}}
{{- $out := list -}}
{{- range $i, $sf := (default list $f.secretFiles) -}}
{{- $out = append $out (dict "volume" (printf "group-file-%d" $i) "secretName" $sf.secretName "key" $sf.key "dir" (printf "/run/secrets/stowline-group-file-%d" $i) "var" $sf.env "where" (printf "forwarders[%s].secretFiles[%d]" $f.name $i)) -}}
{{- end -}}
{{- if $root.Values.destinations -}}
{{- $served := include "stowline.servedDestinations" . | fromYamlArray -}}
{{- range $d := $root.Values.destinations -}}
{{- if has $d.name $served -}}
{{- $n := lower (replace "_" "-" $d.name) -}}
{{- range $i, $sf := (default list $d.secretFiles) -}}
{{- $out = append $out (dict "volume" (printf "dest-file-%s-%d" $n $i) "secretName" $sf.secretName "key" $sf.key "dir" (printf "/run/secrets/stowline-dest-file-%s-%d" $n $i) "var" (printf "%s%s" (include "stowline.destinationPrefix" $d.name) $sf.env) "where" (printf "destinations[%s].secretFiles[%d]" $d.name $i)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
The checksum of what a forwarder group's key files hold
(stowline.secretFiles): each mounted key of its Secret, read from the
cluster (lookup) at install and upgrade. Most are read at startup only
(DEIDENTIFY_KEY_FILE, TLS_CA_FILE...), and the Secrets are not the
chart's, so checksum/secrets missed them: a `helm upgrade` after a key
changed left the pods on the old one. `helm template` (Argo CD) reads
nothing, and the checksum then changes only with the list. Each key is
hashed with its Secret's uid, which only those who may read the Secret
see: the annotation, readable by anyone who can read the pods, does not
let them test guesses of a weak key. Empty without key files, or with
secretFilesChecksum false (lookup fails the render where Helm's identity
may not get the Secrets). (dict "root" $ "f" $forwarder).
*/}}
{{- define "stowline.secretFilesChecksum" -}}
{{- $root := .root -}}
{{- $files := include "stowline.secretFiles" . | fromYamlArray -}}
{{- if and $files $root.Values.secretFilesChecksum -}}
{{- $held := list -}}
{{- range $files -}}
{{- $secret := lookup "v1" "Secret" $root.Release.Namespace (toString .secretName) -}}
{{- $held = append $held (list (toString .secretName) (toString .key) (dig "metadata" "uid" "" $secret) (dig "data" (toString .key) "" $secret)) -}}
{{- end -}}
{{- toJson $held | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* The names of the declared destinations, as a list (YAML). */}}
{{- define "stowline.destinationNames" -}}
{{- $names := list -}}
{{- range .Values.destinations }}{{ $names = append $names .name }}{{ end -}}
{{- toYaml $names -}}
{{- end -}}

{{/* The destinations a forwarder group serves, as a list (YAML):
(dict "root" $ "f" $forwarder). */}}
{{- define "stowline.servedDestinations" -}}
{{- if .root.Values.destinations -}}
{{- toYaml (default (include "stowline.destinationNames" .root | fromYamlArray) .f.destinations) -}}
{{- else -}}
{{- toYaml (list "default") -}}
{{- end -}}
{{- end -}}

{{/* A destination's consumer (internal/natsjs/topology.go ConsumerName). */}}
{{- define "stowline.consumerName" -}}
{{- if eq . "default" }}stowline-forwarder{{ else }}{{ printf "stowline-forwarder-%s" . }}{{ end -}}
{{- end -}}

{{/* A destination's stat-lane consumer (internal/natsjs/lanes.go: LaneConsumerName). */}}
{{- define "stowline.statConsumerName" -}}
{{- printf "stowline-stat-%s" . -}}
{{- end -}}

{{/* A destination's STOW_PARALLEL_REQUESTS: (dict "root" $ "d" $destination). */}}
{{- define "stowline.destinationParallel" -}}
{{- int (default .root.Values.forwarderDefaults.stowParallelRequests .d.stowParallelRequests) -}}
{{- end -}}

{{/*
The connections a forwarder replica keeps open to Orthanc at most for a
destination: its STOW_PARALLEL_REQUESTS (requests in flight over all
studies; the replicas share it), or concurrency x 8 if larger while its
rules read instance metadata (read 8 at a time a study; internal/routing).
(dict "root" $ "d" $destination "f" $forwarder).
*/}}
{{- define "stowline.destinationConnections" -}}
{{- $p := int (include "stowline.destinationParallel" .) -}}
{{- if or (regexMatch "callingAets|sopClasses" (default "" .d.match)) (regexMatch "sopClassUid|transferSyntaxUid|callingAet" (default "" .d.instanceMatch)) -}}
{{- $m := mul 8 (int .f.concurrency) -}}
{{- if lt $p $m }}{{ $p = $m }}{{ end -}}
{{- end -}}
{{- $p -}}
{{- end -}}

{{/*
The destinations' variables a forwarder group gets: DESTINATIONS, every
destination's DESTINATION_<NAME>_* settings (a forwarder reads the name,
rules and STOW_DEIDENTIFY of those it does not serve, and ignores their
other settings), the client secret file of the destinations it serves
only, and FORWARDER_DESTINATIONS when the group lists its destinations.
(dict "root" $ "f" $forwarder).
*/}}
{{- define "stowline.destinationsEnv" -}}
{{- $root := .root -}}
{{- $served := include "stowline.servedDestinations" . | fromYamlArray -}}
{{- $env := dict -}}
{{- $names := list -}}
{{- range $d := $root.Values.destinations -}}
{{- $names = append $names $d.name -}}
{{- $p := include "stowline.destinationPrefix" $d.name -}}
{{- range $k, $v := (default dict $d.env) }}{{ $_ := set $env (printf "%s%s" $p $k) $v }}{{ end -}}
{{- $_ := set $env (printf "%sURL" $p) $d.url -}}
{{- $_ := set $env (printf "%sMATCH" $p) (default "" $d.match) -}}
{{- $_ := set $env (printf "%sINSTANCE_MATCH" $p) (default "" $d.instanceMatch) -}}
{{- $_ := set $env (printf "%sSTOW_PARALLEL_REQUESTS" $p) (include "stowline.destinationParallel" (dict "root" $root "d" $d)) -}}
{{- if and $d.clientSecret $d.clientSecret.secretName (has $d.name $served) -}}
{{- $_ := set $env (printf "%sOAUTH_CLIENT_SECRET_FILE" $p) (printf "%s/OAUTH_CLIENT_SECRET" (include "stowline.destinationSecretDir" $d.name)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $env "DESTINATIONS" (join "," $names) -}}
{{- with .f.destinations }}{{ $_ := set $env "FORWARDER_DESTINATIONS" (join "," .) }}{{ end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* The keys the Secret holds, as a space-separated list. */}}
{{- define "stowline.secretKeys" -}}
{{- if .Values.secrets.existingSecret -}}
{{- join " " .Values.secrets.existingSecretKeys -}}
{{- else -}}
{{- $keys := list -}}
{{- range $k, $v := .Values.secrets.values }}{{ if $v }}{{ $keys = append $keys $k }}{{ end }}{{ end -}}
{{- join " " $keys -}}
{{- end -}}
{{- end -}}

{{/* Secret keys one command gets: (dict "root" $ "role" "ingest"), or
"forwarder" with "f" $forwarder. */}}
{{- define "stowline.roleSecretKeys" -}}
{{- $held := splitList " " (include "stowline.secretKeys" .root) -}}
{{- $out := list -}}
{{- range splitList " " (include (printf "stowline.secretVars.%s" .role) .) -}}
{{- if has . $held }}{{ $out = append $out . }}{{ end -}}
{{- end -}}
{{- join " " $out -}}
{{- end -}}

{{/* Where secrets are mounted. */}}
{{- define "stowline.secretDir" -}}/run/secrets/stowline{{- end -}}
{{- define "stowline.natsDir" -}}/run/secrets/nats{{- end -}}

{{/*
The variables both commands get, as a dict (empty values left out later):
env, then what the chart wires (NATS, Orthanc), then the secrets' _FILE.
Arguments: (dict "root" $ "role" "ingest"), or "forwarder" with "f" $forwarder.
*/}}
{{- define "stowline.commonEnv" -}}
{{- $root := .root -}}
{{- $env := dict -}}
{{- range $k, $v := $root.Values.env }}{{ $_ := set $env $k $v }}{{ end -}}
{{- $_ := set $env "NATS_URL" (required "nats.url is required: the NATS JetStream servers' URLs (NATS_URL)" $root.Values.nats.url) -}}
{{- $_ := set $env "NATS_REPLICAS" $root.Values.nats.replicas -}}
{{- $auth := include "stowline.natsAuth" . | fromYaml -}}
{{- if $auth.credsSecret }}{{ $_ := set $env "NATS_CREDS_FILE" (printf "%s/nats.creds" (include "stowline.natsDir" $root)) }}{{ end -}}
{{- $_ := set $env "ORTHANC_URL" $root.Values.orthanc.url -}}
{{- $_ := set $env "ORTHANC_USERNAME" $root.Values.orthanc.username -}}
{{- $_ := set $env "ORTHANC_SOURCE_NAME" $root.Values.orthanc.sourceName -}}
{{- with $root.Values.tracing -}}
{{- if .otlpEndpoint -}}
{{- if and (not (kindIs "invalid" .samplerArg)) (ne (toString .samplerArg) "") (not (has .sampler (list "traceidratio" "parentbased_traceidratio"))) -}}
{{- fail (printf "tracing.samplerArg (%v) is a ratio only tracing.sampler traceidratio or parentbased_traceidratio reads; tracing.sampler is %q, which would trace every study: set tracing.sampler: parentbased_traceidratio" .samplerArg .sampler) -}}
{{- end -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" .otlpEndpoint -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER" .sampler -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER_ARG" .samplerArg -}}
{{- end -}}
{{- end -}}
{{- range splitList " " (include "stowline.roleSecretKeys" .) -}}
{{- $v := include "stowline.secretKeyVar" (dict "key" . "auth" $auth) -}}
{{- if . }}{{ $_ := set $env (printf "%s_FILE" $v) (printf "%s/%s" (include "stowline.secretDir" $root) $v) }}{{ end -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
The ingest's whole environment, as YAML: the common variables, its
INGEST_ADDR, then ingest.env over them. Argument: the root context.
*/}}
{{- define "stowline.ingestEnv" -}}
{{- $env := include "stowline.commonEnv" (dict "root" . "role" "ingest") | fromYaml -}}
{{- $_ := set $env "INGEST_ADDR" (printf ":%v" .Values.ingest.port) -}}
{{- range $k, $v := .Values.ingest.env }}{{ $_ := set $env $k $v }}{{ end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
A forwarder group's whole environment, as YAML: the common variables, its
address and concurrency, its destinations, then the group's env
(forwarderDefaults.env and its own) over them.
Arguments: (dict "root" $ "f" $forwarder).
*/}}
{{- define "stowline.forwarderEnv" -}}
{{- $root := .root -}}
{{- $f := .f -}}
{{- $env := include "stowline.commonEnv" (dict "root" $root "role" "forwarder" "f" $f) | fromYaml -}}
{{- $_ := set $env "FORWARDER_ADDR" (printf ":%v" $f.port) -}}
{{- $_ := set $env "FORWARDER_CONCURRENCY" $f.concurrency -}}
{{- if $root.Values.destinations -}}
{{- range $k, $v := (include "stowline.destinationsEnv" . | fromYaml) }}{{ $_ := set $env $k $v }}{{ end -}}
{{- else -}}
{{- $_ := set $env "DICOMWEB_URL" (required (printf "forwarders[%s].dicomwebURL is required: the destination's DICOMweb base URL (DICOMWEB_URL), or declare destinations" $f.name) $f.dicomwebURL) -}}
{{- $_ := set $env "STOW_PARALLEL_REQUESTS" $f.stowParallelRequests -}}
{{- end -}}
{{- range $k, $v := $f.env }}{{ $_ := set $env $k $v }}{{ end -}}
{{- /* A derived ceiling holds only if each replica keeps to the
connections it was derived from: ORTHANC_MAX_CONNECTIONS makes it so
(metadata reads, lists and conversions share those slots with the file
streams), unless env sets it (its value then counts; "" leaves no cap). */ -}}
{{- if and $root.Values.keda.enabled (eq (int $f.keda.maxReplicaCount) 0) -}}
{{- range $k, $_ := $env -}}
{{- if regexMatch "^ORTHANC_.+_MAX_CONNECTIONS$" $k -}}
{{- fail (printf "forwarders[%s]: %s in env: a source's own cap replaces ORTHANC_MAX_CONNECTIONS, which the KEDA ceiling derived from orthanc.httpThreadsCount counts: set ORTHANC_MAX_CONNECTIONS instead, or keda.maxReplicaCount" $f.name $k) -}}
{{- end -}}
{{- end -}}
{{- if not (hasKey $env "ORTHANC_MAX_CONNECTIONS") -}}
{{- $_ := set $env "ORTHANC_MAX_CONNECTIONS" (int (include "stowline.forwarderConnections" .)) -}}
{{- end -}}
{{- end -}}
{{- /* The forwarder refuses a cap below the destinations it serves:
each keeps a slot free for the others (a hung one cannot take them). */ -}}
{{- $served := len (include "stowline.servedDestinations" . | fromYamlArray) -}}
{{- range $k, $v := $env -}}
{{- if regexMatch "^ORTHANC_(.+_)?MAX_CONNECTIONS$" $k -}}
{{- $cap := int (default 0 $v) -}}
{{- if and (gt $cap 0) (lt $cap $served) -}}
{{- fail (printf "forwarders[%s]: %s %d in env is below the %d destinations the group serves, which the forwarder refuses at start: each keeps a slot to Orthanc free for the others; want %d or more (better the sum of their stowParallelRequests), or leave it to the chart" $f.name $k $cap $served $served) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range (include "stowline.secretFiles" . | fromYamlArray) }}{{ $_ := set $env .var (printf "%s/%s" .dir .key) }}{{ end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
"true" when an environment (a dict) makes the listeners serve HTTPS only:
TLS_LISTEN_CERT_FILE set, as config.ListenTLS.Enabled reads it ("" is
left unset). Probes, the ServiceMonitor and NOTES follow it.
*/}}
{{- define "stowline.https" -}}
{{- if ne (toString (default "" .TLS_LISTEN_CERT_FILE)) "" }}true{{ end -}}
{{- end -}}

{{/*
A container's env list from a dict, sorted, empty values left out: "",
and a variable written without a value (null), which toString would
write "<nil>". Helm reads an unquoted number as a float, which toString
writes 104857600 as "1.048576e+08": a whole number is written as it
was, and one past 2^53, which a float holds only approximately (a long
numeric client ID), is refused.
*/}}
{{- define "stowline.envList" -}}
{{- range $k, $v := . }}
{{- if kindIs "map" $v }}
{{- /* {valueFrom: {secretKeyRef: ...}} (stowline.validateEnvRefs): the
value stays in the Secret, out of the Deployment and the release. */}}
- name: {{ $k }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.valueFrom.secretKeyRef.name | quote }}
      key: {{ $v.valueFrom.secretKeyRef.key | quote }}
{{- else }}
{{- $s := ternary "" (toString $v) (kindIs "invalid" $v) }}
{{- if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- if or (ge $v 9007199254740992.0) (le $v -9007199254740992.0) }}
{{- fail (printf "%s: write the value in quotes: Helm read it as a number, %s, too long to keep exactly" $k $s) }}
{{- end }}
{{- $s = printf "%.0f" $v }}
{{- end }}
{{- if not (eq $s "") }}
- name: {{ $k }}
  value: {{ $s | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes of a pod: (dict "root" $ "role" "ingest"). */}}
{{- define "stowline.volumes" -}}
{{- $root := .root -}}
{{- $auth := include "stowline.natsAuth" . | fromYaml -}}
{{- $keys := include "stowline.roleSecretKeys" . -}}
{{- if $keys }}
- name: secrets
  secret:
    secretName: {{ include "stowline.secretName" $root | quote }}
    defaultMode: 0440
    items:
    {{- range splitList " " $keys }}
      - key: {{ . }}
        path: {{ include "stowline.secretKeyVar" (dict "key" . "auth" $auth) }}
    {{- end }}
{{- end }}
{{- with $auth.credsSecret }}
- name: nats-creds
  secret:
    secretName: {{ . | quote }}
    defaultMode: 0440
    items:
      - key: nats.creds
        path: nats.creds
{{- end }}
{{- if and (eq .role "forwarder") $root.Values.destinations }}
{{- $served := include "stowline.servedDestinations" . | fromYamlArray }}
{{- range $root.Values.destinations }}
{{- if and .clientSecret .clientSecret.secretName (has .name $served) }}
- name: {{ printf "destination-%s" (lower (replace "_" "-" .name)) }}
  secret:
    secretName: {{ .clientSecret.secretName | quote }}
    defaultMode: 0440
    items:
      - key: {{ required (printf "destinations[%s].clientSecret.key is required with its secretName" .name) .clientSecret.key | quote }}
        path: OAUTH_CLIENT_SECRET
{{- end }}
{{- end }}
{{- end }}
{{- if eq .role "forwarder" }}
{{- range (include "stowline.secretFiles" . | fromYamlArray) }}
- name: {{ .volume }}
  secret:
    secretName: {{ .secretName | quote }}
    defaultMode: 0440
    items:
      - key: {{ .key | quote }}
        path: {{ .key | quote }}
{{- end }}
{{- end }}
{{- with $root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "stowline.volumeMounts" -}}
{{- $root := .root -}}
{{- if include "stowline.roleSecretKeys" . }}
- name: secrets
  mountPath: {{ include "stowline.secretDir" $root }}
  readOnly: true
{{- end }}
{{- if (include "stowline.natsAuth" . | fromYaml).credsSecret }}
- name: nats-creds
  mountPath: {{ include "stowline.natsDir" $root }}
  readOnly: true
{{- end }}
{{- if and (eq .role "forwarder") $root.Values.destinations }}
{{- $served := include "stowline.servedDestinations" . | fromYamlArray }}
{{- range $root.Values.destinations }}
{{- if and .clientSecret .clientSecret.secretName (has .name $served) }}
- name: {{ printf "destination-%s" (lower (replace "_" "-" .name)) }}
  mountPath: {{ include "stowline.destinationSecretDir" .name }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}
{{- if eq .role "forwarder" }}
{{- range (include "stowline.secretFiles" . | fromYamlArray) }}
- name: {{ .volume }}
  mountPath: {{ .dir }}
  readOnly: true
{{- end }}
{{- end }}
{{- with $root.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
A forwarder group: its entry over forwarderDefaults, as YAML.
Arguments: (dict "root" $ "entry" .).
*/}}
{{- define "stowline.forwarder" -}}
{{- $f := mergeOverwrite (deepCopy .root.Values.forwarderDefaults) (deepCopy .entry) -}}
{{- $_ := set $f "env" (mergeOverwrite (deepCopy (default dict .root.Values.forwarderDefaults.env)) (deepCopy (default dict .entry.env))) -}}
{{- toYaml $f -}}
{{- end -}}

{{/*
The connections one replica of a forwarder group keeps open to Orthanc at
most: each served destination's connections (stowline.destinationConnections),
summed; without destinations, its stowParallelRequests.
Arguments: (dict "root" $ "f" $forwarder).
*/}}
{{- define "stowline.forwarderConnections" -}}
{{- $root := .root -}}
{{- $f := .f -}}
{{- if $root.Values.destinations -}}
{{- $served := include "stowline.servedDestinations" . | fromYamlArray -}}
{{- $sum := 0 -}}
{{- range $root.Values.destinations -}}
{{- if has .name $served }}{{ $sum = add $sum (int (include "stowline.destinationConnections" (dict "root" $root "d" . "f" $f))) }}{{ end -}}
{{- end -}}
{{- $sum -}}
{{- else -}}
{{- int $f.stowParallelRequests -}}
{{- end -}}
{{- end -}}

{{/*
The connections one replica of a forwarder group holds to Orthanc at most:
its ORTHANC_MAX_CONNECTIONS when set above 0 (the chart sets it to
stowline.forwarderConnections under a derived KEDA ceiling), else
stowline.forwarderConnections, an estimate that metadata reads and lists
can exceed. Arguments: (dict "root" $ "f" $forwarder).
*/}}
{{- define "stowline.forwarderReplicaConnections" -}}
{{- $env := include "stowline.forwarderEnv" . | fromYaml -}}
{{- $cap := int (default 0 (get $env "ORTHANC_MAX_CONNECTIONS")) -}}
{{- if gt $cap 0 }}{{ $cap }}{{ else }}{{ include "stowline.forwarderConnections" . }}{{ end -}}
{{- end -}}

{{/*
The most replicas a forwarder group may have: set, or derived from
Orthanc's HTTP threads (one connection per thread; each replica keeps up
to stowline.forwarderReplicaConnections) and from each consumer's 1000
ack-pending events. Arguments: (dict "root" $ "f" $forwarder).
*/}}
{{- define "stowline.forwarderMaxReplicas" -}}
{{- $f := .f -}}
{{- $o := .root.Values.orthanc -}}
{{- if gt (int $f.keda.maxReplicaCount) 0 -}}
{{- int $f.keda.maxReplicaCount -}}
{{- else -}}
{{- $perReplica := int (include "stowline.forwarderReplicaConnections" .) -}}
{{- $threads := sub (int $o.httpThreadsCount) (int $o.reservedThreads) -}}
{{- $max := div $threads $perReplica -}}
{{- $ackLimit := div 1000 (int $f.concurrency) -}}
{{- if gt $max $ackLimit }}{{ $max = $ackLimit }}{{ end -}}
{{- if lt $max (int $f.keda.minReplicaCount) -}}
{{- fail (printf "forwarders[%s]: Orthanc's %d HTTP threads (orthanc.httpThreadsCount %d - orthanc.reservedThreads %d) give at most %d replicas of %d connections (ORTHANC_MAX_CONNECTIONS if env sets it, else the stowParallelRequests of each destination served, or concurrency %d x 8 for one whose rules read instance metadata), fewer than keda.minReplicaCount %d: raise Orthanc's HttpThreadsCount and orthanc.httpThreadsCount, or lower stowParallelRequests or ORTHANC_MAX_CONNECTIONS" $f.name $threads (int $o.httpThreadsCount) (int $o.reservedThreads) $max $perReplica (int $f.concurrency) (int $f.keda.minReplicaCount)) -}}
{{- end -}}
{{- $max -}}
{{- end -}}
{{- end -}}

{{/*
A Go duration (time.ParseDuration: 10s, 500ms, 1m30s, 1.5s, +10s, 0)
in milliseconds; empty when the text is not one. Sprig has no
duration parser, and the chart checks grace periods against
INGEST_PUBLISH_TIMEOUT.
*/}}
{{- define "stowline.durationMillis" -}}
{{- $s := trimPrefix "+" (toString .) -}}
{{- $part := `([0-9]+\.?[0-9]*|\.[0-9]+)(h|ms|m|s|us|µs|μs|ns)` -}}
{{- if eq $s "0" -}}
0
{{- else if regexMatch (printf "^(%s)+$" $part) $s -}}
{{- $perUnit := dict "h" 3600000.0 "m" 60000.0 "s" 1000.0 "ms" 1.0 "us" 0.001 "µs" 0.001 "μs" 0.001 "ns" 0.000001 -}}
{{- $ms := 0.0 -}}
{{- range regexFindAll $part $s -1 -}}
{{- $n := regexFind `^[0-9.]+` . -}}
{{- $ms = addf $ms (mulf (float64 $n) (get $perUnit (trimPrefix $n .))) -}}
{{- end -}}
{{- $ms -}}
{{- end -}}
{{- end -}}

{{/* Chart-wide checks, included by every template that needs them. */}}
{{- define "stowline.validate" -}}
{{- /* Helm reads an unquoted number as a float: 20240612093015123 would
reach the Secret as 2.0240612093015124e+16, not the credential set in
Orthanc or NATS. */}}
{{- range $k, $v := .Values.secrets.values -}}
{{- if and $v (not (kindIs "string" $v)) -}}
{{- fail (printf "secrets.values.%s: write the value in quotes: Helm read it as a %s, and the Secret would hold %q, not the value as written" $k (kindOf $v) (toString $v)) -}}
{{- end -}}
{{- end -}}
{{- if not (has "INGEST_TOKEN" (splitList " " (include "stowline.secretKeys" .))) -}}
{{- fail "secrets: INGEST_TOKEN is required (secrets.values.INGEST_TOKEN, or secrets.existingSecret with INGEST_TOKEN in secrets.existingSecretKeys)" -}}
{{- end -}}
{{- include "stowline.validateEnvRefs" . -}}
{{- /* A quoted "false" is a non-empty string, which `if` takes as true:
the NetworkPolicies, a ScaledObject or a ServiceMonitor would be
rendered when turned off. */}}
{{- $flags := dict "serviceAccount.create" .Values.serviceAccount.create "networkPolicy.enabled" .Values.networkPolicy.enabled
  "networkPolicy.egress.enabled" .Values.networkPolicy.egress.enabled "keda.enabled" .Values.keda.enabled
  "serviceMonitor.enabled" .Values.serviceMonitor.enabled "prometheusRule.enabled" .Values.prometheusRule.enabled -}}
{{- range $name, $v := $flags -}}
{{- if not (or (kindIs "bool" $v) (kindIs "invalid" $v)) -}}
{{- fail (printf "%s: write true or false without quotes: Helm read the %s %q, which the chart would take as %t" $name (kindOf $v) (toString $v) (not (empty $v))) -}}
{{- end -}}
{{- end -}}
{{- /* The kubelet kills the ingest terminationGracePeriodSeconds after
telling it to stop, its preStop sleep included; after the sleep the ingest
gives webhook requests in flight 15 s, or INGEST_PUBLISH_TIMEOUT + 2 s when
that is longer (they wait that long for JetStream before they are
answered: app.ingestHTTPGrace), then 5 s to answered events that wait for
PRIORITY_RULE, then up to 10 s to drain its NATS connection and flush
its traces. Worked out in milliseconds from the value set (the
command's default, 10s, when none is); chartcheck checks the figures. */}}
{{- $ig := .Values.ingest -}}
{{- $ingestEnv := include "stowline.ingestEnv" . | fromYaml -}}
{{- $publishMs := 10000 -}}
{{- $publish := "" -}}
{{- $set := get $ingestEnv "INGEST_PUBLISH_TIMEOUT" -}}
{{- if not (or (kindIs "invalid" $set) (eq (toString $set) "")) -}}
{{- /* null and "" are left unset (stowline.envList): the default. */ -}}
{{- $publish = toString $set -}}
{{- $ms := include "stowline.durationMillis" $publish -}}
{{- if not $ms -}}
{{- fail (printf "INGEST_PUBLISH_TIMEOUT %q: want a Go duration such as 10s, 500ms or 1m30s (units h, m, s, ms, us, ns; no space), in quotes" $publish) -}}
{{- end -}}
{{- $publishMs = ceil (float64 $ms) | int -}}
{{- if or (lt (float64 $ms) 100.0) (gt (float64 $ms) 50000.0) -}}
{{- fail (printf "INGEST_PUBLISH_TIMEOUT %q: want 100ms to 50s (the ingest refuses to start with another)" $publish) -}}
{{- end -}}
{{- end -}}
{{- $requestsMs := max 15000 (add $publishMs 2000) -}}
{{- $shutdownMs := add $requestsMs 5000 -}}
{{- if le (mul (int $ig.terminationGracePeriodSeconds) 1000) (add (mul (int $ig.preStopSleepSeconds) 1000) $shutdownMs 10000) -}}
{{- $why := printf "%v s for webhook requests in flight, 5 s for answered events that wait for PRIORITY_RULE" (divf $requestsMs 1000) -}}
{{- if $publish -}}
{{- $why = printf "with INGEST_PUBLISH_TIMEOUT %s: %v s for webhook requests in flight, which wait that long for JetStream, 5 s for answered events that wait for PRIORITY_RULE" $publish (divf $requestsMs 1000) -}}
{{- end -}}
{{- fail (printf "ingest.terminationGracePeriodSeconds %d: want more than preStopSleepSeconds %d + the ingest's %v s shutdown grace (%s) + 10 s to drain NATS and flush traces: killed sooner, it cuts those requests off and leaves those events to the reconciler" (int $ig.terminationGracePeriodSeconds) (int $ig.preStopSleepSeconds) (divf $shutdownMs 1000) $why) -}}
{{- end -}}
{{- /* A forwarder gives the studies in flight FORWARDER_SHUTDOWN_GRACE
(30s when unset) at a stop, its HTTP server 15 s (app.HTTPShutdownGrace)
alongside, then returns the rest to the queue: killed sooner, those
studies wait FORWARDER_ACK_WAIT, and a longer grace would be cut short
all the same. Each group's, from its env (env, forwarderDefaults.env, its
own); chartcheck checks the figures. */}}
{{- range $entry := .Values.forwarders -}}
{{- $f := include "stowline.forwarder" (dict "root" $ "entry" $entry) | fromYaml -}}
{{- $fenv := include "stowline.forwarderEnv" (dict "root" $ "f" $f) | fromYaml -}}
{{- $graceMs := 30000 -}}
{{- $grace := "" -}}
{{- $set := get $fenv "FORWARDER_SHUTDOWN_GRACE" -}}
{{- if not (or (kindIs "invalid" $set) (eq (toString $set) "")) -}}
{{- $grace = toString $set -}}
{{- $ms := include "stowline.durationMillis" $grace -}}
{{- if not $ms -}}
{{- fail (printf "forwarders[%s]: FORWARDER_SHUTDOWN_GRACE %q: want a Go duration such as 30s, 2m or 1m30s (units h, m, s, ms, us, ns; no space), in quotes" $f.name $grace) -}}
{{- end -}}
{{- if or (lt (float64 $ms) 1000.0) (gt (float64 $ms) 3600000.0) -}}
{{- fail (printf "forwarders[%s]: FORWARDER_SHUTDOWN_GRACE %q: want 1s to 1h (the forwarder refuses to start with another)" $f.name $grace) -}}
{{- end -}}
{{- $graceMs = ceil (float64 $ms) | int -}}
{{- end -}}
{{- $stopMs := add $graceMs 15000 -}}
{{- if lt (mul (int $f.terminationGracePeriodSeconds) 1000) $stopMs -}}
{{- fail (printf "forwarders[%s].terminationGracePeriodSeconds %d: want at least the forwarder's %v s shutdown grace (FORWARDER_SHUTDOWN_GRACE %s for the studies in flight, then 15 s): killed sooner, it cuts those studies off and leaves them to FORWARDER_ACK_WAIT; set terminationGracePeriodSeconds in forwarderDefaults or the group" $f.name (int $f.terminationGracePeriodSeconds) (divf $stopMs 1000) (default "30s" $grace)) -}}
{{- end -}}
{{- end -}}
{{- /* A group's name is in its objects' names and component label: two
groups of one name (or of one name once cut to 63 characters) would
render two Deployments of one name, the one applied last replacing the
other, whose destinations would go unserved without a word. */}}
{{- $groupObjects := dict -}}
{{- range $i, $g := .Values.forwarders -}}
{{- $n := toString (default "" $g.name) -}}
{{- if or (gt (len $n) 53) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $n)) -}}
{{- fail (printf "forwarders[%d].name %q: want 1-53 lower-case letters, digits and -, starting and ending with a letter or digit (it names the group's Kubernetes objects)" $i $n) -}}
{{- end -}}
{{- $obj := printf "%s-forwarder-%s" (include "stowline.fullname" $) $n | trunc 63 | trimSuffix "-" -}}
{{- if hasKey $groupObjects $obj -}}
{{- fail (printf "forwarders: %q and %q would both be %s (object names are cut at 63 characters), one group's Deployment replacing the other's: rename one" (get $groupObjects $obj) $n $obj) -}}
{{- end -}}
{{- $_ := set $groupObjects $obj $n -}}
{{- end -}}
{{- if .Values.destinations -}}
{{- include "stowline.validateDestinations" . -}}
{{- else -}}
{{- if ne (len .Values.forwarders) 1 -}}
{{- fail "forwarders: exactly one entry without destinations: the one destination has one JetStream consumer, and two groups would split its studies between their DICOMWEB_URLs. Declare destinations to run a group per destination" -}}
{{- end -}}
{{- range .Values.forwarders }}{{ if .destinations }}{{ fail (printf "forwarders[%s].destinations: declare the destinations first (top-level destinations)" .name) }}{{ end }}{{ end -}}
{{- end -}}
{{- include "stowline.validateSources" . -}}
{{- if and (not .Values.orthanc.url) (not .Values.env.ORTHANC_SOURCES) -}}
{{- fail "orthanc.url is required: Orthanc's REST API as the pods reach it (ORTHANC_URL), or several sources with ORTHANC_SOURCES in env" -}}
{{- end -}}
{{- /* The processes refuse to start with the user alone: every Orthanc
read would be refused. Given from a Secret of the operator's in an env
map (valueFrom), it is there. */ -}}
{{- if .Values.orthanc.username -}}
{{- $given := has "ORTHANC_PASSWORD" (splitList " " (include "stowline.secretKeys" .)) -}}
{{- $maps := list .Values.env .Values.ingest.env .Values.forwarderDefaults.env -}}
{{- range .Values.forwarders }}{{ $maps = append $maps .env }}{{ end -}}
{{- range $m := $maps -}}
{{- if and $m (get $m "ORTHANC_PASSWORD") -}}{{- $given = true -}}{{- end -}}
{{- end -}}
{{- if not $given -}}
{{- fail "orthanc.username is set without its password: add ORTHANC_PASSWORD to secrets (secrets.values.ORTHANC_PASSWORD, or secrets.existingSecret with ORTHANC_PASSWORD in secrets.existingSecretKeys); the processes refuse to start with the user alone" -}}
{{- end -}}
{{- end -}}
{{- include "stowline.validateEnvMaps" . -}}
{{- include "stowline.validateSecretFiles" . -}}
{{- /* A key of the Secret no container reads (misspelt, or a destination's
not declared) is mounted nowhere: the command then runs without it, and
fails, if at all, far from the cause. */}}
{{- $root := . -}}
{{- $read := splitList " " (include "stowline.secretVars.ingest" (dict "root" $root)) -}}
{{- range $entry := .Values.forwarders -}}
{{- $f := include "stowline.forwarder" (dict "root" $root "entry" $entry) | fromYaml -}}
{{- $read = concat $read (splitList " " (include "stowline.secretVars.forwarder" (dict "root" $root "f" $f))) -}}
{{- end -}}
{{- /* A role's passwordKey that is another of its secrets would be
mounted as NATS_PASSWORD only, that secret then missing. */ -}}
{{- $roles := list (dict "where" "ingest.nats.passwordKey" "vars" (include "stowline.secretVars.ingest" (dict "root" $root)) "role" (dict "root" $root "role" "ingest")) -}}
{{- range $entry := .Values.forwarders -}}
{{- $f := include "stowline.forwarder" (dict "root" $root "entry" $entry) | fromYaml -}}
{{- $roles = append $roles (dict "where" (printf "forwarders[%s].nats.passwordKey" $f.name) "vars" (include "stowline.secretVars.forwarder" (dict "root" $root "f" $f)) "role" (dict "root" $root "role" "forwarder" "f" $f)) -}}
{{- end -}}
{{- range $roles -}}
{{- $key := (include "stowline.natsAuth" .role | fromYaml).passwordKey -}}
{{- $n := 0 -}}
{{- range splitList " " .vars }}{{ if eq . $key }}{{ $n = add1 $n }}{{ end }}{{ end -}}
{{- if gt $n 1 -}}
{{- fail (printf "%s %q is another secret that role reads: name a key of its own (NATS_PASSWORD_INGEST...)" .where $key) -}}
{{- end -}}
{{- end -}}
{{- $read = without (uniq $read) "" -}}
{{- range splitList " " (include "stowline.secretKeys" .) -}}
{{- if and . (not (has . $read)) -}}
{{- fail (printf "secrets: %s is no secret a stowline container reads, and would be mounted in none: they read %s (ORTHANC_<NAME>_PASSWORD for each name of env.ORTHANC_SOURCES, DESTINATION_<NAME>_OAUTH_CLIENT_SECRET for each declared destination)" . (join ", " $read)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The variables the chart sets itself for a command, as a dict of variable:
the value to set instead. env is applied before them (they would silently
win), ingest.env and the forwarders' env after (they would silently win
over the ports, probes, KEDA ceiling... computed from those values).
Arguments: (dict "root" $ "role" "ingest"), or "forwarder" with "f" $forwarder.
*/}}
{{- define "stowline.managedEnv" -}}
{{- $root := .root -}}
{{- $m := dict
  "NATS_URL" "nats.url"
  "NATS_REPLICAS" "nats.replicas"
  "ORTHANC_URL" "orthanc.url"
  "ORTHANC_USERNAME" "orthanc.username"
  "ORTHANC_SOURCE_NAME" "orthanc.sourceName"
-}}
{{- $auth := include "stowline.natsAuth" . | fromYaml -}}
{{- if $auth.credsSecret }}{{ $_ := set $m "NATS_CREDS_FILE" $auth.credsFrom }}{{ end -}}
{{- if $root.Values.tracing.otlpEndpoint -}}
{{- $_ := set $m "OTEL_EXPORTER_OTLP_ENDPOINT" "tracing.otlpEndpoint" -}}
{{- $_ := set $m "OTEL_TRACES_SAMPLER" "tracing.sampler" -}}
{{- $_ := set $m "OTEL_TRACES_SAMPLER_ARG" "tracing.samplerArg" -}}
{{- end -}}
{{- range splitList " " (include "stowline.roleSecretKeys" .) -}}
{{- if . }}{{ $_ := set $m (printf "%s_FILE" (include "stowline.secretKeyVar" (dict "key" . "auth" $auth))) (printf "the Secret's %s key (secrets, mounted as a file)" .) }}{{ end -}}
{{- end -}}
{{- if eq .role "ingest" -}}
{{- $_ := set $m "INGEST_ADDR" "ingest.port" -}}
{{- else -}}
{{- $_ := set $m "FORWARDER_ADDR" "forwarderDefaults.port or the group's port" -}}
{{- $_ := set $m "FORWARDER_CONCURRENCY" "forwarderDefaults.concurrency or the group's concurrency" -}}
{{- $_ := set $m "DESTINATIONS" "destinations" -}}
{{- $_ := set $m "FORWARDER_DESTINATIONS" "forwarders[].destinations" -}}
{{- if not $root.Values.destinations -}}
{{- $_ := set $m "DICOMWEB_URL" "forwarders[].dicomwebURL" -}}
{{- $_ := set $m "STOW_PARALLEL_REQUESTS" "forwarderDefaults.stowParallelRequests or the group's stowParallelRequests" -}}
{{- end -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{/*
"true" for a variable the code reads as a secret (internal/config's
secret:"true" fields; chartcheck TestSecretsRefusedInEnvMaps tries each).
*/}}
{{- define "stowline.secretVar" -}}
{{- if or (has . (list "INGEST_TOKEN" "INGEST_TOKEN_PREVIOUS" "INGEST_HMAC_SECRET" "ADMIN_TOKEN" "ORTHANC_PASSWORD" "NATS_PASSWORD" "OAUTH_CLIENT_SECRET")) (regexMatch "^(ORTHANC_.+_PASSWORD|DESTINATION_.+_OAUTH_CLIENT_SECRET)$" .) }}true{{ end -}}
{{- end -}}

{{/*
Refuses, in every env map, a variable the chart sets itself
(stowline.managedEnv) or a declared destination's DESTINATION_<NAME>_*
one, naming the value to set instead, and a secret written as a value.
*/}}
{{/*
The other role, when it alone reads variable k: "ingest" for the
webhook's, the reconciler's and PRIORITY_RULE, "forwarders" for the
destinations' and the forwarding ones; empty for a variable the given
role reads, or both, or neither. Arguments: (dict "k" $k "role"
"ingest"|"forwarder").
*/}}
{{- define "stowline.otherRoleVar" -}}
{{- if and (eq .role "forwarder") (regexMatch "^(INGEST_|RECONCILE_|PRIORITY_RULE$)" .k) -}}ingest
{{- else if and (eq .role "ingest") (regexMatch "^(FORWARDER_|FORWARD_WINDOWS$|STOW_|OAUTH_|DESTINATIONS$|DESTINATION_|DICOMWEB_URL$|DEADLETTER_RETENTION$|STORED_RECORD_RETENTION$|DEIDENTIFY_KEY_FILE$|TLS_(CA|CERT|KEY)_FILE$|TLS_INSECURE_SKIP_VERIFY$)" .k) -}}forwarders
{{- end -}}
{{- end -}}

{{- define "stowline.validateEnvMaps" -}}
{{- $root := . -}}
{{- $prefixes := dict -}}
{{- range .Values.destinations }}{{ $_ := set $prefixes (include "stowline.destinationPrefix" .name) .name }}{{ end -}}
{{- $checks := list (dict "where" "env" "env" (default dict .Values.env) "role" (dict "root" $root "role" "ingest")) -}}
{{- $checks = append $checks (dict "where" "ingest.env" "env" (default dict .Values.ingest.env) "role" (dict "root" $root "role" "ingest")) -}}
{{- range $entry := .Values.forwarders -}}
{{- $f := include "stowline.forwarder" (dict "root" $root "entry" $entry) | fromYaml -}}
{{- $role := dict "root" $root "role" "forwarder" "f" $f -}}
{{- $checks = append $checks (dict "where" "env" "env" (default dict $root.Values.env) "role" $role) -}}
{{- $checks = append $checks (dict "where" "forwarderDefaults.env" "env" (default dict $root.Values.forwarderDefaults.env) "role" $role) -}}
{{- $checks = append $checks (dict "where" (printf "forwarders[%s].env" $f.name) "env" (default dict $entry.env) "role" $role) -}}
{{- end -}}
{{- range $c := $checks -}}
{{- $managed := include "stowline.managedEnv" $c.role | fromYaml -}}
{{- range $k, $v := $c.env -}}
{{- if hasKey $managed $k -}}
{{- /* Empty ("" or KEY:) asks to leave it unset, which other env
variables get: here it would not (env is applied before the chart's
value, the others after would drop a value the ports, probes and KEDA
ceiling are computed from), so say how, or that the chart needs it. */ -}}
{{- if eq (ternary "" (toString $v) (kindIs "invalid" $v)) "" -}}
{{- if has $k (list "ORTHANC_URL" "ORTHANC_USERNAME" "ORTHANC_SOURCE_NAME" "OTEL_EXPORTER_OTLP_ENDPOINT" "OTEL_TRACES_SAMPLER" "OTEL_TRACES_SAMPLER_ARG" "NATS_CREDS_FILE") -}}
{{- fail (printf "%s: %s is set by the chart, from %s: an empty value here does not leave it unset; leave %s empty instead" $c.where $k (get $managed $k) (get $managed $k)) -}}
{{- end -}}
{{- if hasSuffix "_FILE" $k -}}
{{- fail (printf "%s: %s is set by the chart, from %s: an empty value here does not leave it unset; take the %s key out of the Secret instead (secrets.existingSecretKeys, or secrets.values)" $c.where $k (get $managed $k) (trimSuffix "_FILE" $k)) -}}
{{- end -}}
{{- fail (printf "%s: %s is set by the chart, from %s, which it needs: it cannot be left unset; take it out of %s" $c.where $k (get $managed $k) $c.where) -}}
{{- end -}}
{{- fail (printf "%s: %s is set by the chart, from %s: set that instead of the variable" $c.where $k (get $managed $k)) -}}
{{- end -}}
{{- /* The ingest and every forwarder set the event stream to their own
values when they start: given to some only, each restart would flip it,
and a shorter retention drops at once the events older than it. */}}
{{- if and (ne $c.where "env") (has $k (list "EVENTS_RETENTION" "EVENTS_DEDUPE_WINDOW")) -}}
{{- fail (printf "%s: %s sets the event stream, which the ingest and every forwarder set to their own value when they start: set it in env, the same for all (set apart, each restart would change it, and a shorter retention drops the older events at once, waiting or not)" $c.where $k) -}}
{{- end -}}
{{- range $p, $name := $prefixes -}}
{{- if hasPrefix $p $k -}}
{{- fail (printf "%s: %s is set by the chart, from destinations[%s]: set its url, match, instanceMatch, stowParallelRequests, clientSecret, secretFiles or env (without the prefix) instead of the variable" $c.where $k $name) -}}
{{- end -}}
{{- end -}}
{{- /* A value is written in the pod spec, for anyone who can read the
Deployments: a secret goes in the Secret, mounted as a file. From a
Secret of the operator's (valueFrom), or empty (not written), it passes. */ -}}
{{- if and (include "stowline.secretVar" $k) (not (kindIs "map" $v)) (ne (ternary "" (toString $v) (kindIs "invalid" $v)) "") -}}
{{- fail (printf "%s: %s is a secret: written here, its value would be in the Deployment for anyone who can read it; put it in secrets instead (secrets.values.%s, or secrets.existingSecret with the key in secrets.existingSecretKeys), which the pods that read it get as a file" $c.where $k $k) -}}
{{- end -}}
{{- /* A role's own map holding the other role's variable: nothing reads
it there (a forwarder's PRIORITY_RULE leaves every stat study routine,
an ingest's FORWARD_WINDOWS limits no lane), and the process, which
does not look at the other role's variables, says nothing. Empty, it is
not written: it passes. */ -}}
{{- if and (ne $c.where "env") (ne (ternary "" (toString $v) (kindIs "invalid" $v)) "") -}}
{{- $other := include "stowline.otherRoleVar" (dict "k" $k "role" $c.role.role) -}}
{{- if $other -}}
{{- fail (printf "%s: %s is read by the %s alone, not by the pods %s configures: set it in %s (or in env, which every pod gets)" $c.where $k $other $c.where (ternary "ingest.env" "forwarderDefaults.env or forwarders[].env" (eq $other "ingest"))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The TCP port a URL names, or its scheme's (http and ws 80, https and wss
443, nats and tls 4222); a NATS URL may leave the scheme out.
*/}}
{{- define "stowline.urlPort" -}}
{{- $raw := trim . -}}
{{- if not (contains "://" $raw) }}{{ $raw = printf "nats://%s" $raw }}{{ end -}}
{{- $u := urlParse $raw -}}
{{- $port := trimPrefix ":" (regexFind ":[0-9]+$" $u.host) -}}
{{- if $port }}{{ $port }}{{ else if has $u.scheme (list "https" "wss") }}443{{ else if has $u.scheme (list "http" "ws") }}80{{ else }}4222{{ end -}}
{{- end -}}

{{/*
Ports of an egress rule: those listed in values and those of the URLs
(comma-separated lists of URLs each), without repeats. A URL's port
missing from the list would be dropped by the policy without an error
anywhere, leaving the pods to time out: (dict "ports" $list "urls" $urls).
*/}}
{{- define "stowline.egressPorts" -}}
{{- $ports := list -}}
{{- range .ports }}{{ $ports = append $ports (toString .) }}{{ end -}}
{{- range .urls }}{{ range splitList "," (toString .) }}{{ if trim . }}{{ $ports = append $ports (include "stowline.urlPort" .) }}{{ end }}{{ end }}{{ end -}}
{{- range uniq $ports }}
- port: {{ . }}
  protocol: TCP
{{- end -}}
{{- end -}}

{{/*
The Orthanc URLs: orthanc.url, and ORTHANC_URL and each ORTHANC_SOURCES
name's ORTHANC_<NAME>_URL in any env map (env, ingest.env,
forwarderDefaults.env, forwarders[].env: each may set them), every pod's
policy opening all their ports.
*/}}
{{- define "stowline.orthancURLs" -}}
{{- $urls := list -}}
{{- with .Values.orthanc.url }}{{ $urls = append $urls . }}{{ end -}}
{{- $maps := list (default dict .Values.env) (default dict .Values.ingest.env) (default dict .Values.forwarderDefaults.env) -}}
{{- range .Values.forwarders }}{{ $maps = append $maps (default dict .env) }}{{ end -}}
{{- $names := list -}}
{{- range $maps }}{{ range splitList "," (toString (default "" .ORTHANC_SOURCES)) }}{{ with trim . }}{{ $names = append $names . }}{{ end }}{{ end }}{{ end -}}
{{- range $m := $maps -}}
{{- with $m.ORTHANC_URL }}{{ $urls = append $urls . }}{{ end -}}
{{- range $names }}{{ with get $m (printf "ORTHANC_%s_URL" (upper (replace "-" "_" .))) }}{{ $urls = append $urls . }}{{ end }}{{ end -}}
{{- end -}}
{{- toYaml (uniq $urls) -}}
{{- end -}}

{{/* Egress rules of every stowline pod: DNS, NATS, Orthanc. */}}
{{- define "stowline.egressRules" -}}
{{- $e := .Values.networkPolicy.egress -}}
# DNS, in the cluster.
- to:
    - namespaceSelector: {}
  ports:
    {{- range $e.dnsPorts }}
    - port: {{ . }}
      protocol: UDP
    - port: {{ . }}
      protocol: TCP
    {{- end }}
# NATS (and nats.url's ports).
- ports:
    {{- include "stowline.egressPorts" (dict "ports" $e.nats.ports "urls" (list (default "" .Values.nats.url))) | trim | nindent 4 }}
  {{- with $e.nats.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# Orthanc's REST API (and the Orthanc URLs' ports).
- ports:
    {{- include "stowline.egressPorts" (dict "ports" $e.orthanc.ports "urls" (include "stowline.orthancURLs" . | fromYamlArray)) | trim | nindent 4 }}
  {{- with $e.orthanc.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with .Values.tracing.otlpEndpoint }}
{{- $u := urlParse . }}
{{- $hostPort := splitList ":" $u.host }}
# The OpenTelemetry collector (tracing.otlpEndpoint).
- ports:
    - port: {{ if gt (len $hostPort) 1 }}{{ last $hostPort }}{{ else if eq $u.scheme "https" }}443{{ else }}80{{ end }}
      protocol: TCP
{{- end }}
{{- with $e.extra }}
# networkPolicy.egress.extra.
{{ toYaml . }}
{{- end }}
{{- end -}}


{{/* The default destination's variables: with destinations, each
destination sets its own (destinations[].env), and the forwarder refuses
these. internal/config, Destination; chartcheck checks the list. */}}
{{- define "stowline.defaultDestinationVar" -}}
{{- $k := . -}}
{{- $prefixes := list "OAUTH_" "AZURE_" "STOW_" -}}
{{- $names := list "DICOMWEB_URL" "GOOGLE_APPLICATION_CREDENTIALS" "GCE_METADATA_HOST" "AWS_REGION" "TLS_CA_FILE" "TLS_CERT_FILE" "TLS_KEY_FILE" "TLS_INSECURE_SKIP_VERIFY" "DEIDENTIFY_KEY_FILE" -}}
{{- $hit := has $k $names -}}
{{- range $prefixes }}{{ if hasPrefix . $k }}{{ $hit = true }}{{ end }}{{ end -}}
{{- if $hit }}true{{ end -}}
{{- end -}}

{{/*
With several sources (ORTHANC_SOURCES in any env map) the ingest and the
forwarders refuse the one source's variables (internal/config,
Orthanc.readDynamic), which the chart sets from orthanc.url, username,
sourceName and the Secret's ORTHANC_PASSWORD key: every pod would exit at
start, taking the release down instead of failing the upgrade.
*/}}
{{- define "stowline.validateSources" -}}
{{- $maps := dict "env" (default dict .Values.env) "ingest.env" (default dict .Values.ingest.env) "forwarderDefaults.env" (default dict .Values.forwarderDefaults.env) -}}
{{- range .Values.forwarders }}{{ $_ := set $maps (printf "forwarders[%s].env" .name) (default dict .env) }}{{ end -}}
{{- $in := list -}}
{{- range $where, $env := $maps }}{{ if regexMatch `[^,\s]` (toString (default "" $env.ORTHANC_SOURCES)) }}{{ $in = append $in $where }}{{ end }}{{ end -}}
{{- $elsewhere := without $in "env" -}}
{{- if $elsewhere -}}
{{- fail (printf "ORTHANC_SOURCES in %s: set it in env: the chart reads it there alone, to mount each source's password (the key ORTHANC_<NAME>_PASSWORD in secrets) and to let orthanc.url stay unset, and every pod needs the same sources" (join ", " $elsewhere)) -}}
{{- end -}}
{{- if $in -}}
{{- $set := list -}}
{{- range list (list "url" "ORTHANC_URL") (list "username" "ORTHANC_USERNAME") (list "sourceName" "ORTHANC_SOURCE_NAME") -}}
{{- if get $.Values.orthanc (first .) }}{{ $set = append $set (printf "orthanc.%s (%s)" (first .) (last .)) }}{{ end -}}
{{- end -}}
{{- if has "ORTHANC_PASSWORD" (splitList " " (include "stowline.secretKeys" .)) -}}
{{- $set = append $set "the Secret's ORTHANC_PASSWORD key (ORTHANC_PASSWORD_FILE)" -}}
{{- end -}}
{{- range $where, $env := $maps -}}
{{- range $k := list "ORTHANC_PASSWORD" "ORTHANC_PASSWORD_FILE" -}}
{{- if get $env $k }}{{ $set = append $set (printf "%s in %s" $k $where) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if $set -}}
{{- fail (printf "%s set but ORTHANC_SOURCES (%s) names the sources: configure each source with ORTHANC_<NAME>_* instead (ORTHANC_<NAME>_URL and _USERNAME in env, the key ORTHANC_<NAME>_PASSWORD in secrets) and leave those unset; the ingest and the forwarders refuse to start with both" (join ", " $set) (join ", " $in)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks of declared destinations and the forwarder groups serving them. */}}
{{- define "stowline.validateDestinations" -}}
{{- $root := . -}}
{{- $held := splitList " " (include "stowline.secretKeys" .) -}}
{{- if has "OAUTH_CLIENT_SECRET" $held -}}
{{- fail "secrets: OAUTH_CLIENT_SECRET is the one destination's; with destinations, give each its DESTINATION_<NAME>_OAUTH_CLIENT_SECRET key, or destinations[].clientSecret" -}}
{{- end -}}
{{- $prefixes := dict -}}
{{- range $d := .Values.destinations -}}
{{- if not (regexMatch "^[A-Za-z0-9_-]{1,32}$" (toString $d.name)) -}}
{{- fail (printf "destinations: %q is not a destination name (1-32 characters of A-Z a-z 0-9 _ -)" (toString $d.name)) -}}
{{- end -}}
{{- $p := include "stowline.destinationPrefix" $d.name -}}
{{- if hasKey $prefixes $p -}}
{{- fail (printf "destinations: %q and %q would both be configured by %s* variables: rename one" (get $prefixes $p) $d.name $p) -}}
{{- end -}}
{{- $_ := set $prefixes $p $d.name -}}
{{- if not $d.url -}}
{{- fail (printf "destinations[%s].url is required: its DICOMweb base URL (%sURL)" $d.name $p) -}}
{{- end -}}
{{- range $k, $v := (default dict $d.env) -}}
{{- if or (hasPrefix "DESTINATION" $k) (has $k (list "URL" "DICOMWEB_URL" "MATCH" "INSTANCE_MATCH" "STOW_PARALLEL_REQUESTS" "OAUTH_CLIENT_SECRET" "OAUTH_CLIENT_SECRET_FILE")) -}}
{{- fail (printf "destinations[%s].env: %s: give the variable without the prefix, and the URL, rules, STOW_PARALLEL_REQUESTS and client secret with url, match, instanceMatch, stowParallelRequests and clientSecret" $d.name $k) -}}
{{- end -}}
{{- end -}}
{{- if and $d.clientSecret $d.clientSecret.secretName (has (printf "%sOAUTH_CLIENT_SECRET" $p) $held) -}}
{{- fail (printf "destinations[%s]: its client secret is both in clientSecret and in secrets (%sOAUTH_CLIENT_SECRET): keep one" $d.name $p) -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := merge (dict) (default dict .Values.env) (default dict .Values.forwarderDefaults.env) -}}
{{- if include "stowline.defaultDestinationVar" $k -}}
{{- fail (printf "%s is the one destination's variable: with destinations, set it in destinations[].env for each (env and forwarderDefaults.env)" $k) -}}
{{- end -}}
{{- end -}}
{{- $names := include "stowline.destinationNames" . | fromYamlArray -}}
{{- $servedBy := dict -}}
{{- $groups := len .Values.forwarders -}}
{{- range $g := .Values.forwarders -}}
{{- if $g.dicomwebURL -}}
{{- fail (printf "forwarders[%s].dicomwebURL: with destinations, each destination has its url (destinations[].url)" $g.name) -}}
{{- end -}}
{{- if and (gt $groups 1) (not $g.destinations) -}}
{{- fail (printf "forwarders[%s].destinations: with several groups, each lists the destinations it serves (FORWARDER_DESTINATIONS)" $g.name) -}}
{{- end -}}
{{- range $k, $v := (default dict $g.env) -}}
{{- if include "stowline.defaultDestinationVar" $k -}}
{{- fail (printf "forwarders[%s].env: %s is the one destination's variable: with destinations, set it in destinations[].env" $g.name $k) -}}
{{- end -}}
{{- if and (gt $groups 1) (has $k (list "FORWARDER_ACK_WAIT" "FORWARDER_MAX_DELIVERIES" "DEADLETTER_RETENTION")) -}}
{{- fail (printf "forwarders[%s].env: %s: set it in forwarderDefaults.env, the same for every group: each forwarder sets every destination's consumer and the dead-letter stream to its own value when it starts" $g.name $k) -}}
{{- end -}}
{{- end -}}
{{- range (include "stowline.servedDestinations" (dict "root" $root "f" $g) | fromYamlArray) -}}
{{- if not (has . $names) -}}
{{- fail (printf "forwarders[%s].destinations: %q is not a declared destination (%s)" $g.name . (join ", " $names)) -}}
{{- end -}}
{{- $_ := set $servedBy . (append (default list (get $servedBy .)) $g.name) -}}
{{- end -}}
{{- end -}}
{{- range $names -}}
{{- $by := default list (get $servedBy .) -}}
{{- if ne (len $by) 1 -}}
{{- fail (printf "destinations[%s]: served by %d forwarder groups %v, want exactly one (FORWARDER_DESTINATIONS): none leaves its queue unsent, two would share its consumer" . (len $by) $by) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Checks of the key files (stowline.secretFiles): each names a Secret, a key
and a variable the chart does not set otherwise, once.
*/}}
{{- define "stowline.validateSecretFiles" -}}
{{- $root := . -}}
{{- range $d := .Values.destinations -}}
{{- $seen := dict -}}
{{- range $i, $sf := (default list $d.secretFiles) -}}
{{- $where := printf "destinations[%s].secretFiles[%d]" $d.name $i -}}
{{- if not (and $sf.secretName $sf.key $sf.env) -}}
{{- fail (printf "%s: secretName, key and env are required (the Secret, its key, the variable naming the file)" $where) -}}
{{- end -}}
{{- if or (hasPrefix "DESTINATION" $sf.env) (has $sf.env (list "URL" "DICOMWEB_URL" "MATCH" "INSTANCE_MATCH" "STOW_PARALLEL_REQUESTS" "OAUTH_CLIENT_SECRET" "OAUTH_CLIENT_SECRET_FILE")) -}}
{{- fail (printf "%s: env %s: give the variable without the prefix, and the client secret with clientSecret" $where $sf.env) -}}
{{- end -}}
{{- if hasKey (default dict $d.env) $sf.env -}}
{{- fail (printf "%s: %s is set in destinations[%s].env too: keep one" $where $sf.env $d.name) -}}
{{- end -}}
{{- if hasKey $seen $sf.env -}}
{{- fail (printf "%s: %s is set by destinations[%s].secretFiles[%d] too: keep one" $where $sf.env $d.name (get $seen $sf.env)) -}}
{{- end -}}
{{- $_ := set $seen $sf.env $i -}}
{{- end -}}
{{- end -}}
{{- range $entry := .Values.forwarders -}}
{{- $f := include "stowline.forwarder" (dict "root" $root "entry" $entry) | fromYaml -}}
{{- $managed := include "stowline.managedEnv" (dict "root" $root "role" "forwarder" "f" $f) | fromYaml -}}
{{- $seen := dict -}}
{{- range $i, $sf := (default list $f.secretFiles) -}}
{{- $where := printf "forwarders[%s].secretFiles[%d]" $f.name $i -}}
{{- if not (and $sf.secretName $sf.key $sf.env) -}}
{{- fail (printf "%s: secretName, key and env are required (the Secret, its key, the variable naming the file)" $where) -}}
{{- end -}}
{{- if hasKey $managed $sf.env -}}
{{- fail (printf "%s: %s is set by the chart, from %s" $where $sf.env (get $managed $sf.env)) -}}
{{- end -}}
{{- if and $root.Values.destinations (or (hasPrefix "DESTINATION" $sf.env) (include "stowline.defaultDestinationVar" $sf.env)) -}}
{{- fail (printf "%s: %s is a destination's variable: with destinations, give it in destinations[].secretFiles (without the prefix)" $where $sf.env) -}}
{{- end -}}
{{- if or (hasKey (default dict $root.Values.env) $sf.env) (hasKey (default dict $f.env) $sf.env) -}}
{{- fail (printf "%s: %s is set in env, forwarderDefaults.env or forwarders[%s].env too: keep one" $where $sf.env $f.name) -}}
{{- end -}}
{{- if hasKey $seen $sf.env -}}
{{- fail (printf "%s: %s is set by forwarders[%s].secretFiles[%d] too: keep one" $where $sf.env $f.name (get $seen $sf.env)) -}}
{{- end -}}
{{- $_ := set $seen $sf.env $i -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Values from a Secret in the env maps, {valueFrom: {secretKeyRef: {name,
key}}} (a tracing vendor's key in OTEL_EXPORTER_OTLP_HEADERS): the value
stays in the Secret, out of the Deployment and the release. Not for the
variables the chart reads itself (grace periods, probes, network
policies), whose values it needs. Checked first: those checks would
misread a reference.
*/}}
{{- define "stowline.validateEnvRefs" -}}
{{- $maps := dict "env" (default dict .Values.env) "ingest.env" (default dict .Values.ingest.env) "forwarderDefaults.env" (default dict .Values.forwarderDefaults.env) -}}
{{- range .Values.forwarders }}{{ $_ := set $maps (printf "forwarders[%s].env" .name) (default dict .env) }}{{ end -}}
{{- range $where, $env := $maps -}}
{{- range $k, $v := $env -}}
{{- if kindIs "map" $v -}}
{{- $ref := dict -}}
{{- $from := get $v "valueFrom" -}}
{{- if kindIs "map" $from }}{{ $ref = get $from "secretKeyRef" }}{{ end -}}
{{- if not (and (kindIs "map" $ref) $ref.name $ref.key) -}}
{{- fail (printf "%s: %s: a variable from a Secret is {valueFrom: {secretKeyRef: {name: SECRET, key: KEY}}}" $where $k) -}}
{{- end -}}
{{- if or (has $k (list "INGEST_PUBLISH_TIMEOUT" "FORWARDER_SHUTDOWN_GRACE" "TLS_LISTEN_CERT_FILE" "ORTHANC_SOURCES" "ORTHANC_URL" "OAUTH_TOKEN_URL" "OAUTH_ISSUER_URL")) (regexMatch "^ORTHANC_.+_URL$" $k) -}}
{{- fail (printf "%s: %s: the chart reads this variable (grace periods, probes, network policies), so it cannot come from a Secret: write its value" $where $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
