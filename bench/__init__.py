"""Benchmarks of the billing path: `python -m bench.run` (writes docs/benchmarks.md) and
`python -m bench.load` (a bounded load on the local stack). Never deployed."""
