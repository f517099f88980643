"""A compiled eval step over the batches of a split → host numpy outputs.

The training loop's periodic evaluation and every restored run (`ctjax.inference.runs`) collect
predictions through `collect_outputs`, so both see the same rows: padding rows of the last
global batch dropped, every process holding the whole split's outputs.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import ml_collections
import numpy as np

from ctjax.errors import CTJaxError
from ctjax.train import parallel

# Batch entries that stay on device after prediction (images, stored features); everything else
# (labels, ids, valid, boxes, slice maps) comes back to the host next to the predictions.
IMAGE_KEYS = ("hu", "image", "images", "feat_pooled", "feat_map", "feat_aps")


def collect_outputs(predict_step: Callable, state: Any, batches: Iterable[Mapping[str, Any]],
                    mesh: Any) -> dict[str, np.ndarray]:
  """Concatenated predictions + host batch fields over `batches` (padding rows dropped).

  Every process gets the whole split's outputs (all-gathered).
  """
  chunks = []
  for batch in batches:
    device_batch = parallel.host_to_global(batch, mesh)
    preds = predict_step(state, device_batch)
    keep = {k: v for k, v in device_batch.items() if k not in IMAGE_KEYS}
    chunks.append(parallel.to_host({**keep, **preds}))
  if not chunks:
    raise CTJaxError("the split is empty; nothing to predict")
  outputs = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  if "valid" in outputs:
    valid = outputs.pop("valid").astype(bool)
    outputs = {k: v[valid] for k, v in outputs.items()}
  return outputs


def split_outputs(predict_step: Callable, state: Any, config: ml_collections.ConfigDict,
                  data: Any, splits: Any, split: str, mesh: Any) -> dict[str, np.ndarray]:
  """`collect_outputs` over one split of `data` (this process's rows of each global batch)."""
  if split not in splits:
    raise CTJaxError(f"split {split!r} does not exist; splits: {', '.join(splits)}")
  batches = data.eval_batches(config, splits, split, process_index=jax.process_index(),
                              process_count=jax.process_count())
  try:
    return collect_outputs(predict_step, state, batches, mesh)
  except CTJaxError as e:
    raise CTJaxError(f"split {split!r}: {e}") from e
