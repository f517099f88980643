"""DrCT2 on the built-in phantom head-CT set (RSNA layout): the README's CPU run.

  python -m ctjax.train --config configs/drct2_phantom.py --workdir runs/drct2_phantom
  python -m ctjax.evaluate --workdir runs/drct2_phantom --split test

Results: docs/RESULTS.md (`python -m ctjax.tables drct2_per_label --preset cpu` trains this
config); runtime and the history of its settings: README and docs/HISTORY.md (2 CPU cores,
phantom generation, cache and feature store included). DrCT1 on the same data and seed: `--config
configs/drct2_phantom.py:drct1` (or configs/drct1_phantom.py). The backbone is frozen, so its
per-slice outputs are computed once (`config.features`, exact) and the heads train
100 epochs in about a minute.

What differs from the paper (section V / VI.A.1) and why: everything is shrunk to fit 2 CPU
cores — a 1/8-width VGG16 (64 features) at 128 px with the APS zoom 128 → 192 px (the paper's
224 → 512, ×2.3; ×1.5 here, the size the backbone was pretrained at besides 128), small
GRU/FC widths, batch 32 (the paper's CQ500 value). The frozen backbone is
`configs/pretrain_phantom.py`'s slice-pretrained VGG16 (the stand-in for ImageNet; a separately
seeded phantom set; trained with BatchNorm and scale augmentation, shipped with BN folded into
plain VGG16 convolutions), shipped as `ctjax/assets/vgg16_w0125_phantom.npz`; to rebuild it,
run `python -m ctjax.train --config configs/pretrain_phantom.py --workdir runs/pretrain_phantom`
and pass `--config.model.backbone_weights=runs/pretrain_phantom/backbone.npz`. Learning is made fast by
honest means only: a warm-up + cosine learning-rate schedule and per-label positive weights
(inverse-square-root of the phantom's label prevalence); the lesions are the generator's
defaults (30% of positive scans "difficult": 1–3 slices).

Arguments: `runlocal` (seconds-long smoke run), `drct1` (no APS network), `num_scans`,
`epochs`, `fold`, `layout` (`rsna`, the default, or `cq500`: phantom scans in the CQ500 layout
with its 9 labels, m = 32 and 10 folds as the paper's CQ500 runs — the CPU analogue of the
paper's CQ500 rows; one series per study, the thinnest soft-tissue axial one, and the
backbone's own windows `rsna3`, on which it was pretrained).
"""

from ctjax.configs import drct


def get_config(arg=None):
  return drct.phantom(arg)
