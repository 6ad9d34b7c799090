{{/* Object names: the release name if it holds the chart name, else `<release>-<chart>`. */}}
{{- define "esc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "esc.fullname" -}}
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

{{/* The artifact Service: the seed's name, `flux-<fullname>-artifacts`. */}}
{{- define "esc.artifactService" -}}
{{- printf "flux-%s-artifacts" (include "esc.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "esc.labels" -}}
app.kubernetes.io/name: {{ include "esc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: flux-externalsource
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Every pod that serves artifacts carries these: the artifact Service selects them. */}}
{{- define "esc.servingLabels" -}}
control-plane: controller-manager
app.kubernetes.io/name: {{ include "esc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Is every replica Ready and serving? s3 always; filesystem when shared. */}}
{{- define "esc.sharedStore" -}}
{{- if or (eq .Values.storage.backend "s3") (and (eq .Values.storage.backend "filesystem") .Values.storage.filesystem.shared) -}}
true
{{- end -}}
{{- end -}}

{{- define "esc.replicas" -}}
{{- if kindIs "invalid" .Values.controller.replicas -}}
{{- if include "esc.sharedStore" . }}2{{ else }}1{{ end -}}
{{- else -}}
{{- .Values.controller.replicas -}}
{{- end -}}
{{- end -}}

{{- define "esc.image" -}}
{{- $tag := .Values.image.tag -}}
{{- if not $tag -}}
{{- $tag = ternary "latest" (printf "latest-%s" .Values.storage.backend) (eq .Values.storage.backend "memory") -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* Does the s3 backend serve through the controller (proxy) or from S3 (direct)? */}}
{{- define "esc.s3Proxy" -}}
{{- if and (eq .Values.storage.backend "s3") (eq .Values.storage.s3.mode "proxy") -}}
true
{{- end -}}
{{- end -}}

{{- define "esc.pvcName" -}}
{{- default (printf "%s-artifacts" (include "esc.fullname" .)) .Values.storage.filesystem.persistence.existingClaim -}}
{{- end -}}

{{/*
One TOML value. Helm reads every YAML number as a float, so whole numbers are written as
integers (the controller rejects `4.0` where it wants a count). Strings are JSON-quoted, which
is valid TOML.
*/}}
{{- define "esc.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "esc.tomlValue" $v }}{{ end }}]
{{- else -}}
{{- fail (printf "config: %v is not a string, number, boolean or list" .) -}}
{{- end -}}
{{- end -}}

{{/* A TOML table: `[name]` then its keys, sorted. */}}
{{- define "esc.tomlTable" -}}
[{{ .name }}]
{{- range $k, $v := .keys }}
{{ $k }} = {{ include "esc.tomlValue" $v }}
{{- end }}
{{- end -}}

{{/* The whole config.toml. */}}
{{- define "esc.config" -}}
# Rendered by the externalsource-controller chart from `config` and `storage`.
# Environment variables on the Deployment take precedence; unknown keys stop the controller.
{{- $config := deepCopy .Values.config }}
{{- $controller := default (dict) (get $config "controller") }}
{{- $_ := set $controller "lease_name" (printf "%s-leader" (include "esc.fullname" .)) }}
{{- $_ := set $config "controller" $controller }}
{{- range $name, $keys := $config }}

{{ include "esc.tomlTable" (dict "name" $name "keys" $keys) }}
{{- end }}

[storage]
backend = {{ toJson .Values.storage.backend }}
{{- with .Values.storage }}
{{- if eq .backend "memory" }}

[storage.memory]
max_bytes = {{ toJson .memory.maxBytes }}
{{- else if eq .backend "filesystem" }}

[storage.filesystem]
root = {{ toJson .filesystem.root }}
shared = {{ ternary "true" "false" .filesystem.shared }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment the serving containers share (the names must match the artifact Service). */}}
{{- define "esc.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: SERVICE_NAME
  value: {{ include "esc.artifactService" . }}
- name: ARTIFACT_SERVER_PORT
  value: {{ .Values.config.server.port | int | toString | quote }}
- name: OPS_PORT
  value: {{ .Values.config.ops.port | int | toString | quote }}
{{- if ne .Values.storage.backend "memory" }}
- name: STORAGE_BACKEND
  value: {{ .Values.storage.backend }}
{{- end }}
{{- if eq .Values.storage.backend "filesystem" }}
- name: PVC_STORAGE_PATH
  value: {{ .Values.storage.filesystem.root }}
{{- end }}
{{- if and (eq .Values.storage.backend "s3") .Values.storage.s3.credentials.existingSecret }}
- name: S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.s3.credentials.existingSecret }}
      key: access-key-id
- name: S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.s3.credentials.existingSecret }}
      key: secret-access-key
{{- end }}
{{- end -}}

{{- define "esc.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 2
  failureThreshold: 150
  timeoutSeconds: 5
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  initialDelaySeconds: 5
  periodSeconds: 20
  timeoutSeconds: 5
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  initialDelaySeconds: 2
  periodSeconds: 5
  timeoutSeconds: 5
{{- end -}}

{{- define "esc.ports" -}}
- name: artifacts
  containerPort: {{ .Values.config.server.port | int }}
  protocol: TCP
- name: metrics
  containerPort: {{ .Values.config.ops.port | int }}
  protocol: TCP
{{- end -}}
