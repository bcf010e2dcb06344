"""Benchmarks of the guided sampler (speed, memory, work counts); see README.md here."""
