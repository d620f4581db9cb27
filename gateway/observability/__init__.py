"""What the gateway tells its operators: the Prometheus instruments (metrics.py), structured
logs with token redaction (logs.py) and the client-app table that keeps metric labels bounded
(client_apps.py). Imports only the contract and config."""
