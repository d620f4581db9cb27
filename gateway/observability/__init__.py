"""What the gateway tells its operators: the Prometheus instruments (metrics.py), structured
logs with token redaction (logs.py), the client-app table that keeps metric labels bounded
(client_apps.py), W3C trace context (trace.py) and optional OpenTelemetry tracing (otel.py).
Imports only the package's version, the contract and config."""
