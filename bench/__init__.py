"""Benchmarks of kubepim on a local control plane (`python -m bench`); not tests."""
