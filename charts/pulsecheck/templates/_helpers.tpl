{{/* Chart name, overridable. */}}
{{- define "pulsecheck.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name when it already contains the chart name (release "pulsecheck" gives "pulsecheck"). */}}
{{- define "pulsecheck.fullname" -}}
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

{{- define "pulsecheck.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pulsecheck.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The Pod template's labels: none of them changes with a chart or app version, so a chart bump
alone rolls no Pod. */}}
{{- define "pulsecheck.podLabels" -}}
{{ include "pulsecheck.selectorLabels" . }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: pulsecheck
{{- end -}}

{{- define "pulsecheck.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pulsecheck.podLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of the uninstall cleanup hook's objects: pulsecheck's, another component. */}}
{{- define "pulsecheck.cleanupLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "pulsecheck.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cleanup
app.kubernetes.io/part-of: pulsecheck
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Whether a prometheus-operator object is rendered: its `enabled` value (true, false or "auto"),
"auto" meaning "when the cluster serves the kind". Usage: include "pulsecheck.monitoringOn" (list
.Values.serviceMonitor.enabled "monitoring.coreos.com/v1/ServiceMonitor" .) — "true" or "". */}}
{{- define "pulsecheck.monitoringOn" -}}
{{- $enabled := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $root := index . 2 -}}
{{- if eq (toString $enabled) "auto" -}}
{{- if or ($root.Capabilities.APIVersions.Has $kind) ($root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- else if $enabled -}}true{{- end -}}
{{- end -}}

{{/* The extra labels of a monitoring object: its additionalLabels, and the release label
kube-prometheus-stack selects by (prometheusRelease, which wins). Usage: include
"pulsecheck.prometheusLabels" (list .Values.serviceMonitor.additionalLabels .) */}}
{{- define "pulsecheck.prometheusLabels" -}}
{{- $labels := deepCopy (index . 0 | default dict) -}}
{{- with (index . 1).Values.prometheusRelease }}{{- $_ := set $labels "release" . }}{{- end -}}
{{- with $labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Whether leader election is on, counting an override in extraArgs. */}}
{{- define "pulsecheck.leaderElect" -}}
{{- if and .Values.config.leaderElect (not (has "--leader-elect=false" .Values.extraArgs)) -}}true{{- end -}}
{{- end -}}

{{- define "pulsecheck.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pulsecheck.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Namespace of the leader-election Lease (and of the Role that allows it). */}}
{{- define "pulsecheck.leaderNamespace" -}}
{{- default .Release.Namespace .Values.config.leaderElectionNamespace -}}
{{- end -}}

{{/* Port of the admin server, taken from config.adminAddr (host:port or [v6]:port). */}}
{{- define "pulsecheck.adminPort" -}}
{{- .Values.config.adminAddr | toString | splitList ":" | last -}}
{{- end -}}

{{/*
Every flag of `pulsecheck run` as "flag=valuesKey", in src/cli.rs order. A null or empty value
leaves the flag out; lists are joined with commas; booleans are written out (--x=false).
*/}}
{{- define "pulsecheck.flags" -}}
kubeconfig=kubeconfig
context=context
request-timeout=requestTimeout
lease-grace=leaseGrace
status-stale-after=statusStaleAfter
os-image-unknown-after=osImageUnknownAfter
problem-conditions=problemConditions
agent-disk-after=agentDiskAfter
agent-evidence=agentEvidence
recover-after=recoverAfter
evaluation-interval=evaluationInterval
max-unhealthy=maxUnhealthy
max-remediations-per-minute=maxRemediationsPerMinute
min-available-nodes=minAvailableNodes
act-on-dead=actOnDead
dry-run=dryRun
node-selector=nodeSelector
action=action
taint-key=taintKey
taint-effect=taintEffect
probe=probe
probe-interval=probeInterval
probe-timeout=probeTimeout
probe-concurrency=probeConcurrency
probe-failure-threshold=probeFailureThreshold
probe-zombie-after=probeZombieAfter
probe-partition-threshold=probePartitionThreshold
kubelet-preferred-address-types=kubeletPreferredAddressTypes
kubelet-certificate-authority=kubeletCertificateAuthority
kubelet-insecure-tls=kubeletInsecureTls
token-file=tokenFile
kubelet-configz=kubeletConfigz
leader-elect=leaderElect
leader-election-namespace=leaderElectionNamespace
leader-election-name=leaderElectionName
leader-election-lease-duration=leaderElectionLeaseDuration
identity=identity
admin-addr=adminAddr
log-format=logFormat
log-filter=logFilter
per-node-metrics=perNodeMetrics
{{- end -}}

{{- define "pulsecheck.args" -}}
- run
{{- $extra := .Values.extraArgs | default list }}
{{- $defaults := .Files.Get "files/run-defaults.yaml" | fromYaml }}
{{- range $line := splitList "\n" (include "pulsecheck.flags" .) }}
{{- $pair := splitList "=" $line }}
{{- $flag := index $pair 0 }}
{{- $key := index $pair 1 }}
{{- /* A flag these values do not know (values kept from an older chart): pulsecheck's default. */}}
{{- if hasKey $.Values.config $key }}
{{- $v := get $.Values.config $key }}
{{- /* The agent's reports count only where the chart installs the agent and its admission policy. */}}
{{- if and (eq $key "agentEvidence") $.Values.agent.enabled }}
{{- $v = true }}
{{- end }}
{{- /* A flag given in extraArgs replaces the config value: pulsecheck rejects a flag given twice. */}}
{{- $overridden := false }}
{{- range $extra }}
{{- if or (eq (toString .) (printf "--%s" $flag)) (hasPrefix (printf "--%s=" $flag) (toString .)) }}
{{- $overridden = true }}
{{- end }}
{{- end }}
{{- $text := "" }}
{{- if kindIs "slice" $v }}
{{- $text = join "," $v }}
{{- else if kindIs "bool" $v }}
{{- $text = printf "%t" $v }}
{{- else if not (kindIs "invalid" $v) }}
{{- $text = toString $v }}
{{- end }}
{{- /* Only what differs from pulsecheck's own default; null or empty leaves the flag out. */}}
{{- if and (not $overridden) (ne $text "") (ne $text (toString (get $defaults $key))) }}
- {{ printf "--%s=%s" $flag $text | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The node agent's name: its ServiceAccount, Role, RoleBinding, DaemonSet and admission policy. */}}
{{- define "pulsecheck.agentName" -}}
{{- printf "%s-agent" (include "pulsecheck.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{/* The user the agent's ServiceAccount tokens authenticate as: what the admission policy matches. */}}
{{- define "pulsecheck.agentUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "pulsecheck.agentName" .) -}}
{{- end -}}

{{/* The agent Pods' selector labels: not the controller's (app.kubernetes.io/name differs), so
the Service, the PodDisruptionBudget and the NetworkPolicy never select an agent. */}}
{{- define "pulsecheck.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "pulsecheck.name" . | trunc 57 | trimSuffix "-" }}-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of the agent's objects: pulsecheck's, component agent. */}}
{{- define "pulsecheck.agentLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "pulsecheck.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: pulsecheck
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

