"""DrCT2 on the RSNA Intracranial Hemorrhage data set (DrCT2 paper, Tables 2-3: F1 0.8700).

  python -m ctjax.train --config configs/drct2_rsna.py --workdir runs/drct2_rsna \
      --config.data.root=/data/rsna --config.model.backbone_weights=weights/vgg16.npz

Runtime: not measured; ~21.5k scans × 100 epochs, batch 256. One fold of the
paper's 5-fold cross-validation: `:fold=k` or `python -m ctjax.crossval`.
`:runlocal` is a tiny CPU variant (small widths, 64 px, 8 slices, a few steps) for smoke tests;
`:drct1` drops the APS network (Table 3, F1 0.8650; also configs/drct1_rsna.py).
"""

from ctjax.configs import drct


def get_config(arg=None):
  return drct.rsna(arg)
