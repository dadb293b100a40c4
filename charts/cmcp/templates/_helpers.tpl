{{/*
Chart name, truncated to the 63 characters a DNS-1123 label allows.
*/}}
{{- define "cmcp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Component suffixes ("-operator", "-gateway", ...) are at most 16
characters, so the prefix is cut at 47.
*/}}
{{- define "cmcp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart label value: name-version.
*/}}
{{- define "cmcp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "cmcp.labels" -}}
helm.sh/chart: {{ include "cmcp.chart" .ctx }}
{{ include "cmcp.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: cmcp
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable across upgrades (never put the version here).
*/}}
{{- define "cmcp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cmcp.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Component object names.
*/}}
{{- define "cmcp.operator.fullname" -}}
{{- printf "%s-operator" (include "cmcp.fullname" .) }}
{{- end }}

{{- define "cmcp.gateway.fullname" -}}
{{- printf "%s-gateway" (include "cmcp.fullname" .) }}
{{- end }}

{{- define "cmcp.webhook.fullname" -}}
{{- printf "%s-webhook" (include "cmcp.fullname" .) }}
{{- end }}

{{/*
The ValidatingWebhookConfiguration the operator manages (cmcp_operator.handlers:
settings.admission.managed = "cmcp-operator.<group>"). Fixed by the operator, hence one release
per cluster.
*/}}
{{- define "cmcp.webhook.configName" -}}cmcp-operator.cmcp.dev{{- end }}

{{/*
Kopf peering object name (ClusterKopfPeering or KopfPeering).
*/}}
{{- define "cmcp.peeringName" -}}
{{- include "cmcp.fullname" . }}
{{- end }}

{{/*
Cluster-scoped RBAC object names carry the namespace too, so two releases of the same name in
different namespaces do not collide.
*/}}
{{- define "cmcp.clusterScopedName" -}}
{{- printf "%s-%s-%s" .ctx.Release.Namespace (include "cmcp.fullname" .ctx) .suffix | trunc 253 }}
{{- end }}

{{- define "cmcp.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "cmcp.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cmcp.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "cmcp.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: [registry/]repository(@digest | :tag). Call with (dict "ctx" $ "image" .Values.x.image).
*/}}
{{- define "cmcp.image" -}}
{{- $repo := required "image.repository is required" .image.repository }}
{{- if .ctx.Values.imageRegistry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .ctx.Values.imageRegistry) $repo }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
Namespaces the operator watches (list), used for namespaced Roles and the --namespace flags.
*/}}
{{- define "cmcp.watchNamespaces" -}}
{{- $ns := .Values.operator.watchNamespaces }}
{{- if not $ns }}
{{- $ns = list .Release.Namespace }}
{{- end }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/*
Namespaces that get the enclave NetworkPolicy.
*/}}
{{- define "cmcp.enclaveNamespaces" -}}
{{- $ns := list .Release.Namespace }}
{{- range .Values.networkPolicy.enclaveNamespaces }}
{{- $ns = append $ns . }}
{{- end }}
{{- if eq .Values.operator.watchScope "namespaces" }}
{{- range (include "cmcp.watchNamespaces" . | fromJsonArray) }}
{{- $ns = append $ns . }}
{{- end }}
{{- end }}
{{- range .Values.gateway.routes }}
{{- $ns = append $ns (default $.Release.Namespace .mcpRoute.namespace) }}
{{- end }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/*
Facts fixed by the operator (operator/cmcp_operator/constants.py; tests/unit/test_chart_*.py
asserts they agree): enclave pod labels and ports.
*/}}
{{- define "cmcp.enclave.selectorLabels" -}}
app.kubernetes.io/component: enclave
app.kubernetes.io/managed-by: cmcp-operator
{{- end }}

{{- define "cmcp.enclave.grpcPort" -}}50051{{- end }}
{{- define "cmcp.enclave.metricsPort" -}}9090{{- end }}

{{/*
The gateway is deployed when enabled and given at least one route (it refuses to start without).
*/}}
{{- define "cmcp.gateway.deployed" -}}
{{- if and .Values.gateway.enabled .Values.gateway.routes }}true{{ end }}
{{- end }}

{{/*
The gateway's config file (cmcp_gateway.config), as JSON. Listen addresses are passed as flags
because they carry $(POD_IP).
*/}}
{{- define "cmcp.gateway.config" -}}
{{- $gw := .Values.gateway -}}
{{- $routes := list -}}
{{- range $gw.routes -}}
{{- $r := dict "name" .name "upstream" .upstream "audience" .audience "open" (default false .open) -}}
{{- $_ := set $r "kubernetes" (dict "namespace" (default $.Release.Namespace .mcpRoute.namespace) "name" .mcpRoute.name) -}}
{{- with .expectedBundleHashes }}{{ $_ := set $r "expected_bundle_hashes" . }}{{ end -}}
{{- $routes = append $routes $r -}}
{{- end -}}
{{- $l := $gw.limits -}}
{{- $limits := dict "max_body_bytes" $l.maxBodyBytes "max_depth" $l.maxDepth "max_string" $l.maxString "max_concurrent_per_agent" $l.maxConcurrentPerAgent "decide_timeout_seconds" $l.decideTimeoutSeconds "upstream_timeout_seconds" $l.upstreamTimeoutSeconds "session_idle_seconds" $l.sessionIdleSeconds "max_sessions" $l.maxSessions -}}
{{- /* tokens_dir is relative to the container's workingDir "/" (set in the Deployment), so it also
resolves for a process whose filesystem is rooted elsewhere (the e2e node agent). */ -}}
{{- $cfg := dict "listen" (printf "0.0.0.0:%v" $gw.port) "allow_simulated" .Values.attestation.allowSimulated "auth" (dict "tokens_dir" "etc/cmcp/gateway-auth") "limits" $limits "attest_refresh_seconds" $gw.attestRefreshSeconds "routes" $routes -}}
{{- toPrettyJson $cfg }}
{{- end }}
