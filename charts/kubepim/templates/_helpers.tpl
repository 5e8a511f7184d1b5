{{/* Names and labels shared by every template. */}}
{{- define "kubepim.fullname" -}}
{{- if contains "kubepim" .Release.Name }}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{ else }}{{ printf "%s-kubepim" .Release.Name | trunc 50 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "kubepim.serviceAccount" -}}
{{- default (include "kubepim.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "kubepim.operatorUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "kubepim.serviceAccount" . }}
{{- end }}

{{- define "kubepim.labels" -}}
app.kubernetes.io/name: kubepim
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "kubepim.selector" -}}
app.kubernetes.io/name: kubepim
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubepim.webhookService" -}}
{{ include "kubepim.fullname" . }}-webhook
{{- end }}
