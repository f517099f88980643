"""One DrCT scan example as the pipeline lays it out: numpy only (no Grain), so that the
library's programs (`ctjax.train.programs`) size their batches without the data pipeline's
dependencies. `ctjax.data.pipeline` re-exports `drct_example`."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ctjax.data import sampling


def flip(hu: np.ndarray, rng: Optional[np.random.Generator], p: float) -> tuple[np.ndarray,
                                                                                bool]:
  if rng is None or p <= 0 or rng.random() >= p:
    return hu, False
  return np.ascontiguousarray(hu[..., ::-1]), True


def drct_example(read_slices, num_slices: int, labels: np.ndarray, slice_labels: np.ndarray,
                 *, m: int, rng: Optional[np.random.Generator] = None, resample: bool = False,
                 hflip: float = 0.0, example_index: int = 0) -> dict:
  """One DrCT scan example: m slices sampled (uniformly without `rng`; re-drawn from the bins
  with it and `resample`), read by `read_slices(indices)`: int16 HU [m, H, W] (→ "hu", maybe
  flipped), or a dict of per-slice arrays (a feature store's rows, e.g. "feat_pooled").

  The one builder of DrCT examples: the cache pipeline, the feature store and single DICOM
  series (reports, predictions) all go through it, so they sample and lay out scans
  identically.
  """
  train = rng is not None and resample
  idx = sampling.sample_indices(num_slices, m, train=train, rng=rng)
  read = read_slices(idx)
  if isinstance(read, dict):
    arrays = read
  else:
    arrays = {"hu": flip(read, rng, hflip)[0]}
  return {**arrays, "labels": labels, "slice_labels": slice_labels[idx],
          "slice_index": idx.astype(np.int32), "num_source_slices": np.int32(num_slices),
          "valid": np.bool_(True), "example_index": np.int32(example_index)}
