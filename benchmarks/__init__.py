"""Benchmarks: each module has main() and prints ratios measured side by side in one run.

Run them all with `python -m benchmarks.run_all` (or one: `python -m benchmarks.prefill_speedup`).
They print; they never assert timings.
"""
