{{/*
Names and labels, as `helm create` makes them, except that no name is ever cut
blindly: helm accepts release names of up to 53 characters, and "<release>-catalog"
plus a component suffix would pass Kubernetes' 63-character limits (Service names
are DNS-1035 labels; Job and ScaledObject names are copied into label values).
*/}}
{{- define "catalog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<release>-<name>" (or fullnameOverride, or the release alone when it already
contains the name), made a DNS-1035 label: dots (which release names may hold)
become dashes, and a release that starts with a digit goes after the name
("catalog-1st"), since a Service name must start with a letter.
*/}}
{{- define "catalog.fullname" -}}
{{- $full := "" }}
{{- if .Values.fullnameOverride }}
{{- $full = .Values.fullnameOverride }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- $release := .Release.Name | replace "." "-" }}
{{- if contains $name $release }}
{{- $full = $release }}
{{- else if regexMatch "^[0-9]" $release }}
{{- $full = printf "%s-%s" $name $release }}
{{- else }}
{{- $full = printf "%s-%s" $release $name }}
{{- end }}
{{- end }}
{{- include "catalog.fit" (dict "name" $full "suffix" "") }}
{{- end }}

{{/*
The name of one component's resource: "<fullname>-<component>", e.g.
(dict "ctx" $ "component" "worker-metrics") -> "rel-catalog-worker-metrics".
*/}}
{{- define "catalog.componentName" -}}
{{- include "catalog.fit" (dict "name" (include "catalog.fullname" .ctx) "suffix" .component) }}
{{- end }}

{{/*
"<name>-<suffix>" in at most 63 characters. When it is longer, the name is cut
and 8 hex digits of the whole name's sha256 go before the suffix, so two long
names that differ only past the cut stay different and the suffix stays readable:
"<cut name>-<hash>-<suffix>". Pass (dict "name" ... "suffix" ...); suffix may be "".
*/}}
{{- define "catalog.fit" -}}
{{- $whole := .name }}
{{- if .suffix }}{{ $whole = printf "%s-%s" .name .suffix }}{{ end }}
{{- if le (len $whole) 63 }}
{{- $whole }}
{{- else }}
{{- $tail := printf "-%s" (sha256sum $whole | trunc 8) }}
{{- if .suffix }}{{ $tail = printf "%s-%s" $tail .suffix }}{{ end }}
{{- $cut := trunc (int (sub 63 (len $tail))) .name }}
{{- printf "%s%s" (regexReplaceAll "-+$" $cut "") $tail }}
{{- end }}
{{- end }}

