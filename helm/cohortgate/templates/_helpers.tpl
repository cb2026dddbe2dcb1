{{/* Names ---------------------------------------------------------------------------- */}}

{{- define "cohortgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cohortgate.fullname" -}}
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

{{- define "cohortgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels shared by every object of the release. */}}
{{- define "cohortgate.labels" -}}
helm.sh/chart: {{ include "cohortgate.chart" . }}
app.kubernetes.io/name: {{ include "cohortgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cohortgate
{{- end -}}

{{- define "cohortgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cohortgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The gateway's pods (a NetworkPolicy peer and the Deployment's selector). */}}
{{- define "cohortgate.gatewaySelectorLabels" -}}
{{ include "cohortgate.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* Every model server of the release; add cohortgate.io/model for one of them. */}}
{{- define "cohortgate.modelServerSelectorLabels" -}}
{{ include "cohortgate.selectorLabels" . }}
app.kubernetes.io/component: model-server
{{- end -}}

{{- define "cohortgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cohortgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cohortgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Model servers ------------------------------------------------------------------------ */}}

{{/* Object name of one model server: (dict "root" $ "name" "base"). */}}
{{- define "cohortgate.modelServerName" -}}
{{- printf "%s-%s" (include "cohortgate.fullname" .root | trunc 50 | trimSuffix "-") .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Base URL (with /v1) of one model server's Service, for policy upstreams. */}}
{{- define "cohortgate.modelServerUrl" -}}
{{- printf "http://%s.%s.svc:%v/v1" (include "cohortgate.modelServerName" .) .root.Release.Namespace .root.Values.modelServers.port -}}
{{- end -}}

{{/* Secrets and ConfigMaps -------------------------------------------------------------- */}}

{{- define "cohortgate.policyConfigMapName" -}}
{{- default (printf "%s-policy" (include "cohortgate.fullname" .)) .Values.policy.existingConfigMap -}}
{{- end -}}

{{- define "cohortgate.upstreamSecretName" -}}
{{- default (printf "%s-upstream-keys" (include "cohortgate.fullname" .)) .Values.upstreamKeys.existingSecret -}}
{{- end -}}

{{- define "cohortgate.callerKeysSecretName" -}}
{{- default (printf "%s-caller-keys" (include "cohortgate.fullname" .)) .Values.callerKeys.existingSecret -}}
{{- end -}}

{{/* The policy text after tpl (empty when an existing ConfigMap is used). */}}
{{- define "cohortgate.policy" -}}
{{- if not .Values.policy.existingConfigMap -}}
{{- tpl .Values.policy.content . -}}
{{- end -}}
{{- end -}}

{{/*
Upstream key values, with the model servers' key generated when left empty. A generated key
is read back from the live Secret on upgrade (lookup), so it stays the same.
*/}}
{{- define "cohortgate.upstreamKeyValues" -}}
{{- $vals := deepCopy (default (dict) .Values.upstreamKeys.values) -}}
{{- $env := .Values.modelServers.apiKeyEnv -}}
{{- if and .Values.modelServers.enabled $env (not (get $vals $env)) -}}
{{- $live := lookup "v1" "Secret" .Release.Namespace (include "cohortgate.upstreamSecretName" .) -}}
{{- $old := "" -}}
{{- if and $live $live.data (hasKey $live.data $env) -}}
{{- $old = index $live.data $env | b64dec -}}
{{- end -}}
{{- $_ := set $vals $env (default (randAlphaNum 40) $old) -}}
{{- end -}}
{{- toYaml $vals -}}
{{- end -}}

{{/*
Render-time checks that turn a setup which could never become ready into a clear error:
the caller-keys file must be named by the policy, and every upstream key the policy names
must come from the upstream keys Secret.
*/}}
{{- define "cohortgate.validate" -}}
{{- if not .Values.policy.existingConfigMap -}}
{{- $policy := fromYaml (include "cohortgate.policy" .) -}}
{{- if hasKey $policy "Error" -}}
{{- fail (printf "policy.content is not valid YAML: %s" $policy.Error) -}}
{{- end -}}
{{- if .Values.callerKeys.enabled -}}
{{- $auth := default (dict) $policy.auth -}}
{{- if ne (toString (get $auth "keys_file_env")) .Values.callerKeys.env -}}
{{- fail (printf "callerKeys.enabled: the policy must read the keys file: add `auth: {keys_file_env: %s}` to policy.content" .Values.callerKeys.env) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.upstreamKeys.existingSecret -}}
{{- $keys := fromYaml (include "cohortgate.upstreamKeyValues" .) -}}
{{- range $name, $up := (default (dict) $policy.upstreams) -}}
{{- if and $up.api_key_env (not (get $keys $up.api_key_env)) -}}
{{- fail (printf "policy upstream %q reads its key from env %s: set upstreamKeys.values.%s (or use upstreamKeys.existingSecret)" $name $up.api_key_env $up.api_key_env) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.callerKeys.enabled (not .Values.callerKeys.existingSecret) (not .Values.callerKeys.keys) -}}
{{- fail "callerKeys.enabled: set callerKeys.keys or callerKeys.existingSecret" -}}
{{- end -}}
{{- if and .Values.pdb.enabled (eq (toString .Values.pdb.minAvailable) "<nil>") (eq (toString .Values.pdb.maxUnavailable) "<nil>") -}}
{{- fail "pdb.enabled: set pdb.minAvailable or pdb.maxUnavailable" -}}
{{- end -}}
{{- end -}}
