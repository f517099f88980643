"""Pretrains the 1/8-width VGG16 on phantom slices: ctjax's stand-in for ImageNet weights.

  python -m ctjax.train --config configs/pretrain_phantom.py --workdir runs/pretrain_phantom

writes runs/pretrain_phantom/backbone.npz (about 1 MB; `config.pretrain.export_path`, default
`<workdir>/backbone.npz`): the file shipped as ctjax/assets/vgg16_w0125_phantom.npz, the frozen
backbone of configs/drct2_phantom.py (`--config.model.backbone_weights=FILE` to use a new one): 800 scans at 128 px, 4000 steps of 32 slices (half of each batch
zoomed to 192 px), the best state by validation macro-AUC exported (step 2000: slice-level val
macro-F1 0.791, macro-AUC 0.973). About 45 min on 2 idle CPU cores. With it, drct2_phantom's
test macro-F1 is 0.885; with the previous file (a 2000-step run, val 0.766 / 0.973) 0.838.
See docs/HISTORY.md.
The network trains with BatchNorm; the file holds plain VGG16 convolutions with BN folded in.
Re-export from a finished workdir:
`python -m ctjax.weights export --workdir runs/pretrain_phantom --out FILE`.

Why: DrCT2 (section V.A) freezes an ImageNet-pretrained VGG16; no ImageNet weights can be
fetched here, so the small backbone first learns generic head-CT features from single slices
with their slice-level truth, on a phantom set with its own seed (never DrCT2's evaluation
scans). Argument: `runlocal` (a seconds-long smoke run), e.g.
`--config configs/pretrain_phantom.py:runlocal`.
"""

from ctjax.configs import pretrain


def get_config(arg=None):
  return pretrain.phantom(arg)
