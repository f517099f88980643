"""The backbones by name: the one factory every model, task and tool builds them with."""

from __future__ import annotations

import flax.linen as nn

from ctjax.errors import WeightsError
from ctjax.models.inception import InceptionV3
from ctjax.models.resnet import ResNet50
from ctjax.models.vgg import VGG16

# torchvision architectures ctjax builds and imports weights of (`python -m ctjax.weights`).
ARCHS = ("vgg16", "vgg16_bn", "resnet50", "inception_v3")
# The backbones the blend-sign detector and slice pretraining train (blend-sign paper, Table 4).
FEATURE_BACKBONES = ("vgg16", "resnet50", "inception_v3")


def build_backbone(arch: str, **kwargs) -> nn.Module:
  """The ctjax module for a torchvision arch name; kwargs go to the module (width, dtype, …)."""
  if arch in ("vgg16", "vgg16_bn"):
    return VGG16(batch_norm=arch == "vgg16_bn", **kwargs)
  if arch == "resnet50":
    return ResNet50(**kwargs)
  if arch == "inception_v3":
    return InceptionV3(**kwargs)
  raise WeightsError(f"unknown backbone arch {arch!r}; known: {', '.join(ARCHS)}")
