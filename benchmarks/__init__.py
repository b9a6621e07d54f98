"""Benchmarks behind ``factoryops bench``: each prints a table and, last, one JSON line.

Every figure is measured in the same run as its baseline and printed as a ratio;
tests never assert on wall-clock time (docs/performance.md records the figures).
"""

__all__: list[str] = []
