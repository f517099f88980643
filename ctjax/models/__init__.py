"""Flax Linen models: backbones (VGG16, ResNet-50, Inception v3), DrCT1/DrCT2, blend-sign net."""

from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16", "auto")


def compute_dtype(name: str):
  """A config dtype name → jnp dtype; "auto" is bfloat16 on GPU/TPU and float32 on CPU (XLA:CPU
  runs bfloat16 convolutions in float32 with converts, so bfloat16 buys nothing there)."""
  import jax
  import jax.numpy as jnp
  if name == "auto":
    return jnp.dtype(jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32)
  if name not in DTYPES:
    from ctjax.errors import ConfigError
    raise ConfigError(f"dtype {name!r}; expected one of {DTYPES}")
  return jnp.dtype(name)
