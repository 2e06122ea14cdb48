{{/* Names and labels. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
What the chart needs to know from config.toml, as JSON:
  listen, stateBackend, auditBackend, auditPath, shutdownTimeout, envRefs.
TOML cannot be parsed in a template, so this walks the lines, tracking the
current [table]; comment lines are skipped. It reads the forms the contract
uses (`[state]` then `backend = "..."`), and also `state.backend = "..."`
and `state = { backend = "..." }` at the top level. Defaults are the
service's own: memory state, file audit at var/audit.jsonl, 30 s.
*/}}
{{- define "portcullis.configFacts" -}}
{{- $facts := dict "listen" "127.0.0.1:8080" "stateBackend" "memory" "auditBackend" "file" "auditPath" "var/audit.jsonl" "shutdownTimeout" "30s" -}}
{{- $envRefs := list -}}
{{- $section := "" -}}
{{- $keyOf := dict "server.listen" "listen" "state.backend" "stateBackend" "audit.backend" "auditBackend" "audit.path" "auditPath" "server.shutdown_timeout" "shutdownTimeout" -}}
{{- range $raw := splitList "\n" (toString .Values.config.toml) -}}
{{- $line := trim $raw -}}
{{- if and $line (not (hasPrefix "#" $line)) -}}
{{- range $ref := regexFindAll "\\benv\\s*=\\s*\"[^\"]+\"" $line -1 -}}
{{- $envRefs = append $envRefs (regexReplaceAll "^.*\"([^\"]+)\"$" $ref "${1}") -}}
{{- end -}}
{{- if regexMatch "^\\[\\[?\\s*[A-Za-z0-9_.-]+\\s*\\]" $line -}}
{{- $section = regexReplaceAll "^\\[\\[?\\s*([A-Za-z0-9_.-]+)\\s*\\].*$" $line "${1}" -}}
{{- else if regexMatch "^[A-Za-z0-9_.-]+\\s*=\\s*\"[^\"]*\"" $line -}}
{{- $key := regexReplaceAll "^([A-Za-z0-9_.-]+)\\s*=.*$" $line "${1}" | replace " " "" -}}
{{- $full := ternary $key (printf "%s.%s" $section $key) (eq $section "") -}}
{{- $value := regexReplaceAll "^[^=]*=\\s*\"([^\"]*)\".*$" $line "${1}" -}}
{{- with get $keyOf $full -}}{{- $_ := set $facts . $value -}}{{- end -}}
{{- else if and (eq $section "") (regexMatch "^(server|state|audit)\\s*=\\s*\\{" $line) -}}
{{- $table := regexReplaceAll "^([a-z]+)\\s*=.*$" $line "${1}" -}}
{{- range $k := list "listen" "backend" "path" "shutdown_timeout" -}}
{{- $m := regexFind (printf "\\b%s\\s*=\\s*\"[^\"]*\"" $k) $line -}}
{{- with $m -}}
{{- with get $keyOf (printf "%s.%s" $table $k) -}}{{- $_ := set $facts . (regexReplaceAll "^[^\"]*\"([^\"]*)\"$" $m "${1}") -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $facts "envRefs" (uniq $envRefs) -}}
{{- toJson $facts -}}
{{- end -}}

{{/* Seconds in a duration of the forms "90s", "2m", "1h"; 0 when another form. */}}
{{- define "portcullis.seconds" -}}
{{- $d := trim . -}}
{{- if regexMatch "^[0-9]+\\s*(s|sec|secs|second|seconds)$" $d -}}
{{- regexReplaceAll "^([0-9]+).*$" $d "${1}" -}}
{{- else if regexMatch "^[0-9]+\\s*(m|min|mins|minute|minutes)$" $d -}}
{{- mul (regexReplaceAll "^([0-9]+).*$" $d "${1}" | int) 60 -}}
{{- else if regexMatch "^[0-9]+\\s*(h|hr|hrs|hour|hours)$" $d -}}
{{- mul (regexReplaceAll "^([0-9]+).*$" $d "${1}" | int) 3600 -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/*
Refuses configurations that cannot work on Kubernetes. Rendered (to
nothing) by the Deployment, so every install and template runs it.
*/}}
{{- define "portcullis.validate" -}}
{{- $f := include "portcullis.configFacts" . | fromJson -}}
{{- $shared := and (eq $f.stateBackend "redis") (eq $f.auditBackend "redis") -}}
{{- if and (gt (int .Values.replicaCount) 1) (not $shared) -}}
{{- fail (printf "replicaCount is %d, but config.toml has [state] backend = %q and [audit] backend = %q: several replicas need backend = \"redis\" for both (memory state cannot be shared between pods, and the audit file has one writer). Set replicaCount: 1, or use Redis; see docs/deploy.md." (int .Values.replicaCount) $f.stateBackend $f.auditBackend) -}}
{{- end -}}
{{- $host := regexReplaceAll ":[0-9]+$" $f.listen "" | trimPrefix "[" | trimSuffix "]" -}}
{{- if not (regexMatch ":[0-9]+$" $f.listen) -}}
{{- fail (printf "config.toml: server.listen %q has no port" $f.listen) -}}
{{- end -}}
{{- if or (hasPrefix "127." $host) (eq $host "::1") (eq $host "localhost") -}}
{{- fail (printf "config.toml: server.listen is %q, a loopback address that nothing outside the pod can reach; use \"0.0.0.0:8080\"" $f.listen) -}}
{{- end -}}
{{- if eq $f.auditBackend "file" -}}
{{- $mount := trimSuffix "/" .Values.persistence.mountPath -}}
{{- if not (hasPrefix (printf "%s/" $mount) $f.auditPath) -}}
{{- fail (printf "config.toml: audit.path is %q; with the file backend it must be an absolute path under persistence.mountPath (%s/), the only writable, persistent place in the pod" $f.auditPath $mount) -}}
{{- end -}}
{{- end -}}
{{- if regexMatch "(?i)rediss?(\\+unix|\\+sentinel)?://[^/@\\s\"]*:[^/@\\s\"]+@" (toString .Values.config.toml) -}}
{{- fail "config.toml: the Redis URL carries a password, which would land in a ConfigMap; write state.url = { env = \"PORTCULLIS_REDIS_URL\" } and map that variable to a key of your Secret in secrets.env" -}}
{{- end -}}
{{- $timeout := include "portcullis.seconds" $f.shutdownTimeout | int -}}
{{- if gt $timeout 0 -}}
{{- $needed := add (mul $timeout 2) (int .Values.preStopSleepSeconds) -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + 2 x server.shutdown_timeout (%d s): on SIGTERM portcullis finishes requests, then decisions, each bounded by shutdown_timeout" (int .Values.terminationGracePeriodSeconds) $needed) -}}
{{- end -}}
{{- end -}}
{{- end -}}
