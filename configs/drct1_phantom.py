"""DrCT1 (no APS network) on the same phantom data and seed as configs/drct2_phantom.py.

  python -m ctjax.train --config configs/drct1_phantom.py --workdir runs/drct1_phantom

The Table 3 ablation on CPU; same as `--config configs/drct2_phantom.py:drct1`. Arguments as
drct2_phantom (`runlocal`, `num_scans`, `epochs`, `fold`).
"""

from ctjax.configs import drct


def get_config(arg=None):
  return drct.drct1_phantom(arg)
