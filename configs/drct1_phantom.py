"""DrCT1 (no APS network) on the same phantom data and seed as configs/drct2_phantom.py.

  python -m ctjax.train --config configs/drct1_phantom.py --workdir runs/drct1_phantom

The Table 3 ablation on CPU; same as `--config configs/drct2_phantom.py:drct1`. Arguments as
drct2_phantom (`runlocal`, `num_scans`, `epochs`, `fold`).
"""

from __future__ import annotations

from ctjax.configs import common


def get_config(arg: str | None = None):
  arg = f"{arg},drct1" if arg else "drct1"
  return common.sibling_config(__file__, "drct2_phantom.py", arg)
