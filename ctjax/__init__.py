"""ctjax: DrCT2 and the blend-sign detector in JAX/Flax, for accelerator throughput."""

__version__ = "0.1.0"
