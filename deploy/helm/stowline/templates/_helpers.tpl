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

{{/* The secret variables each command reads. */}}
{{- define "stowline.secretVars.ingest" -}}
INGEST_TOKEN INGEST_HMAC_SECRET ADMIN_TOKEN ORTHANC_PASSWORD NATS_PASSWORD
{{- end -}}
{{- define "stowline.secretVars.forwarder" -}}
OAUTH_CLIENT_SECRET ADMIN_TOKEN ORTHANC_PASSWORD NATS_PASSWORD
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

{{/* Secret keys one command gets: (dict "root" $ "role" "ingest"). */}}
{{- define "stowline.roleSecretKeys" -}}
{{- $held := splitList " " (include "stowline.secretKeys" .root) -}}
{{- $out := list -}}
{{- range splitList " " (include (printf "stowline.secretVars.%s" .role) .root) -}}
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
Arguments: (dict "root" $ "role" "ingest").
*/}}
{{- define "stowline.commonEnv" -}}
{{- $root := .root -}}
{{- $env := dict -}}
{{- range $k, $v := $root.Values.env }}{{ $_ := set $env $k $v }}{{ end -}}
{{- $_ := set $env "NATS_URL" (required "nats.url is required: the NATS JetStream servers' URLs (NATS_URL)" $root.Values.nats.url) -}}
{{- $_ := set $env "NATS_REPLICAS" $root.Values.nats.replicas -}}
{{- if $root.Values.nats.credsSecret }}{{ $_ := set $env "NATS_CREDS_FILE" (printf "%s/nats.creds" (include "stowline.natsDir" $root)) }}{{ end -}}
{{- $_ := set $env "ORTHANC_URL" $root.Values.orthanc.url -}}
{{- $_ := set $env "ORTHANC_USERNAME" $root.Values.orthanc.username -}}
{{- $_ := set $env "ORTHANC_SOURCE_NAME" $root.Values.orthanc.sourceName -}}
{{- range splitList " " (include "stowline.roleSecretKeys" .) -}}
{{- if . }}{{ $_ := set $env (printf "%s_FILE" .) (printf "%s/%s" (include "stowline.secretDir" $root) .) }}{{ end -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* A container's env list from a dict, sorted, empty values left out. */}}
{{- define "stowline.envList" -}}
{{- range $k, $v := . }}
{{- if not (eq (toString $v) "") }}
- name: {{ $k }}
  value: {{ toString $v | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes of a pod: (dict "root" $ "role" "ingest"). */}}
{{- define "stowline.volumes" -}}
{{- $root := .root -}}
{{- $keys := include "stowline.roleSecretKeys" . -}}
{{- if $keys }}
- name: secrets
  secret:
    secretName: {{ include "stowline.secretName" $root }}
    defaultMode: 0440
    items:
    {{- range splitList " " $keys }}
      - key: {{ . }}
        path: {{ . }}
    {{- end }}
{{- end }}
{{- with $root.Values.nats.credsSecret }}
- name: nats-creds
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: nats.creds
        path: nats.creds
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
{{- if $root.Values.nats.credsSecret }}
- name: nats-creds
  mountPath: {{ include "stowline.natsDir" $root }}
  readOnly: true
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
The most replicas a forwarder group may have: set, or derived from
Orthanc's HTTP threads (one connection per thread; each replica keeps up
to concurrency x stowParallelRequests) and from the consumer's 1000
ack-pending events. Arguments: (dict "root" $ "f" $forwarder).
*/}}
{{- define "stowline.forwarderMaxReplicas" -}}
{{- $f := .f -}}
{{- $o := .root.Values.orthanc -}}
{{- if gt (int $f.keda.maxReplicaCount) 0 -}}
{{- int $f.keda.maxReplicaCount -}}
{{- else -}}
{{- $perReplica := mul (int $f.concurrency) (int $f.stowParallelRequests) -}}
{{- $threads := sub (int $o.httpThreadsCount) (int $o.reservedThreads) -}}
{{- $max := div $threads $perReplica -}}
{{- $ackLimit := div 1000 (int $f.concurrency) -}}
{{- if gt $max $ackLimit }}{{ $max = $ackLimit }}{{ end -}}
{{- if lt $max (int $f.keda.minReplicaCount) -}}
{{- fail (printf "forwarders[%s]: Orthanc's %d HTTP threads (orthanc.httpThreadsCount %d - orthanc.reservedThreads %d) give at most %d replicas of %d connections (concurrency %d x stowParallelRequests %d), fewer than keda.minReplicaCount %d: raise Orthanc's HttpThreadsCount and orthanc.httpThreadsCount, or lower the concurrency" $f.name $threads (int $o.httpThreadsCount) (int $o.reservedThreads) $max $perReplica (int $f.concurrency) (int $f.stowParallelRequests) (int $f.keda.minReplicaCount)) -}}
{{- end -}}
{{- $max -}}
{{- end -}}
{{- end -}}

{{/* Chart-wide checks, included by every template that needs them. */}}
{{- define "stowline.validate" -}}
{{- if not (has "INGEST_TOKEN" (splitList " " (include "stowline.secretKeys" .))) -}}
{{- fail "secrets: INGEST_TOKEN is required (secrets.values.INGEST_TOKEN, or secrets.existingSecret with INGEST_TOKEN in secrets.existingSecretKeys)" -}}
{{- end -}}
{{- if ne (len .Values.forwarders) 1 -}}
{{- fail "forwarders: exactly one entry. stowline has one destination and one JetStream consumer today; two groups would share the consumer and split the studies between their destinations" -}}
{{- end -}}
{{- if and (not .Values.orthanc.url) (not .Values.env.ORTHANC_SOURCES) -}}
{{- fail "orthanc.url is required: Orthanc's REST API as the pods reach it (ORTHANC_URL), or several sources with ORTHANC_SOURCES in env" -}}
{{- end -}}
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
# NATS.
- ports:
    {{- range $e.nats.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $e.nats.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# Orthanc's REST API.
- ports:
    {{- range $e.orthanc.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $e.orthanc.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
