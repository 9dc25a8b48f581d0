{{/* Names, labels and the checks every template relies on. */}}

{{- define "mlwatchd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlwatchd.fullname" -}}
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

{{- define "mlwatchd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlwatchd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mlwatchd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mlwatchd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mlwatchd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlwatchd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mlwatchd.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Environment variable for a dotted config key: slack.bot_token -> MLWATCHD_SLACK__BOT_TOKEN */}}
{{- define "mlwatchd.envName" -}}
{{- printf "MLWATCHD_%s" (. | replace "." "__" | upper) -}}
{{- end -}}

{{/*
More consumers than partitions do nothing: the group gives each partition to
one member only, so the surplus replicas sit idle (and unready).
*/}}
{{- define "mlwatchd.checkScale" -}}
{{- $partitions := int .Values.kafkaPartitions -}}
{{- if lt $partitions 1 -}}
{{- fail "kafkaPartitions must be the (common) partition count of the input topics, at least 1" -}}
{{- end -}}
{{- if and (not .Values.keda.enabled) (gt (int .Values.replicaCount) $partitions) -}}
{{- fail (printf "replicaCount %d exceeds kafkaPartitions %d: extra consumers would get no partitions" (int .Values.replicaCount) $partitions) -}}
{{- end -}}
{{- $state := .Values.config.state | default dict -}}
{{- if and (eq ($state.store | default "local") "kafka") (not (and .Values.secrets.existingSecret (index .Values.secrets.keys "state.signing_key"))) -}}
{{- fail "config.state.store kafka needs secrets.existingSecret and secrets.keys[\"state.signing_key\"]: checkpoints in Kafka are signed" -}}
{{- end -}}
{{- if and .Values.interactivity.enabled (not (and .Values.secrets.existingSecret (index .Values.secrets.keys "playbooks.interactivity.signing_secret"))) -}}
{{- fail "interactivity.enabled needs secrets.existingSecret and secrets.keys[\"playbooks.interactivity.signing_secret\"]: Slack's callbacks are verified with it" -}}
{{- end -}}
{{- if and .Values.interactivity.enabled (eq (int .Values.interactivity.port) (int .Values.metrics.port)) -}}
{{- fail "interactivity.port must differ from metrics.port: exposing Slack's callbacks must not expose metrics and health" -}}
{{- end -}}
{{- if and .Values.keda.enabled (gt (int .Values.keda.maxReplicaCount) $partitions) -}}
{{- fail (printf "keda.maxReplicaCount %d exceeds kafkaPartitions %d: extra consumers would get no partitions" (int .Values.keda.maxReplicaCount) $partitions) -}}
{{- end -}}
{{- end -}}
