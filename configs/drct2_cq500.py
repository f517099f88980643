"""DrCT2 on CQ500 (DrCT2 paper, Tables 2-3: F1 0.9370; 9 labels, 32 slices, 10 folds).

  python -m ctjax.train --config configs/drct2_cq500.py --workdir runs/drct2_cq500 \
      --config.data.root=/data/cq500 --config.model.backbone_weights=weights/vgg16.npz

Runtime: not measured; 1181 scans × 100 epochs, batch 32. One fold of the
paper's 10-fold cross-validation: `:fold=k` or `python -m ctjax.crossval`.

Data: every soft-tissue axial series of a study with at least 32 slices is one scan with the
study's labels (`config.data.series`; the paper's Table 1 counts 1,181 scans of 490 patients but
does not state its rule — `python -m ctjax.prepare --config configs/drct2_cq500.py
--config.data.root=/data/cq500 --qa` prints how many series each policy keeps and why each
series was kept or left out); labels by majority of R1–R3, the fracture label from
`CalvarialFracture`; folds grouped by patient and stratified over the labels; windows
`drct_cq500` (brain, subdural, bone 600/2800).
`:runlocal` is a tiny CPU variant (small widths, 64 px, 8 slices, a few steps) for smoke tests.
"""

from ctjax.configs import drct


def get_config(arg=None):
  return drct.cq500(arg)
