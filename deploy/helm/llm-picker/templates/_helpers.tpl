{{/* The objects' name: the release's (deploy/base's objects are all llm-picker). */}}
{{- define "llm-picker.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-picker.labels" -}}
app.kubernetes.io/name: {{ include "llm-picker.name" . }}
{{- end -}}

{{/* Whether replicas share their picks (README, Kubernetes, Replicas). */}}
{{- define "llm-picker.sharing" -}}
{{- if and .Values.sharePicks.enabled (gt (int .Values.replicas) 1) }}true{{ end -}}
{{- end -}}

{{/* The picker's YAML: the values' settings, the listeners, replica links when sharing. */}}
{{- define "llm-picker.config" -}}
{{- $config := dict "discovery" .Values.discovery "policy" .Values.policy "prefix" .Values.prefix
    "extproc" (dict "host" "0.0.0.0" "port" 9002)
    "admin" (dict "host" "0.0.0.0" "port" 9090) -}}
{{- if include "llm-picker.sharing" . }}
{{- $peers := printf "%s-peers.%s.svc.cluster.local" (include "llm-picker.name" .) .Release.Namespace }}
{{- $_ := set $config "replicas" (dict "listen" (printf "0.0.0.0:%d" (int .Values.sharePicks.port))
    "secret_file" "/etc/llm-picker-replicas/secret"
    "dns" (dict "name" $peers "port" (int .Values.sharePicks.port))) }}
{{- end }}
{{- toYaml (mergeOverwrite $config (deepCopy .Values.extraConfig)) -}}
{{- end -}}
