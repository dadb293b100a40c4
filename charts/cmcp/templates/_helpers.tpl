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
{{- define "cmcp.enclave.decideHopPort" -}}50052{{- end }}

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
{{- with .expectedCatalogHashes }}{{ $_ := set $r "expected_catalog_hashes" . }}{{ end -}}
{{- with .enforcementModes }}{{ $_ := set $r "enforcement_modes" . }}{{ end -}}
{{- with .allowedHosts }}{{ $_ := set $r "allowed_hosts" . }}{{ end -}}
{{- with .allowedOrigins }}{{ $_ := set $r "allowed_origins" . }}{{ end -}}
{{- with .authorization }}{{ $_ := set $r "authorization" (dict "resource" .resource "authorization_servers" .authorizationServers "scopes_supported" (default list .scopesSupported)) }}{{ end -}}
{{- $routes = append $routes $r -}}
{{- end -}}
{{- $l := $gw.limits -}}
{{- $limits := dict "max_body_bytes" $l.maxBodyBytes "max_depth" $l.maxDepth "max_string" $l.maxString "max_concurrent_per_agent" $l.maxConcurrentPerAgent "decide_timeout_seconds" $l.decideTimeoutSeconds "upstream_timeout_seconds" $l.upstreamTimeoutSeconds "session_idle_seconds" $l.sessionIdleSeconds "max_sessions" $l.maxSessions "max_sessions_per_agent" $l.maxSessionsPerAgent "max_header_bytes" $l.maxHeaderBytes "max_headers" $l.maxHeaders "header_timeout_seconds" $l.headerTimeoutSeconds "body_timeout_seconds" $l.bodyTimeoutSeconds "max_connections" $l.maxConnections -}}
{{- /* tokens_dir is relative to the container's workingDir "/" (set in the Deployment), so it also
resolves for a process whose filesystem is rooted elsewhere (a test running the config on a host). */ -}}
{{- $identity := dict "key_file" (include "cmcp.gatewayIdentity.keyFile" . | trimPrefix "/") -}}
{{- $cfg := dict "listen" (printf "0.0.0.0:%v" $gw.port) "allow_simulated" .Values.attestation.allowSimulated "auth" (dict "tokens_dir" "etc/cmcp/gateway-auth") "identity" $identity "limits" $limits "attest_refresh_seconds" $gw.attestRefreshSeconds "routes" $routes -}}
{{- $_ := set $cfg "state_dir" (include "cmcp.gateway.stateDir" .) -}}
{{- $_ := set $cfg "audit" (include "cmcp.gateway.auditConfig" . | fromJson) -}}
{{- $cfg = merge $cfg (include "cmcp.appraisal.gatewayConfig" . | fromJson) -}}
{{- toPrettyJson $cfg }}
{{- end }}

