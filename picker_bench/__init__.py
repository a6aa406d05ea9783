"""Benchmarks: commands that print numbers (never assertions), recorded in docs/benchmarks.md."""
