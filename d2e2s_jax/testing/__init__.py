"""Reference implementations for tests and benchmarks (need the test dependencies, e.g. torch)."""
