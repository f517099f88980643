"""`python -m ctjax.backbone_probe --workdir PRETRAIN_RUN --data DATA_ROOT [--size PX]`.

The scan-level probe of a phantom-pretraining run's slice classifier on a DrCT data set's
prepared cache (`ctjax.eval.probe`): per label, positives, scan AUC over all slices and
over the m sampled ones, F1 at 0.5, and the slice-truth oracle's recall. `--size` feeds the
slices resized (bilinear, on device) to another size, e.g. DrCT2's APS zoom.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
from absl import flags

from ctjax.commands import cli


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("data", None, "data root holding a prepared cache", flag_values=fv)
  flags.DEFINE_integer("size", 0, "resize slices to this (0: as cached)", flag_values=fv)
  flags.DEFINE_integer("num_slices", 28, "slices sampled per scan", flag_values=fv)


def _slice_probs(model, variables, batch, config, *, size: int):
  """The pretraining classifier's probabilities for a batch of slices (optionally zoomed)."""
  import jax
  from ctjax.train.tasks import pretrain
  x = pretrain.preprocess(batch["hu"], config)
  if size and size != x.shape[1]:
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
  return {"probs": jax.nn.sigmoid(model.apply(variables, x, train=False))}


def _probe(fv, _config, _args) -> int:
  if not fv.data:
    raise cli.UsageError("--data DIR is required")
  from ctjax.inference import runs
  from ctjax.data import cache
  from ctjax.eval.probe import find_cache, scan_probe
  scans = cache.CachedScans(find_cache(fv.data))   # before the (slower) model restore
  run = runs.load_run(fv.workdir)
  fn = functools.partial(_slice_probs, size=fv.size)
  pad_to = max(s.num_slices for s in scans.scans)   # one compiled shape

  def slice_probs(hu):
    n = len(hu)
    padded = np.concatenate([hu, np.zeros((pad_to - n,) + hu.shape[1:], hu.dtype)])
    return runs.predict_batch(run, {"hu": padded}, fn=fn)["probs"][:n]

  result = scan_probe(slice_probs, scans, fv.num_slices)
  print(f"{'label':18s} {'pos':>4s} {'auc_all':>8s} {'auc_m':>8s} {'f1@.5':>7s} {'oracle':>7s}")
  for name, r in result.items():
    print(f"{name:18s} {r['positives']:4d} {r['auc_all_slices']:8.3f} {r['auc_sampled']:8.3f} "
          f"{r['f1_at_0.5']:7.3f} {r['oracle_recall']:7.3f}")
  return 0


def main(argv=None) -> int:
  return cli.run(_probe, argv, prog="ctjax.backbone_probe", extra_flags=_flags,
                 workdir_help="a configs/pretrain_phantom.py workdir")


if __name__ == "__main__":
  sys.exit(main())
