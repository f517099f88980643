"""DrCT1 (no APS network; the Table 3 ablation) on RSNA (DrCT2 paper, Table 3: F1 0.8650).

  python -m ctjax.train --config configs/drct1_rsna.py --workdir runs/drct1_rsna \
      --config.data.root=/data/rsna --config.model.backbone_weights=weights/vgg16.npz

Runtime: not measured here (no accelerator); ~21.5k scans × 100 epochs, batch 256. One fold of the
paper's 5-fold cross-validation: `:fold=k` or `python -m ctjax.crossval`.
`:runlocal` is a tiny CPU variant (small widths, 64 px, 8 slices, a few steps) for smoke tests.
"""

from configs import common
from configs.drct_base import drct_config, runlocal_overrides


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, fold=0)
  c = drct_config(dataset="rsna", variant="drct1")
  c.data.fold = a.fold
  if a.runlocal:
    runlocal_overrides(c)
  return c
