"""Benchmarks: each ``bench/bench_*.py`` measures a thing and its baseline in one run and prints the ratio."""