{{- define "catalog.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "catalog.labels" -}}
helm.sh/chart: {{ include "catalog.chart" . }}
{{ include "catalog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: catalog
{{- end }}

{{- define "catalog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "catalog.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per component: pass (dict "ctx" $ "component" "api"). */}}
{{- define "catalog.componentLabels" -}}
{{ include "catalog.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "catalog.componentSelectorLabels" -}}
{{ include "catalog.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "catalog.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "catalog.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "catalog.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding DATABASE_URL, REDIS_URL, SECRET_KEY and API_KEYS. */}}
{{- define "catalog.secretName" -}}
{{- default (include "catalog.componentName" (dict "ctx" . "component" "settings")) .Values.secrets.existingSecret }}
{{- end }}

{{/*
A scalar as written in the values file or on the command line. Helm reads every
number in a values file as a float64, whose default formatting turns 1000000
into "1e+06" (and a pod reading CACHE_L1_MAX_ITEMS=1e+06 exits). JSON
formatting writes whole numbers in full (below 1e21) and other numbers in their
shortest form (0.5); strings and --set integers pass through unchanged.
Numbers past 2^53 in a values file have already lost precision when helm read
them: quote those ("12345678901234567890").
*/}}
{{- define "catalog.plain" -}}
{{- if kindIs "string" . }}{{ . }}{{ else if kindIs "float64" . }}{{ toJson . }}{{ else }}{{ toString . }}{{ end }}
{{- end }}

{{/* Non-secret settings, as NAME: "value" (the ConfigMap's data and the migration job's env). */}}
{{- define "catalog.settingsEnv" -}}
ENVIRONMENT: {{ .Values.settings.environment | quote }}
LOG_LEVEL: {{ .Values.settings.logLevel | quote }}
REQUEST_TIMEOUT_SECONDS: {{ include "catalog.plain" .Values.settings.requestTimeoutSeconds | quote }}
DATABASE_POOL_MODE: {{ include "catalog.poolMode" . | quote }}
DB_POOL_MIN_SIZE: {{ include "catalog.plain" .Values.settings.dbPoolMinSize | quote }}
DB_POOL_MAX_SIZE: {{ include "catalog.plain" .Values.settings.dbPoolMaxSize | quote }}
DB_CONNECT_TIMEOUT_SECONDS: {{ include "catalog.plain" .Values.settings.dbConnectTimeoutSeconds | quote }}
DB_STATEMENT_TIMEOUT_SECONDS: {{ include "catalog.plain" .Values.settings.dbStatementTimeoutSeconds | quote }}
REDIS_COMMAND_TIMEOUT_SECONDS: {{ include "catalog.plain" .Values.settings.redisCommandTimeoutSeconds | quote }}
KEEPALIVE_SECONDS: {{ include "catalog.plain" .Values.settings.keepaliveSeconds | quote }}
SHUTDOWN_DRAIN_SECONDS: {{ include "catalog.plain" .Values.settings.shutdownDrainSeconds | quote }}
GRACEFUL_TIMEOUT_SECONDS: {{ include "catalog.plain" .Values.settings.gracefulTimeoutSeconds | quote }}
MAX_BODY_BYTES: {{ include "catalog.plain" .Values.settings.maxBodyBytes | quote }}
TRUSTED_PROXIES: {{ .Values.settings.trustedProxies | quote }}
{{- /* The API stamps it on each job it enqueues; the worker enforces what the job carries. */}}
JOB_MAX_ATTEMPTS: {{ include "catalog.plain" .Values.worker.jobMaxAttempts | quote }}
{{- with .Values.oidc }}
{{- if .issuerUrl }}
OIDC_ISSUER_URL: {{ .issuerUrl | quote }}
OIDC_AUDIENCE: {{ .audience | quote }}
OIDC_SCOPE_CLAIMS: {{ .scopeClaims | quote }}
OIDC_SCOPE_MAP: {{ .scopeMap | quote }}
OIDC_ALGORITHMS: {{ .algorithms | quote }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.settings.extraEnv }}
{{ $name }}: {{ include "catalog.plain" $value | quote }}
{{- end }}
{{- end }}

{{/* Whether the pods get DATABASE_DIRECT_URL (from values or, by the operator's word, their own Secret). */}}
{{- define "catalog.hasDirectUrl" -}}
{{- if or .Values.secrets.databaseDirectUrl (and .Values.secrets.existingSecret .Values.database.directUrlInSecret) }}true{{ end }}
{{- end }}

{{/* Rolls the pods when settings or secrets given as values change. */}}
{{- define "catalog.configChecksum" -}}
{{- list .Values.settings .Values.secrets .Values.worker.jobMaxAttempts (include "catalog.poolMode" .) .Values.oidc | toJson | sha256sum }}
{{- end }}

{{/*
Values added after the first chart (0.1.0 as first committed) are read with their
default when absent, never as .Values.<a>.<b>: `helm upgrade --reuse-values` renders
this chart with the defaults of the chart the release was installed with (helm v4,
pkg/action/upgrade.go), where they are missing, and a missing parent map is a nil
pointer that fails the upgrade. tests/deploy/test_chart_upgrade.py upgrades from every
earlier chart in git history and checks that these defaults equal values.yaml's.
  development.liveUpdate      catalog.liveUpdate below (the whole map is new)
  httpRoute.timeouts          `if` of a missing key is false, its default
  networkPolicy.extraEgress   `with` of a missing key renders nothing, as its default []
Removed values stay in values.schema.json marked deprecated (see CHANGELOG.md).
*/}}

{{/* database.poolMode (added in 0.3.0), "session" when absent. */}}
{{- define "catalog.poolMode" -}}
{{- dig "database" "poolMode" "session" .Values.AsMap }}
{{- end }}

{{/* database.directPort (added in 0.3.0), 5432 when absent. */}}
{{- define "catalog.directPort" -}}
{{- include "catalog.plain" (dig "database" "directPort" 5432 .Values.AsMap) }}
{{- end }}

{{/* oidc.issuerUrl (added in 0.5.0), "" when absent: the oidc map is new, so never .Values.oidc.<key>. */}}
{{- define "catalog.oidcIssuerUrl" -}}
{{- dig "oidc" "issuerUrl" "" .Values.AsMap }}
{{- end }}

{{/* "true" when Tilt's live update is on (development.liveUpdate), else "". */}}
{{- define "catalog.liveUpdate" -}}
{{- if dig "development" "liveUpdate" false .Values.AsMap }}true{{ end }}
{{- end }}

{{/* Pod-level security context: Pod Security Standard "restricted". */}}
{{- define "catalog.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context: no privilege, no capabilities, read-only root
(writable only for Tilt's live update, development.liveUpdate, refused outside development). */}}
{{- define "catalog.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ not (include "catalog.liveUpdate" .) }}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
A long-running container's command: (dict "ctx" $ "command" (list ...) "stopSeconds" n).
With development.liveUpdate it runs under watchfiles, which restarts it (SIGINT, then
SIGKILL after stopSeconds) when a file under /app/service changes: Tilt's live update
writes them there, and a fresh process is the only way every module is reloaded.
*/}}
{{- define "catalog.command" -}}
{{- if include "catalog.liveUpdate" .ctx }}
{{- list "watchfiles" "--target-type" "command" "--sigint-timeout" (toString .stopSeconds) (join " " .command) "/app/service" | toJson }}
{{- else }}
{{- .command | toJson }}
{{- end }}
{{- end }}

{{/* The worker's job processes: worker.concurrency, or the CPU request rounded up. */}}
{{- define "catalog.workerConcurrency" -}}
{{- if gt (int .Values.worker.concurrency) 0 }}
{{- include "catalog.plain" .Values.worker.concurrency }}
{{- else }}
{{- $cpu := include "catalog.plain" .Values.worker.resources.requests.cpu }}
{{- if hasSuffix "m" $cpu }}
{{- $milli := trimSuffix "m" $cpu | int }}
{{- max 1 (div (add $milli 999) 1000) }}
{{- else }}
{{- max 1 (ceil (float64 $cpu) | int) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A worker pod's pool: one connection per job process, plus the claim loop, the heartbeat and the
upkeep. service/config.py's worker_pool_max_size computes the same (tests/deploy/test_chart_worker.py). */}}
{{- define "catalog.workerPoolMaxSize" -}}
{{- add (int (include "catalog.workerConcurrency" .)) 3 }}
{{- end }}

{{/* Every connection an API pod opens: its request pool plus /readyz's own (api_connections). */}}
{{- define "catalog.apiConnections" -}}
{{- add (int .Values.settings.dbPoolMaxSize) 1 }}
{{- end }}

{{/* Every connection a worker pod opens: its pool plus the LISTEN connection (worker_connections). */}}
{{- define "catalog.workerConnections" -}}
{{- add (int (include "catalog.workerPoolMaxSize" .)) 1 }}
{{- end }}

{{/* Highest replica count each component can reach (autoscaling maximum, else the fixed count). */}}
{{- define "catalog.apiMaxReplicas" -}}
{{- if .Values.api.autoscaling.enabled }}{{ .Values.api.autoscaling.maxReplicas }}{{ else }}{{ .Values.api.replicas }}{{ end }}
{{- end }}

{{- define "catalog.kedaAvailable" -}}
{{- if .Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject" }}true{{ end }}
{{- end }}

{{- define "catalog.useKeda" -}}
{{- if and .Values.worker.enabled .Values.worker.keda.enabled (include "catalog.kedaAvailable" .) }}true{{ end }}
{{- end }}

{{- define "catalog.workerMaxReplicas" -}}
{{- if not .Values.worker.enabled }}0
{{- else if include "catalog.useKeda" . }}{{ .Values.worker.keda.maxReplicas }}
{{- else if .Values.worker.autoscaling.enabled }}{{ .Values.worker.autoscaling.maxReplicas }}
{{- else }}{{ .Values.worker.replicas }}
{{- end }}
{{- end }}

{{- define "catalog.monitoringAvailable" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{- define "catalog.gatewayAvailable" -}}
{{- if .Capabilities.APIVersions.Has "gateway.networking.k8s.io/v1/HTTPRoute" }}true{{ end }}
{{- end }}

{{- define "catalog.monitoringLabels" -}}
release: {{ .Values.monitoring.release | quote }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
checkov findings this chart declines, each with its reason (checkov reads
checkov.io/skipN annotations). tests/deploy/test_chart_checkov.py fails on any
other finding.
*/}}
{{- define "catalog.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_11=No CPU limit by default on purpose - CFS quotas throttle the single event loop and turn bursts into tail latency; the CPU request reserves capacity (see values.yaml api.resources)
checkov.io/skip2: CKV_K8S_15=Tags are fixed (moving tags are refused by the chart) or digests, so IfNotPresent cannot run stale code and avoids a registry dependency on every restart
checkov.io/skip3: CKV_K8S_35=The service reads settings from environment variables only (service/config.py); the Secret is injected with envFrom and never logged
checkov.io/skip4: CKV_K8S_43=image.digest pins by digest when set; otherwise a fixed tag is required and moving tags are refused
{{- end }}

{{/* The port of oidc.issuerUrl: the one in the URL, else 443 (the schema allows https only). */}}
{{- define "catalog.oidcIssuerPort" -}}
{{- $host := (urlParse (include "catalog.oidcIssuerUrl" .)).host -}}
{{- if regexMatch ":[0-9]+$" $host -}}
{{- regexFind "[0-9]+$" $host -}}
{{- else -}}
443
{{- end -}}
{{- end }}
