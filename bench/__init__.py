"""Benchmarks and the synthetic graphs they (and the tests) run on."""
