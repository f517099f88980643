"""ctjax benchmark suite: `python -m benchmarks.run --preset cpu-small|full`."""
