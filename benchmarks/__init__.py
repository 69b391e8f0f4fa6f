"""Reproducible benchmarks of sklearn-parpredict against serial and its peers.

Run ``python -m benchmarks`` (or ``make bench``); see ``python -m benchmarks
--help``. Each row of the suite times, in the same process and interleaved,
the serial call, :class:`sklearn_parpredict.ParallelPredictor`, the reference
ceiling (a fork-inherited, zero-transfer split of the same work) and the
usual hand-written recipes, and checks every output against the serial one.
Results are written as a markdown table and a PNG plot under
``benchmarks/results/``.
"""
