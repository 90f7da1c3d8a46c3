{{/*
i2kit.fullname names the chart's objects: the release's name, with "-i2kit" unless it already says i2kit.
*/}}
{{- define "i2kit.fullname" -}}
{{- if contains "i2kit" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-i2kit" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* i2kit.nodeName is the Node's name: nodeName, else the release's name. */}}
{{- define "i2kit.nodeName" -}}
{{- .Values.nodeName | default .Release.Name -}}
{{- end -}}

{{/* i2kit.serviceAccountName is the node's ServiceAccount. */}}
{{- define "i2kit.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "i2kit.fullname" .) -}}
{{- end -}}

{{/* i2kit.hostNetwork is "true" when the node's pod runs in the host's network (qemu.hostNetwork). */}}
{{- define "i2kit.hostNetwork" -}}
{{- and (eq .Values.backend "qemu") .Values.qemu.hostNetwork -}}
{{- end -}}

{{/* i2kit.kubeletPort is kubelet.port, else 10250, or 10260 beside the host's own kubelet. */}}
{{- define "i2kit.kubeletPort" -}}
{{- if .Values.kubelet.port -}}
{{- .Values.kubelet.port | int -}}
{{- else if eq (include "i2kit.hostNetwork" .) "true" -}}
10260
{{- else -}}
10250
{{- end -}}
{{- end -}}

{{/* i2kit.healthzPort is healthz.port, else 10248, or 10261 beside the host's own kubelet (which holds 10248). */}}
{{- define "i2kit.healthzPort" -}}
{{- if .Values.healthz.port -}}
{{- .Values.healthz.port | int -}}
{{- else if eq (include "i2kit.hostNetwork" .) "true" -}}
10261
{{- else -}}
10248
{{- end -}}
{{- end -}}

{{/* i2kit.metricsPort is metrics.port, else healthz's: the node then serves both on one listener. */}}
{{- define "i2kit.metricsPort" -}}
{{- .Values.metrics.port | default (include "i2kit.healthzPort" .) | int -}}
{{- end -}}

{{/* i2kit.leaderElection is "true" when the replicas elect a leader: leaderElection.enabled, else replicas > 1. */}}
{{- define "i2kit.leaderElection" -}}
{{- if kindIs "invalid" .Values.leaderElection.enabled -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end -}}
{{- else if .Values.leaderElection.enabled -}}
true
{{- end -}}
{{- end -}}

{{/*
i2kit.validate fails the rendering on settings that are valid one by one but not together (values.schema.json
checks each alone), with a message that says why.
*/}}
{{- define "i2kit.validate" -}}
{{- $v := .Values -}}
{{- $replicas := int $v.replicas -}}
{{- if and (gt $replicas 1) (eq $v.backend "qemu") -}}
{{- fail "replicas: at most 1 with backend qemu: the pod VMs are processes of the node's container and end with it, so a standby in another pod would have nothing to adopt" -}}
{{- end -}}
{{- if and (gt $replicas 1) (not (include "i2kit.leaderElection" .)) -}}
{{- fail "leaderElection.enabled: false with replicas > 1 would run the same node twice; leave it null or true" -}}
{{- end -}}
{{- if and (include "i2kit.leaderElection" .) (eq $v.backend "aws") (not $v.aws.agentCASecret) -}}
{{- fail "aws.agentCASecret: required with leader election (replicas > 1) and backend aws: every replica must hold the CA the running instances' agents trust, or the next leader is refused by all of them" -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled: needs metrics.enabled" -}}
{{- end -}}
{{- $kubelet := include "i2kit.kubeletPort" . | int -}}
{{- if eq $kubelet (include "i2kit.healthzPort" . | int) -}}
{{- fail "healthz.port: must differ from the kubelet API's port" -}}
{{- end -}}
{{- if and $v.metrics.enabled (eq $kubelet (include "i2kit.metricsPort" . | int)) -}}
{{- fail "metrics.port: must differ from the kubelet API's port" -}}
{{- end -}}
{{- end -}}

{{/* i2kit.tlsSecret is the Secret of the kubelet API's serving certificate; empty when the node signs its own. */}}
{{- define "i2kit.tlsSecret" -}}
{{- if eq .Values.kubelet.tls.mode "secret" -}}
{{- .Values.kubelet.tls.secretName -}}
{{- else if eq .Values.kubelet.tls.mode "certManager" -}}
{{- printf "%s-kubelet-tls" (include "i2kit.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "i2kit.selectorLabels" -}}
app.kubernetes.io/name: i2kit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "i2kit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "i2kit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
i2kit.nodeConfig is the node's configuration file (node/config.go's Config, decoded strictly): only fields the node
has, and only those the values set, so that the node's own defaults apply to the rest. Paths are the mounts of
deployment.yaml, where the image (hack/image) has its writable directories; the kernel is the image's own, found
through its I2KIT_CACHE. The InternalIP is not here: it is the pod's IP, given by the --internal-ip flag.
*/}}
{{- define "i2kit.nodeConfig" -}}
{{- $v := .Values -}}
{{- $c := dict "nodeName" (include "i2kit.nodeName" .) "backend" $v.backend "port" (include "i2kit.kubeletPort" . | int) "taints" $v.taints -}}
{{- $capacity := dict -}}
{{- range $k, $q := $v.capacity -}}
{{- if and (not (kindIs "invalid" $q)) (ne (toString $q) "") -}}
{{- $_ := set $capacity $k (toString $q) -}}
{{- end -}}
{{- end -}}
{{- if $capacity -}}
{{- $_ := set $c "capacity" $capacity -}}
{{- end -}}
{{- if $v.labels -}}
{{- $_ := set $c "labels" $v.labels -}}
{{- end -}}
{{- if include "i2kit.tlsSecret" . -}}
{{- $_ := set $c "tlsCertFile" "/etc/i2kit/tls/tls.crt" -}}
{{- $_ := set $c "tlsKeyFile" "/etc/i2kit/tls/tls.key" -}}
{{- end -}}
{{- $lb := dict "enabled" $v.loadBalancers.enabled "claimUnclassed" $v.loadBalancers.claimUnclassed "pool" $v.loadBalancers.pool -}}
{{- with $v.loadBalancers.class -}}
{{- $_ := set $lb "class" . -}}
{{- end -}}
{{- with $v.loadBalancers.cluster -}}
{{- $_ := set $lb "cluster" . -}}
{{- end -}}
{{- $_ := set $c "loadBalancers" $lb -}}
{{- $_ := set $c "healthzAddress" (printf "0.0.0.0:%s" (include "i2kit.healthzPort" .)) -}}
{{- if $v.metrics.enabled -}}
{{- $_ := set $c "metricsAddress" (printf "0.0.0.0:%s" (include "i2kit.metricsPort" .)) -}}
{{- end -}}
{{- if include "i2kit.leaderElection" . -}}
{{- $_ := set $c "leaderElection" (dict "enabled" true "namespace" .Release.Namespace) -}}
{{- end -}}
{{- $images := dict "store" "/var/cache/i2kit/images" "maxImages" ($v.images.maxImages | int) "maxBytes" (toString $v.images.maxBytes) -}}
{{- with $v.images.maxImageBytes -}}
{{- $_ := set $images "maxImageBytes" (toString .) -}}
{{- end -}}
{{- with $v.images.maxLayerBytes -}}
{{- $_ := set $images "maxLayerBytes" (toString .) -}}
{{- end -}}
{{- with $v.images.kernel -}}
{{- $_ := set $images "kernel" . -}}
{{- end -}}
{{- with $v.images.agent -}}
{{- $_ := set $images "agent" . -}}
{{- end -}}
{{- with $v.images.insecureRegistries -}}
{{- $_ := set $images "insecureRegistries" . -}}
{{- end -}}
{{- with $v.images.mirrors -}}
{{- $_ := set $images "mirrors" . -}}
{{- end -}}
{{- if $v.images.dockerConfigSecret -}}
{{- $_ := set $images "dockerConfigs" (list "/etc/i2kit/docker/config.json") -}}
{{- end -}}
{{- $_ := set $c "images" $images -}}
{{- if eq $v.backend "qemu" -}}
{{- $_ := set $c "podCIDR" $v.qemu.podCIDR -}}
{{- $_ := set $c "qemu" (dict "runtimeDir" "/run/i2kit/qemu" "bridge" $v.qemu.bridge) -}}
{{- end -}}
{{- if eq $v.backend "aws" -}}
{{- $a := $v.aws -}}
{{- $aws := dict "region" $a.region "cluster" $a.cluster "subnets" $a.subnets "securityGroups" $a.securityGroups "agentPort" ($a.agentPort | int) "syncPeriod" $a.syncPeriod "gcMinAge" $a.gcMinAge "imageMaxUnused" $a.imageMaxUnused "stateDir" "/var/lib/i2kit/aws" -}}
{{- with $a.instanceTypes -}}
{{- $_ := set $aws "instanceTypes" . -}}
{{- end -}}
{{- with $a.tags -}}
{{- $_ := set $aws "tags" . -}}
{{- end -}}
{{- with $a.endpoint -}}
{{- $_ := set $aws "endpoint" . -}}
{{- end -}}
{{- if $a.agentCASecret -}}
{{- $_ := set $aws "agentCA" (dict "cert" "/etc/i2kit/agent-ca/tls.crt" "key" "/etc/i2kit/agent-ca/tls.key") -}}
{{- end -}}
{{- $_ := set $c "aws" $aws -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}
