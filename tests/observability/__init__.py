"""Tests of gateway/observability/."""
