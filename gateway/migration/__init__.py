"""Retiring the old path (docs/migration.md): who still calls it and since when not (the
migration ledger and its "safe to retire" report), telling them (Deprecation, Sunset and Link
headers per cohort), and testing the switch-off (guarded brownouts of creates).

Core only: nothing here imports aiohttp.web; gateway/http/ calls it from the old-path
accounting (gateway/http/old_path.py: brownouts, the ledger, the signals) and the admin route.
Cohorts are gateway/cohorts.py's.
"""
