"""How good can a frozen backbone make DrCT? A scan-level probe of a pretraining run (host side).

  python -m ctjax.backbone_probe --workdir runs/pretrain_phantom \
      --data runs/drct2_phantom/data [--size 192] [--num_slices 28]

The pretraining task's slice classifier (backbone + linear head, `configs/pretrain_phantom.py`)
scores every slice of a DrCT data set's prepared cache; a scan's score per label is the maximum
over its m uniformly sampled slices (what DrCT's attention can at best pick out). Prints per
label: positives, scan AUC over all slices and over the sampled ones, F1 at 0.5, and the recall
of the slice-truth oracle on the sampled slices (how often sampling keeps any lesion slice at
all). `--size` feeds the slices resized (bilinear) to another size, e.g. DrCT2's APS zoom.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable

import numpy as np

from ctjax.data import sampling
from ctjax.errors import CTJaxError
from ctjax.eval.metrics import binary_auc, multilabel_report


def scan_probe(slice_probs: Callable[[np.ndarray], np.ndarray], scans, num_slices: int
               ) -> dict[str, dict[str, float]]:
  """slice_probs(hu int16 [S, H, W]) -> [S, L] probabilities; `scans` a CachedScans."""
  truth, best_all, best_sampled, oracle = [], [], [], []
  for i, meta in enumerate(scans.scans):
    p = np.asarray(slice_probs(scans.scan_hu(i)))
    idx = sampling.uniform_indices(meta.num_slices, num_slices)
    truth.append(meta.labels > 0.5)
    best_all.append(p.max(0))
    best_sampled.append(p[idx].max(0))
    oracle.append(meta.slice_labels[idx].max(0) > 0)
  truth, best_all, best_sampled, oracle = map(np.asarray, (truth, best_all, best_sampled, oracle))
  sampled = multilabel_report(truth, best_sampled, scans.labels, threshold=0.5)["per_class"]
  out = {}
  for j, name in enumerate(scans.labels):
    y = truth[:, j]
    out[name] = {"positives": int(y.sum()), "auc_all_slices": binary_auc(y, best_all[:, j]),
                 "auc_sampled": sampled[name]["auc"], "f1_at_0.5": sampled[name]["f1"],
                 "oracle_recall": float(oracle[y, j].mean()) if y.any() else float("nan")}
  return out


def find_cache(data_root: str | pathlib.Path) -> pathlib.Path:
  """The prepared cache under `data_root`/.ctjax_cache: the newest complete one; an error when
  there is none, or when complete caches of different image sizes make the choice ambiguous."""
  from ctjax.data import cache
  root = pathlib.Path(data_root) / ".ctjax_cache"
  found = [p for p in root.glob("*") if cache.is_complete(p)] if root.is_dir() else []
  if not found:
    raise CTJaxError(f"{data_root}: no prepared cache (run python -m ctjax.prepare)")
  sizes = {p: json.loads((p / "manifest.json").read_text()).get("image_size") for p in found}
  if len(set(sizes.values())) > 1:
    raise CTJaxError(f"{data_root}: prepared caches of several image sizes "
                     f"({', '.join(f'{p.name}: {v}' for p, v in sorted(sizes.items()))}); "
                     "remove the ones not wanted")
  return max(found, key=lambda p: (p / "manifest.json").stat().st_mtime_ns)
