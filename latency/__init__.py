"""Benchmarks of the filtered conv backward: ``python -m latency`` (see latency/README.md)."""
