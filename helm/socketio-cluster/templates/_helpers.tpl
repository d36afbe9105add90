{{/*
The chart's name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "socketio-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name, the prefix of every resource name: 63
characters at most, and the release name alone when it already holds the
chart's name.
*/}}
{{- define "socketio-cluster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"chart-version", the helm.sh/chart label.
*/}}
{{- define "socketio-cluster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels every resource carries.
*/}}
{{- define "socketio-cluster.labels" -}}
helm.sh/chart: {{ include "socketio-cluster.chart" . }}
{{ include "socketio-cluster.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "socketio-cluster.name" . }}
{{- end }}

{{/*
The labels that select this release's pods; add a component to tell the
nodes, the worker and Redis apart.
*/}}
{{- define "socketio-cluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "socketio-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Names and selector labels of each component. Usage:
  {{ include "socketio-cluster.componentSelectorLabels" (dict "context" $ "component" "node") }}
*/}}
{{- define "socketio-cluster.componentSelectorLabels" -}}
{{ include "socketio-cluster.selectorLabels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "socketio-cluster.componentLabels" -}}
{{ include "socketio-cluster.labels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "socketio-cluster.workerName" -}}
{{- printf "%s-worker" (include "socketio-cluster.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "socketio-cluster.redisName" -}}
{{- printf "%s-redis" (include "socketio-cluster.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "socketio-cluster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "socketio-cluster.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image of the nodes and the worker; the tag defaults to appVersion.
*/}}
{{- define "socketio-cluster.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The Secret holding SECRET_KEY and the signing secret: the user's, or the
chart's (which then requires secretKey, with a message naming the fix).
*/}}
{{- define "socketio-cluster.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- if not .Values.secretKey }}
{{- fail "secretKey is required: set --set secretKey=$(openssl rand -hex 32), or existingSecret=<a Secret holding secret-key>" }}
{{- end }}
{{- include "socketio-cluster.fullname" . }}
{{- end }}
{{- end }}

{{- define "socketio-cluster.secretKeyKey" -}}
{{- if .Values.existingSecret }}{{ .Values.existingSecretKeys.secretKey }}{{ else }}secret-key{{ end }}
{{- end }}

{{/*
A secret value, base64-encoded for a Secret's data: the one given in values,
else the one the release's Secret already holds (so upgrades keep it), else
a new random one. Usage:
  {{ include "socketio-cluster.keptSecret" (dict "existing" (lookup "v1" "Secret" ns name) "key" "signing-secret" "given" .Values.signingSecret "length" 48) }}
`lookup` finds nothing under `helm template` or a dry run: tools that render
that way (GitOps) must give the value, or it changes at every render.
*/}}
{{- define "socketio-cluster.keptSecret" -}}
{{- $data := dict }}
{{- if .existing }}
{{- $data = .existing.data | default dict }}
{{- end }}
{{- if .given }}
{{- .given | b64enc }}
{{- else if hasKey $data .key }}
{{- index $data .key }}
{{- else }}
{{- randAlphaNum (int .length) | b64enc }}
{{- end }}
{{- end }}

{{- define "socketio-cluster.signingSecretKey" -}}
{{- if .Values.existingSecret }}{{ .Values.existingSecretKeys.signingSecret }}{{ else }}signing-secret{{ end }}
{{- end }}

{{/*
The bus URL env var value (a value: or valueFrom: entry body): the bundled
Redis, or externalRedis (from its Secret or its url).
*/}}
{{- define "socketio-cluster.messageQueueUrlEnv" -}}
{{- if .Values.redis.enabled }}
{{- /* $(REDIS_PASSWORD): Kubernetes expands the variable set just before */}}
value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "socketio-cluster.redisName" .) | quote }}
{{- else if .Values.externalRedis.existingSecret }}
valueFrom:
  secretKeyRef:
    name: {{ .Values.externalRedis.existingSecret }}
    key: {{ .Values.externalRedis.existingSecretKey }}
{{- else if .Values.externalRedis.url }}
value: {{ .Values.externalRedis.url | quote }}
{{- else }}
{{- fail "redis.enabled is false: set externalRedis.url (or externalRedis.existingSecret) to the bus URL" }}
{{- end }}
{{- end }}

{{/*
The environment the nodes and the worker share, as docker-compose.yml's
x-node-environment: the bus, the secrets, recovery and logging.
*/}}
{{- define "socketio-cluster.commonEnv" -}}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "socketio-cluster.redisName" . }}
      key: redis-password
{{- end }}
- name: MESSAGE_QUEUE_URL
  {{- include "socketio-cluster.messageQueueUrlEnv" . | trim | nindent 2 }}
{{- with .Values.messageQueue.channel }}
- name: MESSAGE_QUEUE_CHANNEL
  value: {{ . | quote }}
{{- end }}
{{- if gt (int .Values.messageQueue.redisPartitions) 1 }}
{{- if .Values.connectionStateRecovery.enabled }}
{{- fail "messageQueue.redisPartitions above 1 cannot be combined with connection state recovery yet: set connectionStateRecovery.enabled=false, or messageQueue.redisPartitions=1" }}
{{- end }}
- name: CLUSTER_REDIS_PARTITIONS
  value: {{ .Values.messageQueue.redisPartitions | toString | quote }}
{{- end }}
- name: SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "socketio-cluster.secretName" . }}
      key: {{ include "socketio-cluster.secretKeyKey" . }}
{{- /* required: a node or worker without a secret refuses to start, unless
       allowUnsignedBus opts out */}}
- name: CLUSTER_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "socketio-cluster.secretName" . }}
      key: {{ include "socketio-cluster.signingSecretKey" . }}
      optional: {{ .Values.allowUnsignedBus }}
{{- if .Values.allowUnsignedBus }}
- name: CLUSTER_ALLOW_UNSIGNED_BUS
  value: "1"
{{- end }}
- name: CONNECTION_STATE_RECOVERY
  {{- if .Values.connectionStateRecovery.enabled }}
  value: {{ .Values.connectionStateRecovery.maxDisconnectionSeconds | toString | quote }}
  {{- else }}
  value: ""
  {{- end }}
- name: LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/*
The volume and mount of externalRedis.tls.caSecret (the CA that signed the
Redis server's certificate), at socketio-cluster.redisCaDir.
*/}}
{{- define "socketio-cluster.redisCaDir" -}}
/etc/socketio-cluster/redis-ca
{{- end }}

{{- define "socketio-cluster.redisCaMount" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.caSecret }}
- name: redis-ca
  mountPath: {{ include "socketio-cluster.redisCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "socketio-cluster.redisCaVolume" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.externalRedis.tls.caSecret }}
    items:
      - key: {{ .Values.externalRedis.tls.caKey }}
        path: ca.crt
{{- end }}
{{- end }}

{{/*
The pod annotations of a workload: a checksum of the chart's Secret (so a
changed secret rolls the pods), the Prometheus scrape hints, then the user's.
Usage: include "socketio-cluster.podAnnotations" (dict "context" $ "metrics" true "extra" .Values.podAnnotations)
*/}}
{{- define "socketio-cluster.podAnnotations" -}}
{{- $ctx := .context }}
{{- $annotations := dict }}
{{- if not $ctx.Values.existingSecret }}
{{- $_ := set $annotations "checksum/secret" (include (print $ctx.Template.BasePath "/secret.yaml") $ctx | sha256sum) }}
{{- end }}
{{- if .metrics }}
{{- $_ := set $annotations "prometheus.io/scrape" "true" }}
{{- $_ := set $annotations "prometheus.io/port" "5000" }}
{{- $_ := set $annotations "prometheus.io/path" "/metrics" }}
{{- end }}
{{- $annotations = merge (deepCopy (.extra | default dict)) $annotations }}
{{- with $annotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
The per-connection limits as the runner's environment: a value left null
is passed empty, which keeps the runner's default (as compose does); 0 is
passed (it switches some limits off).
Whole numbers are printed as integers (YAML numbers arrive as floats).
*/}}
{{- define "socketio-cluster.limitsEnv" -}}
{{- $names := dict
  "maxBacklog" "CLUSTER_MAX_BACKLOG"
  "maxEventsPerSecond" "CLUSTER_MAX_EVENTS_PER_SECOND"
  "maxRoomsPerConnection" "CLUSTER_MAX_ROOMS_PER_CONNECTION"
  "connectTimeoutSeconds" "CLUSTER_CONNECT_TIMEOUT"
  "maxReplayPackets" "CLUSTER_MAX_REPLAY_PACKETS"
  "maxReplayBytes" "CLUSTER_MAX_REPLAY_BYTES"
  "httpHeaderTimeoutSeconds" "CLUSTER_HTTP_HEADER_TIMEOUT"
  "httpIdleTimeoutSeconds" "CLUSTER_HTTP_IDLE_TIMEOUT"
  "httpBodyTimeoutSeconds" "CLUSTER_HTTP_BODY_TIMEOUT"
  "writeWindowSeconds" "CLUSTER_WRITE_WINDOW" }}
{{- $limits := .Values.limits | default dict }}
{{- range $key := keys $names | sortAlpha }}
{{- $value := index $limits $key }}
- name: {{ index $names $key }}
{{- if kindIs "invalid" $value }}
  value: ""
{{- else if eq (float64 $value) (floor (float64 $value)) }}
  value: {{ int64 $value | toString | quote }}
{{- else }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}
