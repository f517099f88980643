"""Fixed-length slice sampling with the sampled → source index map.

DrCT2 feeds a fixed number m of slices per scan (28 for RSNA, 32 for CQ500) although scans hold
21–396 slices. Evaluation samples m indices uniformly spaced over the scan (deterministic);
when the scan is shorter than m, indices repeat (nearest-neighbour upsampling along z), keeping
slice order. Training augments as the paper does: it draws a different set of m slices that
still covers the scan in order, preferring slices that the uniform (eval) sample left out — one
slice drawn at random from each of m equal-width bins of the scan. Every function returns the
`int32 [m]` source indices, sorted ascending, so callers gather `hu[idx]` and keep `idx` as
`slice_index` (the key-slice tasks map attention back to source slices with it).

All functions are pure functions of (num_slices, m, rng): same rng → same indices.
"""

from __future__ import annotations

import numpy as np


def _check(num_slices: int, m: int) -> None:
  if num_slices < 1:
    from ctjax.errors import EmptySeriesError
    raise EmptySeriesError(f"cannot sample from a scan with {num_slices} slices")
  if m < 1:
    from ctjax.errors import ConfigError
    raise ConfigError(f"number of sampled slices must be >= 1, got {m}")


def uniform_indices(num_slices: int, m: int) -> np.ndarray:
  """m source indices evenly spread over [0, num_slices), centred in m equal bins.

  For num_slices >= m the indices are distinct; for num_slices < m every slice appears at least
  once and indices repeat (nearest neighbour along z).
  """
  _check(num_slices, m)
  centres = (np.arange(m, dtype=np.float64) + 0.5) * (num_slices / m)
  idx = np.floor(centres).astype(np.int64)
  return np.clip(idx, 0, num_slices - 1).astype(np.int32)


def bin_edges(num_slices: int, m: int) -> np.ndarray:
  """Integer edges [m+1] of m contiguous bins covering [0, num_slices) (bins may be empty when
  num_slices < m)."""
  return np.floor(np.arange(m + 1, dtype=np.float64) * (num_slices / m)).astype(np.int64)


def random_indices(num_slices: int, m: int, rng: np.random.Generator,
                   avoid_uniform: bool = True) -> np.ndarray:
  """Training re-draw: one random slice from each of m equal bins (sorted, covers the scan).

  With `avoid_uniform`, each bin prefers slices other than the one `uniform_indices` takes, so
  the drawn set comes from the unsampled slices wherever a bin has more than one slice (as
  DrCT2 augments: "other sets from the unsampled slices"). Scans shorter than m fall back to
  `uniform_indices` (nothing is left unsampled).
  """
  _check(num_slices, m)
  if num_slices <= m:
    return uniform_indices(num_slices, m)
  edges = bin_edges(num_slices, m)
  lo, hi = edges[:-1], edges[1:]
  width = hi - lo                      # >= 1 everywhere because num_slices > m
  uni = uniform_indices(num_slices, m).astype(np.int64)
  if avoid_uniform:
    # Draw among width-1 candidates and skip the uniform one where the bin has > 1 slice.
    can_avoid = width > 1
    r = np.floor(rng.random(m) * np.where(can_avoid, width - 1, width)).astype(np.int64)
    cand = lo + r
    cand = np.where(can_avoid & (cand >= uni), cand + 1, cand)
  else:
    cand = lo + np.floor(rng.random(m) * width).astype(np.int64)
  return np.clip(cand, lo, hi - 1).astype(np.int32)


def sample_indices(num_slices: int, m: int, *, train: bool,
                   rng: np.random.Generator | None = None) -> np.ndarray:
  """Eval: `uniform_indices`; train: `random_indices` (needs `rng`)."""
  if not train:
    return uniform_indices(num_slices, m)
  if rng is None:
    from ctjax.errors import ConfigError
    raise ConfigError("training-time sampling needs an rng")
  return random_indices(num_slices, m, rng)


def gather(volume: np.ndarray, indices: np.ndarray) -> np.ndarray:
  """volume [S, ...] → [m, ...] at `indices` (a copy)."""
  return np.take(volume, indices, axis=0)
