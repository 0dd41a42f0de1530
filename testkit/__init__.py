"""Shared by tests and benchmarks: synthetic graphs, circuit-tracer's reference document, and
the one helper that starts a real server process and waits for it."""
