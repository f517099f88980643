"""DrCT1 "model fusion" (DrCT2 paper, section VI.A.3, Table 4: F1 0.9179 on CQ500).

  python -m ctjax.train --config configs/drct1_fusion.py --workdir runs/drct1_fusion \
      --config.data.root=/data/cq500 --config.model.backbone_weights=weights/vgg16.npz
  # the CPU analogue on CQ500-layout phantoms (minutes with the feature store):
  python -m ctjax.train --config configs/drct1_fusion.py:base=phantom --workdir runs/fusion_ph

Runtime: not measured on CQ500 (no accelerator); as configs/drct2_cq500.py's DrCT1.

The paper's Figure 7 puts most of DrCT2's top-5 attended slices at the 16th-22nd of the 32
sampled CQ500 slices, so "we simulate the mechanism of DrCT2 and replace these slices (from
16th to 22nd) with high-resolution images, while the rest still maintain low-resolution
images": a DrCT1 (no APS network) whose sampled slices 16-22 enter the frozen backbone at 512 px
(the APS zoom of eq. 8, `model.aps_size`) and the others at 224 (`model.primary_size`). The
pooled slice vectors have the same width at either size, so the primary network is unchanged
(`ctjax.models.drct.DrCT.hires_slices`). With the feature store, the high-resolution rows are the
stored APS rows of the DrCT2 store of the same sizes (built once, shared).

Arguments: `base` (`cq500`: configs/drct2_cq500.py, the paper's setting; `phantom`:
configs/drct2_phantom.py:layout=cq500), `first`, `last` (the 1-based, inclusive range of
the 32 sampled slices at high resolution, scaled to other stack lengths; the paper's 16 and 22; `last=0`: through the last one, as
configs/drct1_hires.py), and every argument of the base config (`fold`, `runlocal`, …;
`num_scans`, `epochs`, `layout` for the phantom).
"""

from __future__ import annotations

import ml_collections

from ctjax.configs import common

PAPER_SLICES = 32   # VI.A.1: CQ500 scans are sampled to 32 slices; `first`/`last` count on them
BASES = {"cq500": ("drct2_cq500.py", ""), "phantom": ("drct2_phantom.py", "layout=cq500")}


def split_arg(arg: str | None, **own) -> tuple[ml_collections.ConfigDict, str]:
  """(this file's arguments, the rest as the base config's argument string)."""
  mine, rest = [], []
  for item in (arg or "").split(","):
    if item:
      (mine if item.partition("=")[0] in own else rest).append(item)
  return common.parse_arg(",".join(mine), **own), ",".join(rest)


def base_config(this_file: str, a: ml_collections.ConfigDict, rest: str
                ) -> ml_collections.ConfigDict:
  """DrCT1 of the base config named by `a.base`, with `rest` as its arguments."""
  from ctjax.errors import ConfigError
  if a.base not in BASES:
    raise ConfigError(f"base={a.base!r}; expected one of {sorted(BASES)}")
  name, fixed = BASES[a.base]
  if "layout=" in rest:   # an explicit phantom layout wins over the default
    fixed = ""
  args = ",".join(x for x in (fixed, rest, "drct1") if x)
  return common.sibling_config(this_file, name, args)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a, rest = split_arg(arg, base="cq500", first=16, last=22)
  c = base_config(__file__, a, rest)
  # VI.A.3: the 16th-22nd of 32 sampled slices at high resolution (0-based [first - 1, last));
  # on a stack of another length m (RSNA's 28, runlocal's 8) the same share of it.
  m = int(c.data.num_slices)
  lo, hi = a.first - 1, a.last or PAPER_SLICES
  if m != PAPER_SLICES:
    lo, hi = int(round(lo * m / PAPER_SLICES)), max(int(round(hi * m / PAPER_SLICES)), 1)
  c.model.hires_slices = (min(lo, hi - 1), hi)
  return c
