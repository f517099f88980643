"""Pretrains a 1/8-width backbone on blend phantom slices: the blend-sign detector's ImageNet.

  python -m ctjax.train --config configs/pretrain_blend_phantom.py --workdir runs/pretrain_blend
  # Table 4's other backbones, shipped as <backbone>_w0125_blend_phantom.npz: the same recipe at
  # half the steps, to fit 2 CPU cores (steps=6000 is the ResNet-50's schedule):
  python -m ctjax.train --config configs/pretrain_blend_phantom.py:backbone=vgg16,steps=3000 \
      --workdir W
  python -m ctjax.train --config \
      configs/pretrain_blend_phantom.py:backbone=inception_v3,steps=3000 --workdir W

writes runs/pretrain_blend/backbone.npz (1.6 MB: params and BatchNorm statistics;
`config.pretrain.export_path`, default `<workdir>/backbone.npz`): the file shipped as
ctjax/assets/resnet50_w0125_blend_phantom.npz, the backbone configs/blend_phantom.py fine-tunes
(`--config.model.backbone_weights=FILE` to use a new one). 1,000 blend-layout scans (41k
slices) at 128 px, 6,000 steps of 32 slices (about 6 epochs of the class-balanced training
slices), the best state by validation macro-AUC exported (step 5,000: slice-level val AUC
non-ICH 0.990 / normal ICH 0.978 / blend sign 0.998, macro-F1 0.943 on 200 held-out scans).
Measured: 1 h 20 min wall on 2 CPU cores at load 5-8 (2,700 user CPU-s). A 600-scan,
3,000-step pilot reached 0.982 / 0.959 / 0.991; fine-tuning from it stayed below 0.95 for
normal ICH on blend_phantom's validation fold, hence the larger set and schedule.
The VGG16 stand-in (vgg16_w0125_blend_phantom.npz, 0.9 MB, BatchNorm folded): the same 1,000
scans, 3,000 steps; best state step 3,000, val AUC 0.991 / 0.979 / 0.999, macro-F1 0.965;
46 min wall on 2 CPU cores shared with other runs. The Inception v3 stand-in
(inception_v3_w0125_blend_phantom.npz, 1.5 MB): the same, best state step 3,000, val AUC
0.983 / 0.967 / 0.997, macro-F1 0.914 (still rising: 0.745 at step 1,000, 0.910 at 2,000);
17 min wall.
Re-export from a finished workdir:
`python -m ctjax.weights export --workdir runs/pretrain_blend --out FILE`.

Why: the blend-sign paper ("Pre-trained networks") fine-tunes an ImageNet-pretrained ResNet-50;
no ImageNet weights can be fetched here, so the small backbone first learns head-CT features
from single slices. Data and labels, as configs/pretrain_phantom.py does for DrCT's VGG16: the
downstream task's own phantom layout and vocabulary ("blend": every slice non-ICH / normal ICH /
blend sign, one-hot, as multi-label BCE), on a separately seeded, larger phantom set (seed
104729, never the blend_phantom evaluation scans of seed 0: a scan is a pure function of (seed,
index)). The RSNA layout was not used: its phantoms carry no blend sign, and its subtype labels
would teach nothing about the hypodense component that separates the two ICH classes.
Arguments: `backbone` (resnet50, the default; vgg16, trained with BatchNorm that the export folds
into a plain VGG16, as configs/pretrain_phantom.py does; inception_v3), `runlocal` (a
seconds-long smoke run), `num_scans`, `size`, `steps`, e.g.
`--config configs/pretrain_blend_phantom.py:runlocal`.
"""

from ctjax.configs import pretrain


def get_config(arg=None):
  return pretrain.blend_phantom(arg)
