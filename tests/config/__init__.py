"""Tests of gateway/config/."""
