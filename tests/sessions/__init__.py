"""Tests of gateway/sessions/."""
