"""Guardrails: per client cohort, rules from the flags file that send the cohort's new sessions
back to the legacy service when the gateway misbehaves for it (docs/rollout-guardrails.md).
Carved on their seams: the pure rules and decisions (rules.py), the board replicas share
(board.py), and the engine that counts, evaluates on an interval and applies (engine.py)."""
