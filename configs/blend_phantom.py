"""Blend-sign detector on generated `blend` phantoms, small enough for 2 CPU cores (minutes).

  python -m ctjax.train --config configs/blend_phantom.py --workdir runs/blend_phantom
  python -m ctjax.evaluate --workdir runs/blend_phantom --split test
  # Table 3 ablation (each a few minutes on 2 CPU cores):
  python -m ctjax.distill --config configs/blend_phantom.py:variant=wce --workdir runs/abl_wce
  python -m ctjax.distill --config configs/blend_phantom.py:variant=wce_at --workdir runs/abl_at
  python -m ctjax.distill --config configs/blend_phantom.py:variant=wce_at_skd --workdir runs/abl_skd

Measured (`python -m ctjax.train --config configs/blend_phantom.py --workdir runs/blend_phantom`,
then `python -m ctjax.evaluate --workdir runs/blend_phantom --split test`): 9 min 31 s wall on 2
CPU cores (data generation and cache included); best checkpoint step 1,500. Test split
(fold 0, 1,300 slices): AUC non-ICH 0.998 / normal ICH 0.992 / blend sign 0.999;
blend-sign sensitivity 0.934, specificity 0.998, F1 0.947; macro-F1 0.953, accuracy 0.983.
Validation (fold 1) at step 1,500: AUC 0.967 / 0.948 / 1.000, macro-F1 0.927.

The paper's configuration (configs/blend_resnet50.py, `ctjax.configs.blend`) shrunk: ResNet-50
at 1/8 width, 128 px slices, 150 scans, 1,500 steps. As the paper fine-tunes an ImageNet
ResNet-50 ("Pre-trained networks"), this config fine-tunes
`asset:resnet50_w0125_blend_phantom.npz`, the same backbone pretrained on separately seeded
blend phantoms (configs/pretrain_blend_phantom.py; never these scans), at 1/10 of the paper's
base learning rate (1e-3: at 0.01 the pretrained features are lost in the first few hundred
steps). Every other paper hyper-parameter (class weights, λ's, SGD with momentum, poly decay,
augmentation, SKD) is unchanged.
Table 4's VGG16 and Inception v3 (`backbone=vgg16|inception_v3`) fine-tune their own stand-ins,
pretrained by the same recipe (`configs/pretrain_blend_phantom.py:backbone=…`), at the same 1e-3.
Arguments as blend_resnet50.py plus `size`, `num_scans`, `steps`, `width`; the pretrained
backbones are used at width 0.125 only (other widths train from scratch, at the paper's 0.01).
"""

from ctjax.configs import blend


def get_config(arg=None):
  return blend.phantom(arg)