{{/*
Signed enclave release manifests (values `release`) and the TDX collateral cache (values `tdx`):
the appraisal settings the operator and the gateway share. Without a verified manifest both
refuse every guest, so the chart refuses to render rather than install components that can
attest nothing.
*/}}
{{- define "cmcp.release.fullname" -}}
{{- printf "%s-release" (include "cmcp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "cmcp.release.mountPath" -}}/etc/cmcp/release{{- end }}
{{- define "cmcp.tdx.collateralPath" -}}/var/cache/cmcp/tdx-collateral{{- end }}

{{- define "cmcp.release.check" -}}
{{- $how := "create and sign one with `cmcpctl release manifest`, then pass --set-file release.manifests.<name>=<manifest.json> --set-file release.keys.<name>=<key.pub.pem>" -}}
{{- if not .Values.release.manifests -}}
{{- fail (printf "release.manifests is required: at least one signed enclave release manifest (REFERENCE_VALUES_MISSING otherwise: every enclave is refused); %s" $how) -}}
{{- end -}}
{{- if not .Values.release.keys -}}
{{- fail (printf "release.keys is required: the public key that signed the release manifests; %s" $how) -}}
{{- end -}}
{{- range $name, $text := .Values.release.manifests -}}
{{- $doc := fromJson $text -}}
{{- if not (and (hasKey $doc "payloadType") (hasKey $doc "signatures")) -}}
{{- fail (printf "release.manifests.%s is not a signed release manifest (a DSSE JSON envelope from `cmcpctl release manifest`)" $name) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* ConfigMap keys (= file names under the mount path), in a stable order. */}}
{{- define "cmcp.release.files" -}}
{{- $manifests := list -}}
{{- range $name, $_ := .Values.release.manifests }}{{ $manifests = append $manifests (printf "manifest-%s.json" $name) }}{{ end -}}
{{- $keys := list -}}
{{- range $name, $_ := .Values.release.keys }}{{ $keys = append $keys (printf "key-%s.pem" $name) }}{{ end -}}
{{- toJson (dict "manifests" $manifests "keys" $keys) -}}
{{- end }}

{{/* cmcp-operator (and cmcp-guard) flags: --release-manifest/--release-key/--tdx-collateral-dir/--pccs-url. */}}
{{- define "cmcp.appraisal.args" -}}
{{- $files := include "cmcp.release.files" . | fromJson -}}
{{- $dir := include "cmcp.release.mountPath" . -}}
{{- range $files.manifests }}
- --release-manifest={{ $dir }}/{{ . }}
{{- end }}
{{- range $files.keys }}
- --release-key={{ $dir }}/{{ . }}
{{- end }}
- --tdx-collateral-dir={{ include "cmcp.tdx.collateralPath" . }}
{{- with .Values.tdx.pccsUrl }}
- --pccs-url={{ . }}
{{- end }}
{{- end }}

{{/* The same settings as gateway config keys. Paths are relative to the container's workingDir
"/" (like tokens_dir), so they also resolve under a per-pod root a test gives them. */}}
{{- define "cmcp.appraisal.gatewayConfig" -}}
{{- $files := include "cmcp.release.files" . | fromJson -}}
{{- $dir := include "cmcp.release.mountPath" . | trimPrefix "/" -}}
{{- $manifests := list -}}
{{- range $files.manifests }}{{ $manifests = append $manifests (printf "%s/%s" $dir .) }}{{ end -}}
{{- $keys := list -}}
{{- range $files.keys }}{{ $keys = append $keys (printf "%s/%s" $dir .) }}{{ end -}}
{{- $cfg := dict "release" (dict "manifests" $manifests "keys" $keys) "tdx_collateral_dir" (include "cmcp.tdx.collateralPath" . | trimPrefix "/") -}}
{{- with .Values.tdx.pccsUrl }}{{ $_ := set $cfg "pccs_url" . }}{{ end -}}
{{- toJson $cfg -}}
{{- end }}

{{/* Roll the pods when a manifest or key changes (the files are read at start). */}}
{{- define "cmcp.release.checksum" -}}
{{- toJson (dict "release" .Values.release "tdx" .Values.tdx) | sha256sum -}}
{{- end }}

{{- define "cmcp.appraisal.volumeMounts" -}}
- name: release
  mountPath: {{ include "cmcp.release.mountPath" . }}
  readOnly: true
- name: tdx-collateral
  mountPath: {{ include "cmcp.tdx.collateralPath" . }}
{{- end }}

{{- define "cmcp.appraisal.volumes" -}}
- name: release
  configMap:
    name: {{ include "cmcp.release.fullname" . }}
    defaultMode: 0444
- name: tdx-collateral
  {{- with .Values.tdx.collateralDir }}
  {{- toYaml . | nindent 2 }}
  {{- else }}
  emptyDir:
    sizeLimit: 64Mi
  {{- end }}
{{- end }}

{{/*
The gateway's identity key (values `gatewayIdentity`): a Secret mounted into the gateway (which
signs every enclave call with it) and the operator (which pins its public half in initdata).
*/}}
{{- define "cmcp.gatewayIdentity.secretName" -}}
{{- .Values.gatewayIdentity.existingSecret | default (printf "%s-gateway-identity" (include "cmcp.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end }}
{{- define "cmcp.gatewayIdentity.mountPath" -}}/etc/cmcp/gateway-identity{{- end }}
{{- define "cmcp.gatewayIdentity.keyFile" -}}{{ include "cmcp.gatewayIdentity.mountPath" . }}/gateway-key.pem{{- end }}

{{- define "cmcp.gatewayIdentity.volumeMount" -}}
- name: gateway-identity
  mountPath: {{ include "cmcp.gatewayIdentity.mountPath" . }}
  readOnly: true
{{- end }}

{{- define "cmcp.gatewayIdentity.volume" -}}
- name: gateway-identity
  secret:
    secretName: {{ include "cmcp.gatewayIdentity.secretName" . }}
    defaultMode: 0440
{{- end }}

{{/*
The gateway's audit store (values gateway.audit): SQLite on a PersistentVolumeClaim mounted at the
state directory, or PostgreSQL whose DSN the gateway reads from an environment variable filled
from a Secret (the DSN never enters the ConfigMap). SQLite keeps the trail on one volume, so more
than one replica needs PostgreSQL: the chart refuses to render that combination.
*/}}
{{- define "cmcp.gateway.stateDir" -}}/var/lib/cmcp-gateway{{- end }}
{{- define "cmcp.gateway.auditEnv" -}}CMCP_AUDIT_STORE{{- end }}
{{- define "cmcp.gateway.auditClaim" -}}
{{- default (printf "%s-audit" (include "cmcp.gateway.fullname" .)) .Values.gateway.audit.sqlite.existingClaim -}}
{{- end }}
{{- define "cmcp.gateway.auditConfig" -}}
{{- $audit := .Values.gateway.audit -}}
{{- if eq $audit.store "postgresql" -}}
{{- $_ := required "gateway.audit.postgresql.existingSecret is required when gateway.audit.store is postgresql" $audit.postgresql.existingSecret -}}
{{- toJson (dict "store_from_env" (include "cmcp.gateway.auditEnv" .)) -}}
{{- else -}}
{{- if gt (int .Values.gateway.replicas) 1 -}}
{{- fail "gateway.audit.store sqlite keeps the audit trail on one volume: with gateway.replicas > 1 set gateway.audit.store=postgresql (and gateway.audit.postgresql.existingSecret)" -}}
{{- end -}}
{{- /* relative to the container's workingDir "/" (like tokens_dir), so it also resolves under a
per-pod root a test gives it instead of the host's /var/lib */ -}}
{{- toJson (dict "store" (printf "sqlite:%s/audit.sqlite" (include "cmcp.gateway.stateDir" . | trimPrefix "/"))) -}}
{{- end -}}
{{- end }}
