{{/* Names and labels. */}}
{{- define "migmeter.name" -}}
{{- default "migmeter" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "migmeter.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "migmeter.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "migmeter.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "collector") */}}
{{- define "migmeter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "migmeter.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "migmeter.labels" -}}
{{ include "migmeter.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "migmeter.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end -}}

{{/* Checks across values that fail the render instead of producing a broken release (each
     value's own type and range are in values.schema.json). */}}
{{- define "migmeter.validate" -}}
{{- if and .Values.processor.enabled (gt (int .Values.processor.replicas) (int .Values.kafka.partitions)) -}}
{{- fail (printf "processor.replicas (%d) exceeds kafka.partitions (%d): processors beyond the topic's partitions get no partition and idle; add partitions to the topic first" (int .Values.processor.replicas) (int .Values.kafka.partitions)) -}}
{{- end -}}
{{- if and (hasPrefix "SASL_" .Values.kafka.securityProtocol) (not .Values.kafka.sasl.existingSecret) -}}
{{- fail "kafka.securityProtocol SASL_* needs kafka.sasl.existingSecret (a Secret with the SASL user and password)" -}}
{{- end -}}
{{- range $role := list "writer" "owner" -}}
{{- $db := index $.Values.database $role -}}
{{- if regexMatch "://[^/@]*:[^/@]*@" (default "" $db.url) -}}
{{- fail (printf "database.%s.url holds a password: put the URL in a Secret (urlKey) or use passfileKey" $role) -}}
{{- end -}}
{{- if not $db.existingSecret -}}
{{- fail (printf "database.%s.existingSecret is required: credentials come only from Secrets" $role) -}}
{{- end -}}
{{- if and $db.url (not $db.passfileKey) -}}
{{- fail (printf "database.%s.url needs database.%s.passfileKey (the password file in the Secret)" $role $role) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Kafka: bootstrap and TLS/SASL settings as environment; secrets as a file or secretKeyRef. */}}
{{- define "migmeter.kafkaEnv" -}}
- name: MIGMETER_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
{{- if ne .Values.kafka.securityProtocol "PLAINTEXT" }}
- name: MIGMETER_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- end }}
{{- if .Values.kafka.tls.caSecret }}
- name: MIGMETER_KAFKA_SSL_CAFILE
  value: /etc/migmeter/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if .Values.kafka.sasl.existingSecret }}
- name: MIGMETER_KAFKA_SASL_MECHANISM
  value: {{ default "PLAIN" .Values.kafka.sasl.mechanism | quote }}
- name: MIGMETER_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: MIGMETER_KAFKA_SASL_PASSWORD_FILE
  value: /etc/migmeter/kafka-sasl/{{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- end -}}

{{- define "migmeter.kafkaVolumeMounts" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/migmeter/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.kafka.sasl.existingSecret }}
- name: kafka-sasl
  mountPath: /etc/migmeter/kafka-sasl
  readOnly: true
{{- end }}
{{- end -}}

{{- define "migmeter.kafkaVolumes" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items: [{key: {{ .Values.kafka.tls.caKey }}, path: {{ .Values.kafka.tls.caKey }}}]
{{- end }}
{{- if .Values.kafka.sasl.existingSecret }}
- name: kafka-sasl
  secret:
    secretName: {{ .Values.kafka.sasl.existingSecret }}
    defaultMode: 0440
    items: [{key: {{ .Values.kafka.sasl.passwordKey }}, path: {{ .Values.kafka.sasl.passwordKey }}}]
{{- end }}
{{- end -}}

{{/* Database login of one role: (dict "ctx" $ "role" "writer") */}}
{{- define "migmeter.dbEnv" -}}
{{- $db := index .ctx.Values.database .role -}}
{{- if $db.url }}
- name: MIGMETER_DATABASE_URL
  value: {{ $db.url | quote }}
- name: PGPASSFILE
  value: /etc/migmeter/db-{{ .role }}/pgpass
{{- else }}
- name: MIGMETER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $db.existingSecret }}
      key: {{ $db.urlKey }}
{{- end }}
{{- end -}}

{{- define "migmeter.dbVolumeMounts" -}}
{{- $db := index .ctx.Values.database .role -}}
{{- if $db.url }}
- name: db-{{ .role }}
  mountPath: /etc/migmeter/db-{{ .role }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "migmeter.dbVolumes" -}}
{{- $db := index .ctx.Values.database .role -}}
{{- if $db.url }}
# libpq accepts a root-owned password file readable by its group (0640 or less).
- name: db-{{ .role }}
  secret:
    secretName: {{ $db.existingSecret }}
    defaultMode: 0440
    items: [{key: {{ $db.passfileKey }}, path: pgpass}]
{{- end }}
{{- end -}}

{{/* A scratch /tmp for tools that want one, on a read-only root filesystem. */}}
{{- define "migmeter.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "migmeter.podSpecCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
securityContext:
{{ toYaml .Values.podSecurityContext | indent 2 }}
{{- end -}}

{{/* The database and DNS egress rules every component with a database login needs. */}}
{{- define "migmeter.egressDns" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}

{{- define "migmeter.egressDatabase" -}}
- ports:
{{- range .Values.database.ports }}
    - {port: {{ . }}, protocol: TCP}
{{- end }}
{{- with .Values.database.networkPeers }}
  to:
{{ toYaml . | indent 4 }}
{{- end }}
{{- end -}}

{{- define "migmeter.egressKafka" -}}
- ports:
{{- range .Values.kafka.ports }}
    - {port: {{ . }}, protocol: TCP}
{{- end }}
{{- with .Values.kafka.networkPeers }}
  to:
{{ toYaml . | indent 4 }}
{{- end }}
{{- end -}}

{{/* Pod template of a one-shot job run as the schema owner:
     (dict "ctx" $ "component" "migrations" "command" (list ...) "args" (list ...) "resources" {...} "extraEnv" "..." "extraMounts" "..." "extraVolumes" "...") */}}
{{- define "migmeter.ownerJobPod" -}}
{{- $ := .ctx -}}
metadata:
  labels:
    {{- include "migmeter.selectorLabels" (dict "ctx" $ "component" .component) | nindent 4 }}
spec:
  {{- include "migmeter.podSpecCommon" $ | nindent 2 }}
  restartPolicy: Never
  containers:
    - name: {{ .component }}
      image: {{ include "migmeter.image" $ }}
      imagePullPolicy: {{ $.Values.image.pullPolicy }}
      command: {{ toJson .command }}
      args: {{ toJson .args }}
      env:
        {{- include "migmeter.dbEnv" (dict "ctx" $ "role" "owner") | indent 8 }}
        {{- with .extraEnv }}{{ . | nindent 8 }}{{- end }}
      securityContext:
        {{- toYaml $.Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- with include "migmeter.dbVolumeMounts" (dict "ctx" $ "role" "owner") }}{{ . | nindent 8 }}{{ end }}
        {{- with .extraMounts }}{{ . | nindent 8 }}{{- end }}
  volumes:
    {{- include "migmeter.tmpVolume" $ | nindent 4 }}
    {{- with include "migmeter.dbVolumes" (dict "ctx" $ "role" "owner") }}{{ . | nindent 4 }}{{ end }}
    {{- with .extraVolumes }}{{ . | nindent 4 }}{{- end }}
{{- end -}}
