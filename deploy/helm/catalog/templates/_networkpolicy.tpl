{{/* Egress rules shared by the NetworkPolicies: (dict "ctx" $ "redis" true|false). */}}
{{- define "catalog.egressRules" -}}
{{- $np := .ctx.Values.networkPolicy -}}
- to:
    {{- toYaml $np.dnsPeers | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- ports:
    - port: {{ include "catalog.plain" .ctx.Values.database.port }}
      protocol: TCP
    {{- if and (eq (include "catalog.poolMode" .ctx) "transaction") (include "catalog.hasDirectUrl" .ctx) (ne (int (include "catalog.directPort" .ctx)) (int .ctx.Values.database.port)) }}
    - port: {{ include "catalog.directPort" .ctx }}
      protocol: TCP
    {{- end }}
  {{- with $np.databasePeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .redis }}
- ports:
    - port: {{ include "catalog.plain" .ctx.Values.redis.port }}
      protocol: TCP
  {{- with $np.redisPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
