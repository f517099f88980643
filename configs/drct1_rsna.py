"""DrCT1 (no APS network; the Table 3 ablation) on RSNA (DrCT2 paper, Table 3: F1 0.8650).

  python -m ctjax.train --config configs/drct1_rsna.py --workdir runs/drct1_rsna \
      --config.data.root=/data/rsna --config.model.backbone_weights=weights/vgg16.npz

Same as `--config configs/drct2_rsna.py:drct1`; arguments as drct2_rsna (`runlocal`, `fold`).
"""

from ctjax.configs import drct


def get_config(arg=None):
  return drct.drct1_rsna(arg)
