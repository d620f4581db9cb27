"""Tests of gateway/rollout/."""
