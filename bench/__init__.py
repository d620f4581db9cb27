"""The gateway's benchmark: `make bench` (see docs/benchmarks.md)."""
