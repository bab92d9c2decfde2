"""Benchmarks against the peers of BENCHMARKS.md; run with pytest, see bench/README.md."""
