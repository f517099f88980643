"""DrCT1 "model fusion" (DrCT2 paper, section VI.A.3, Table 4: F1 0.9179 on CQ500).

  python -m ctjax.train --config configs/drct1_fusion.py --workdir runs/drct1_fusion \
      --config.data.root=/data/cq500 --config.model.backbone_weights=weights/vgg16.npz
  # the CPU analogue on CQ500-layout phantoms (minutes with the feature store):
  python -m ctjax.train --config configs/drct1_fusion.py:base=phantom --workdir runs/fusion_ph

Runtime: not measured on CQ500; as configs/drct2_cq500.py's DrCT1.

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

from ctjax.configs import drct


def get_config(arg=None):
  return drct.fusion(arg)
