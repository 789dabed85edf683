"""Benchmark scripts; each writes its results, with the machine and the date, to bench/results/."""
