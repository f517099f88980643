"""DrCT1 (no APS network; the Table 3 ablation) on RSNA (DrCT2 paper, Table 3: F1 0.8650).

  python -m ctjax.train --config configs/drct1_rsna.py --workdir runs/drct1_rsna \
      --config.data.root=/data/rsna --config.model.backbone_weights=weights/vgg16.npz

Same as `--config configs/drct2_rsna.py:drct1`; arguments as drct2_rsna (`runlocal`, `fold`).
"""

from __future__ import annotations

from ctjax.configs import common


def get_config(arg: str | None = None):
  arg = f"{arg},drct1" if arg else "drct1"
  return common.sibling_config(__file__, "drct2_rsna.py", arg)
