"""rnnlens benchmarks: ``python -m benchmarks`` (or ``make bench``). See README.md."""
