"""DrCT1 on high-resolution input (DrCT2 paper, section VI.A.3, Table 4: F1 0.9105 on CQ500).

  python -m ctjax.train --config configs/drct1_hires.py --workdir runs/drct1_hires \
      --config.data.root=/data/cq500 --config.model.backbone_weights=weights/vgg16.npz
  # the CPU analogue on CQ500-layout phantoms:
  python -m ctjax.train --config configs/drct1_hires.py:base=phantom --workdir runs/hires_ph

Runtime: not measured on CQ500; every slice's backbone pass at 512 px costs
about 5× the 224 px one (once, with the feature store).

Table 4's "High-resolution Input, Primary: 512×512": a DrCT1 whose every sampled slice enters
the frozen backbone at the APS resolution (`model.aps_size`: 512 in the paper, 192 on the
phantom), zoomed bilinearly from the cached slices as the APS network zooms its key slices
(eq. 8). It is configs/drct1_fusion.py with the high-resolution range over all m slices, the
same model as `--config.model.primary_size=512` (the same per-slice operations) that reads the
DrCT2 feature store's APS rows instead of building a store of its own; like the fusion model it
draws no highlight.

Arguments: as configs/drct1_fusion.py (`base` and the base config's own; not `first`/`last`).
"""

from ctjax.configs import drct


def get_config(arg=None):
  return drct.hires(arg)
