"""Benchmark suite: `python -m benchmarks --help` (see benchmarks/README.md)."""
