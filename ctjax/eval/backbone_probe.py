"""How good can a frozen backbone make DrCT? A scan-level probe of a pretraining run.

  python -m ctjax.eval.backbone_probe --workdir runs/pretrain_phantom \
      --data runs/drct2_phantom/data [--size 128] [--num_slices 28]

The pretraining task's slice classifier (backbone + linear head, `configs/pretrain_phantom.py`)
scores every slice of a DrCT data set's prepared cache; a scan's score per label is the maximum
over its m uniformly sampled slices (what DrCT's attention can at best pick out). Prints per
label: positives, scan AUC over all slices and over the sampled ones, F1 at 0.5, and the recall
of the slice-truth oracle on the sampled slices (how often sampling keeps any lesion slice at
all). `--size` feeds the slices resized (bilinear) to another size, e.g. DrCT2's APS zoom.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Callable

import numpy as np

from ctjax.data import sampling
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a configs/pretrain_phantom.py workdir")
  parser.add_argument("--data", required=True, help="data root holding a prepared cache")
  parser.add_argument("--size", type=int, default=0, help="resize slices to this (0: as cached)")
  parser.add_argument("--num_slices", type=int, default=28)
  args = parser.parse_args(argv)
  from ctjax.data import cache
  from ctjax.errors import CTJaxError
  try:
    import jax
    import jax.numpy as jnp
    from ctjax.train.checkpoint import restore_for_inference
    from ctjax.train.tasks import pretrain
    config, _, model, variables = restore_for_inference(args.workdir)
    root = pathlib.Path(args.data) / ".ctjax_cache"
    found = sorted(p for p in root.glob("*") if cache.is_complete(p)) if root.is_dir() else []
    if not found:
      raise CTJaxError(f"{args.data}: no prepared cache (run python -m ctjax.prepare)")
    scans = cache.CachedScans(found[0])

    @jax.jit
    def probs(hu):
      x = pretrain.preprocess(hu, config)
      if args.size and args.size != x.shape[1]:
        x = jax.image.resize(x, (x.shape[0], args.size, args.size, 3), "bilinear")
      return jax.nn.sigmoid(model.apply(variables, x, train=False))

    pad_to = max(s.num_slices for s in scans.scans)   # one compiled shape

    def slice_probs(hu):
      n = len(hu)
      padded = np.concatenate([hu, np.zeros((pad_to - n,) + hu.shape[1:], hu.dtype)])
      return np.asarray(probs(jnp.asarray(padded)))[:n]

    result = scan_probe(slice_probs, scans, args.num_slices)
  except CTJaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{'label':18s} {'pos':>4s} {'auc_all':>8s} {'auc_m':>8s} {'f1@.5':>7s} {'oracle':>7s}")
  for name, r in result.items():
    print(f"{name:18s} {r['positives']:4d} {r['auc_all_slices']:8.3f} {r['auc_sampled']:8.3f} "
          f"{r['f1_at_0.5']:7.3f} {r['oracle_recall']:7.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
