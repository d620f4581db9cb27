"""What the gateway tells its operators: the Prometheus instruments (metrics.py) and the
per-request counts folded into them off the hot path (tally.py, counts.py), structured
logs with token redaction (logs.py), W3C trace context (trace.py) and optional OpenTelemetry
tracing (otel.py). Metric labels that name a client are cohorts (gateway/cohorts.py).
Imports only the package's version, the contract and config."""
