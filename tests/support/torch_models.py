"""The PyTorch references of ctjax's models: the backbones, DrCT2 and the blend-sign network.

Tests check ctjax's layers and backbones against these with the same weights
(tests/models/); the benchmarks time them beside ctjax as the papers' framework
(`python -m benchmarks.run`, `benchmarks.backbones`, `benchmarks.gpu`).

Backbones: torchvision's VGG16(-BN), ResNet-50 and Inception v3 rebuilt in plain `torch.nn`
(torchvision itself does not install beside torch 2.13.0). Module trees and therefore
`state_dict()` keys are torchvision's exactly ("features.0.weight",
"layer1.0.downsample.1.running_var", "Mixed_5b.branch1x1.conv.weight", …), so a real
torchvision checkpoint loads into them with `load_state_dict(strict=True)`. `width` scales
channels with the same rule as ctjax (`ctjax.models.vgg.scale_channels`).

DrCT2 and the blend-sign network: same architecture and sizes as ctjax's models (VGG16 conv
stack + adaptive max-pool, BiGRU, attention, heads), same on-device input preprocessing (HU →
windows → ImageNet normalisation inside the timed call), so the two frameworks do the same
work; `tests/benchmarks/test_run.py` checks this by comparing the torch FLOP count
(`torch.utils.flop_counter`) with XLA's count of the ctjax model.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctjax.data.windows import IMAGENET_MEAN, IMAGENET_STD, resolve_windows

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")


def _ch(c: int, width: float) -> int:
  return max(1, int(round(c * width)))


# ---------------------------------------------------------------------------------------- VGG
class VGG(nn.Module):

  def __init__(self, batch_norm: bool = False, width: float = 1.0, num_classes: int = 1000,
               classifier: bool = True):
    super().__init__()
    layers, cin = [], 3
    for v in VGG16_LAYERS:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
        continue
      cout = _ch(v, width)
      layers.append(nn.Conv2d(cin, cout, 3, padding=1))
      if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
      layers.append(nn.ReLU(inplace=True))
      cin = cout
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    hidden = _ch(4096, width)
    if not classifier:  # conv stack only (tests/benchmarks skip the 120M-parameter head).
      self.classifier = None
      return
    self.classifier = nn.Sequential(
        nn.Linear(cin * 49, hidden), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(hidden, num_classes))

  def forward(self, x):
    f = self.features(x)
    return self.classifier(torch.flatten(self.avgpool(f), 1))


def vgg16(width: float = 1.0, num_classes: int = 1000, classifier: bool = True) -> VGG:
  return VGG(False, width, num_classes, classifier)


def vgg16_bn(width: float = 1.0, num_classes: int = 1000, classifier: bool = True) -> VGG:
  return VGG(True, width, num_classes, classifier)


# ------------------------------------------------------------------------------------- ResNet
class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    idt = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNet(nn.Module):

  def __init__(self, layers=(3, 4, 6, 3), width: float = 1.0, num_classes: int = 1000):
    super().__init__()
    self.inplanes = _ch(64, width)
    self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(self.inplanes)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
      setattr(self, f"layer{i + 1}", self._make_layer(_ch(planes, width), n, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(self.inplanes, num_classes)

  def _make_layer(self, planes, blocks, stride):
    down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                         nn.BatchNorm2d(planes * 4))
    out = [Bottleneck(self.inplanes, planes, stride, down)]
    self.inplanes = planes * 4
    out += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*out)

  def features(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  def forward(self, x):
    return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def resnet50(width: float = 1.0, num_classes: int = 1000) -> ResNet:
  return ResNet((3, 4, 6, 3), width, num_classes)


# ---------------------------------------------------------------------------------- Inception
InceptionOutputs = collections.namedtuple("InceptionOutputs", ["logits", "aux_logits"])

class BasicConv2d(nn.Module):

  def __init__(self, cin, cout, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):

  def __init__(self, cin, pool_features, w):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, _ch(64, w), kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, _ch(48, w), kernel_size=1)
    self.branch5x5_2 = BasicConv2d(_ch(48, w), _ch(64, w), kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, _ch(64, w), kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(_ch(64, w), _ch(96, w), kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(_ch(96, w), _ch(96, w), kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, _ch(pool_features, w), kernel_size=1)
    self.out_channels = _ch(64, w) * 2 + _ch(96, w) + _ch(pool_features, w)

  def forward(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
    return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):

  def __init__(self, cin, w):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, _ch(384, w), kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, _ch(64, w), kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(_ch(64, w), _ch(96, w), kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(_ch(96, w), _ch(96, w), kernel_size=3, stride=2)
    self.out_channels = _ch(384, w) + _ch(96, w) + cin

  def forward(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([b3, bd, F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):

  def __init__(self, cin, channels_7x7, w):
    super().__init__()
    c7 = _ch(channels_7x7, w)
    self.branch1x1 = BasicConv2d(cin, _ch(192, w), kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, _ch(192, w), kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, _ch(192, w), kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, _ch(192, w), kernel_size=1)
    self.out_channels = 4 * _ch(192, w)

  def forward(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
              self.branch7x7dbl_5):
      bd = m(bd)
    bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
    return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):

  def __init__(self, cin, w):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, _ch(192, w), kernel_size=1)
    self.branch3x3_2 = BasicConv2d(_ch(192, w), _ch(320, w), kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, _ch(192, w), kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(_ch(192, w), _ch(192, w), kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(_ch(192, w), _ch(192, w), kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(_ch(192, w), _ch(192, w), kernel_size=3, stride=2)
    self.out_channels = _ch(320, w) + _ch(192, w) + cin

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_1(x)
    for m in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = m(b7)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):

  def __init__(self, cin, w):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, _ch(320, w), kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, _ch(384, w), kernel_size=1)
    self.branch3x3_2a = BasicConv2d(_ch(384, w), _ch(384, w), kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(_ch(384, w), _ch(384, w), kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, _ch(448, w), kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(_ch(448, w), _ch(384, w), kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(_ch(384, w), _ch(384, w), kernel_size=(1, 3),
                                       padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(_ch(384, w), _ch(384, w), kernel_size=(3, 1),
                                       padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, _ch(192, w), kernel_size=1)
    self.out_channels = _ch(320, w) + 4 * _ch(384, w) + _ch(192, w)

  def forward(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
    return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):

  def __init__(self, cin, num_classes, w):
    super().__init__()
    self.conv0 = BasicConv2d(cin, _ch(128, w), kernel_size=1)
    self.conv1 = BasicConv2d(_ch(128, w), _ch(768, w), kernel_size=5)
    self.fc = nn.Linear(_ch(768, w), num_classes)

  def forward(self, x):
    x = self.conv1(self.conv0(F.avg_pool2d(x, 5, 3)))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Inception3(nn.Module):

  def __init__(self, width: float = 1.0, num_classes: int = 1000, aux_logits: bool = True,
               transform_input: bool = False):
    super().__init__()
    w = width
    self.transform_input = transform_input
    self.Conv2d_1a_3x3 = BasicConv2d(3, _ch(32, w), kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(_ch(32, w), _ch(32, w), kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(_ch(32, w), _ch(64, w), kernel_size=3, padding=1)
    self.maxpool1 = nn.MaxPool2d(3, 2)
    self.Conv2d_3b_1x1 = BasicConv2d(_ch(64, w), _ch(80, w), kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(_ch(80, w), _ch(192, w), kernel_size=3)
    self.maxpool2 = nn.MaxPool2d(3, 2)
    c = _ch(192, w)
    self.Mixed_5b = InceptionA(c, 32, w); c = self.Mixed_5b.out_channels  # noqa: E702
    self.Mixed_5c = InceptionA(c, 64, w); c = self.Mixed_5c.out_channels  # noqa: E702
    self.Mixed_5d = InceptionA(c, 64, w); c = self.Mixed_5d.out_channels  # noqa: E702
    self.Mixed_6a = InceptionB(c, w); c = self.Mixed_6a.out_channels  # noqa: E702
    self.Mixed_6b = InceptionC(c, 128, w); c = self.Mixed_6b.out_channels  # noqa: E702
    self.Mixed_6c = InceptionC(c, 160, w); c = self.Mixed_6c.out_channels  # noqa: E702
    self.Mixed_6d = InceptionC(c, 160, w); c = self.Mixed_6d.out_channels  # noqa: E702
    self.Mixed_6e = InceptionC(c, 192, w); c = self.Mixed_6e.out_channels  # noqa: E702
    self.AuxLogits = InceptionAux(c, num_classes, w) if aux_logits else None
    self.Mixed_7a = InceptionD(c, w); c = self.Mixed_7a.out_channels  # noqa: E702
    self.Mixed_7b = InceptionE(c, w); c = self.Mixed_7b.out_channels  # noqa: E702
    self.Mixed_7c = InceptionE(c, w); c = self.Mixed_7c.out_channels  # noqa: E702
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.dropout = nn.Dropout(0.5)
    self.fc = nn.Linear(c, num_classes)

  def _transform_input(self, x):
    if not self.transform_input:
      return x
    return torch.cat([x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                      x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                      x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], 1)

  _STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
           "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
           "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")

  def _forward_features(self, x):
    x = self._transform_input(x)
    for name in self._STEM:
      x = getattr(self, name)(x)
    aux = self.AuxLogits(x) if self.training and self.AuxLogits is not None else None
    x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
    return x, aux

  def features(self, x):
    return self._forward_features(x)[0]

  def forward(self, x):
    f, aux = self._forward_features(x)
    logits = self.fc(self.dropout(torch.flatten(self.avgpool(f), 1)))
    return InceptionOutputs(logits, aux) if aux is not None else logits


def inception_v3(width: float = 1.0, num_classes: int = 1000, aux_logits: bool = True,
                 transform_input: bool = False) -> Inception3:
  return Inception3(width, num_classes, aux_logits, transform_input)


BUILDERS = {"vgg16": vgg16, "vgg16_bn": vgg16_bn, "resnet50": resnet50,
            "inception_v3": inception_v3}


def build(arch: str, width: float = 1.0, **kwargs) -> nn.Module:
  """A torchvision-equivalent model by ctjax arch name."""
  return BUILDERS[arch](width=width, **kwargs)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
  """The map ctjax returns as "feature_map" (NCHW): VGG features / ResNet layer4 / Mixed_7c."""
  return model.features(x)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights *and* BN running statistics, scaled so activations stay O(1) in depth."""
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      fan_in = m.weight[0].numel()
      m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      if m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    elif isinstance(m, nn.BatchNorm2d):
      m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
      m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
      m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
      m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
      m.num_batches_tracked.fill_(100)
  return model


@torch.no_grad()
def reference_outputs(model: nn.Module, arch: str, x_nhwc, include_fc: bool = True) -> dict:
  """What ctjax's backbone returns, computed by torch: NHWC "feature_map", "pooled", "logits".

  "pooled" is VGG16's adaptive max-pool to 1×1 of `features(x)` (DrCT2) and the global
  average pool otherwise; "logits" is the full torchvision forward (eval mode).
  """
  x = torch.as_tensor(x_nhwc).permute(0, 3, 1, 2).contiguous()
  fmap = model.features(x)
  pooled = (F.adaptive_max_pool2d(fmap, 1) if arch.startswith("vgg")
            else F.adaptive_avg_pool2d(fmap, 1)).flatten(1)
  out = {"feature_map": fmap.permute(0, 2, 3, 1).numpy(), "pooled": pooled.numpy()}
  if include_fc:
    out["logits"] = model(x).numpy()
  return out


def relative_error(a, b) -> float:
  """‖a − b‖ / ‖b‖ over the whole array, in float64."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def run_once(fn, *args):
  """jit + run `fn(*args)` once with XLA's backend optimisation off (half the CPU compile time;
  the arithmetic is unchanged) — for tests and one-shot checks, not for timing."""
  import jax  # pylint: disable=g-import-not-at-top
  compiled = jax.jit(fn).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return compiled(*args)


def compare_with_torch(arch: str, *, width: float = 1.0, size: int = 224, batch: int = 1,
                       seed: int = 0, dtype=None, include_fc: bool = True,
                       fast_compile: bool = True) -> dict:
  """Random torchvision-named weights → convert → ctjax forward; relative error per output.

  Used by tests/models/ (parity ≤ 1e-4 in float32) and as a benchmark sanity check.
  `fast_compile` lowers XLA's backend optimisation level: on CPU it halves compile time, which
  dominates these one-shot forwards, and does not change the arithmetic being checked.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ctjax.models import backbones, pretrained

  kwargs = {"aux_logits": False} if arch == "inception_v3" else {}
  if arch.startswith("vgg") and not include_fc:
    kwargs = {"classifier": False}
  model = randomize_(build(arch, width=width, **kwargs), seed).eval()
  variables = pretrained.convert_torchvision(model.state_dict(), arch,
                                          include_fc=None if include_fc else False)
  x = np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)
  ref = reference_outputs(model, arch, x, include_fc)
  net = backbones.build_backbone(arch, width=width, include_fc=include_fc,
                               dtype=dtype or jnp.float32)
  compiled = jax.jit(net.apply).lower(variables, x).compile(
      compiler_options={"xla_backend_optimization_level": 0} if fast_compile else None)
  out = compiled(variables, x)
  return {k: relative_error(np.asarray(out[k], np.float32), ref[k]) for k in ref}


# --------------------------------------------------------------------------------------------
# Input preprocessing (the same maths as ctjax.data.windows, in torch)
# --------------------------------------------------------------------------------------------

class Preprocess(nn.Module):
  """int16 HU [..., H, W] → ImageNet-normalised windows [N, C, H, W] (float32)."""

  def __init__(self, windows="rsna3"):
    super().__init__()
    wins = resolve_windows(windows)
    levels = torch.tensor([lv for lv, _ in wins], dtype=torch.float32)
    widths = torch.tensor([w for _, w in wins], dtype=torch.float32)
    self.register_buffer("lo", (levels - widths / 2.0).view(1, -1, 1, 1))
    self.register_buffer("inv_w", (1.0 / widths).view(1, -1, 1, 1))
    self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

  def forward(self, hu: torch.Tensor) -> torch.Tensor:
    x = hu.reshape(-1, 1, hu.shape[-2], hu.shape[-1]).float()
    x = ((x - self.lo) * self.inv_w).clamp(0.0, 1.0)
    return (x - self.mean) / self.std


# --------------------------------------------------------------------------------------------
# Backbones: the torchvision rebuilds (above)
# --------------------------------------------------------------------------------------------

class Backbone(nn.Module):
  """A torchvision-equivalent backbone (`build`) returning its feature map.

  `channels_last` (set by `prepare_for_cuda`): the input is converted to NHWC memory layout
  before the first convolution, so that cuDNN runs its tensor-core NHWC kernels throughout."""

  channels_last: bool = False

  def __init__(self, arch: str, width: float = 1.0):
    super().__init__()
    from tests.support import torch_models
    self.arch = arch
    self.model = torch_models.build(arch, width)
    # Drop the classifier heads: never run, and they would only cost memory.
    for name in ("classifier", "fc", "AuxLogits"):
      if hasattr(self.model, name):
        setattr(self.model, name, nn.Identity())
    with torch.no_grad():
      self.out_channels = self.model.features(torch.zeros(1, 3, 64, 64)).shape[1]

  def forward(self, x):
    if self.channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    return self.model.features(x)


def prepare_for_cuda(net: nn.Module) -> nn.Module:
  """What a fair PyTorch peer does on an NVIDIA GPU: `cudnn.benchmark` (autotuned convolution
  algorithms, as XLA autotunes), TF32 allowed for float32 matmuls and convolutions (XLA's
  default precision for float32 there; bf16 figures use autocast), and channels_last (NHWC)
  weights and activations. Returns `net` (converted in place)."""
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  net = net.to(memory_format=torch.channels_last)
  for m in net.modules():
    if isinstance(m, Backbone):
      m.channels_last = True
  return net


# --------------------------------------------------------------------------------------------
# DrCT2 (ctjax.models.drct.DrCT, aps=True)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class DrCT2Spec:
  """The sizes of a DrCT2 instance; `benchmarks.drct2.torch_spec(config)` fills it from ctjax's
  config so that the two models agree."""
  num_labels: int = 6
  mkey: int = 16                # m_key (paper: 16)
  aps_size: int = 512           # APS bilinear zoom (paper: 224 → 512)
  width: float = 1.0            # backbone width multiplier
  gru_hidden: int = 256
  seq_dim: int = 256            # output dim of the dependency-learning Dense (eq. 4)
  fc_widths: Sequence[int] = (256, 128)   # the three FC layers: two hidden, then labels
  aps_fc_dim: int = 256         # APS: Dense after BatchNorm
  feature_attention_rescale: bool = False
  primary_size: int = 224       # input slices are resized to this (as ctjax's task does)
  windows: object = "rsna3"


class TorchGRUDependency(nn.Module):
  """BiGRU → Linear → tanh (ctjax.models.sequence.DependencyLearning)."""

  def __init__(self, in_dim: int, hidden: int, out_dim: int):
    super().__init__()
    self.gru = nn.GRU(in_dim, hidden, batch_first=True, bidirectional=True)
    self.out = nn.Linear(2 * hidden, out_dim)

  def forward(self, x):
    return torch.tanh(self.out(self.gru(x)[0]))


class Head(nn.Module):
  """Three FC layers, ReLU + dropout 0.5 after the first two (paper V.A.3); logits out."""

  def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
    super().__init__()
    dims = [in_dim, *hidden]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
      layers += [nn.Linear(a, b), nn.ReLU(inplace=True), nn.Dropout(0.5)]
    layers.append(nn.Linear(dims[-1], out_dim))
    self.net = nn.Sequential(*layers)

  def forward(self, x):
    return self.net(x)


class TorchDrCT2(nn.Module):
  """ctjax's DrCT2 in torch: one frozen VGG16 for both networks; primary = feature attention →
  BiGRU+Dense → slice attention → Σ_t w_t ŷ_t → head; APS = top-m_key slices (anatomical order)
  zoomed bilinearly → VGG16 → BatchNorm → Dense → BiGRU+Dense → mean → head; fusion = head on the
  sum of the two D-vectors. Also computes the "highlight" maps, as ctjax's predict does."""

  def __init__(self, spec: DrCT2Spec):
    super().__init__()
    self.spec = spec
    self.pre = Preprocess(spec.windows)
    self.backbone = Backbone("vgg16", spec.width)
    for p in self.backbone.parameters():
      p.requires_grad_(False)                              # frozen, as ctjax's stop_gradient
    c = self.backbone.out_channels
    self.dep = TorchGRUDependency(c, spec.gru_hidden, spec.seq_dim)
    self.slice_map = nn.Linear(spec.seq_dim, 1)
    self.head = Head(spec.seq_dim, spec.fc_widths, spec.num_labels)
    self.aps_bn = nn.BatchNorm1d(c)
    self.aps_fc = nn.Linear(c, spec.aps_fc_dim)
    self.aps_dep = TorchGRUDependency(spec.aps_fc_dim, spec.gru_hidden, spec.seq_dim)
    self.aps_head = Head(spec.seq_dim, spec.fc_widths, spec.num_labels)
    self.fusion_head = Head(spec.seq_dim, spec.fc_widths, spec.num_labels)

  def _encode(self, x, b, k):
    fmap = self.backbone(x)                                # [b*k, C, h, w]
    return torch.amax(fmap, dim=(2, 3)).view(b, k, -1), fmap

  def forward(self, hu: torch.Tensor) -> dict[str, torch.Tensor]:
    b, m = hu.shape[:2]
    s = self.spec
    x = self.pre(hu)                                       # [b*m, 3, H, W]
    if x.shape[-1] != s.primary_size or x.shape[-2] != s.primary_size:
      # jax.image.resize's bilinear antialiases when shrinking; so does this.
      x = F.interpolate(x, size=(s.primary_size, s.primary_size), mode="bilinear",
                        align_corners=False, antialias=True)
    z, fmap = self._encode(x, b, m)
    xs = x.view(b, m, *x.shape[1:])

    def aps_of(key):                                       # the key slices zoomed, encoded
      k = key.shape[1]
      xk = torch.gather(xs, 1, key.view(b, k, 1, 1, 1).expand(-1, -1, *xs.shape[2:]))
      xk = F.interpolate(xk.reshape(b * k, *xs.shape[2:]), size=(s.aps_size, s.aps_size),
                         mode="bilinear", align_corners=False)
      return self._encode(xk, b, k)[0]                     # [b, k, C]
    return self.heads(z, fmap.view(b, m, *fmap.shape[1:]), aps_of)

  def heads(self, z: torch.Tensor, fmap: torch.Tensor, aps_of) -> dict[str, torch.Tensor]:
    """Everything after the primary backbone: z [b, m, C], fmap [b, m, C, h, w];
    `aps_of(key [b, k])` gives the key slices' APS vectors [b, k, C]."""
    s = self.spec
    b = z.shape[0]
    fw = torch.softmax(z, dim=-1)
    xf = z * (fw * z.shape[-1] if s.feature_attention_rescale else fw)
    y = self.dep(xf)                                       # [b, m, D]
    sw = torch.softmax(self.slice_map(y)[..., 0], dim=-1)  # [b, m]
    primary = (y * sw[..., None]).sum(dim=1)               # [b, D]
    hl = F.relu(torch.einsum("bmchw,bmc->bmhw", fmap, fw))
    hl = hl / hl.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    key = torch.topk(sw, s.mkey, dim=-1).indices.sort(dim=-1).values   # anatomical order
    zk = aps_of(key).reshape(b, s.mkey, -1)
    zk = self.aps_bn(zk.transpose(1, 2)).transpose(1, 2)
    aps = self.aps_dep(self.aps_fc(zk)).mean(dim=1)
    return {"probs": torch.sigmoid(self.fusion_head(primary + aps)),
            "probs_primary": torch.sigmoid(self.head(primary)),
            "probs_aps": torch.sigmoid(self.aps_head(aps)),
            "slice_attention": sw, "feature_attention": fw, "highlight": hl,
            "key_indices": key}


def drct2_loss(out: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
  """Eq. (11): MSE(primary) + MSE(APS) + BCE(fusion)."""
  return (F.mse_loss(out["probs_primary"], labels) + F.mse_loss(out["probs_aps"], labels)
          + F.binary_cross_entropy(out["probs"].clamp(1e-7, 1 - 1e-7), labels))


# --------------------------------------------------------------------------------------------
# Blend-sign network
# --------------------------------------------------------------------------------------------

class TorchBlendNet(nn.Module):
  """Backbone's last block → GAP + Linear(3) and a two-conv detection head (5 channels)."""

  def __init__(self, backbone: str = "resnet50", width: float = 1.0, num_classes: int = 3,
               det_hidden: int = 256, windows="blend3"):
    super().__init__()
    self.pre = Preprocess(windows)
    self.backbone = Backbone(backbone, width)
    c = self.backbone.out_channels
    self.classifier = nn.Linear(c, num_classes)
    self.det_conv1 = nn.Conv2d(c, det_hidden, 3, padding=1)
    self.det_conv2 = nn.Conv2d(det_hidden, 5, 1)

  def forward(self, hu: torch.Tensor) -> dict[str, torch.Tensor]:
    fmap = self.backbone(self.pre(hu))
    logits = self.classifier(fmap.mean(dim=(2, 3)))
    det = self.det_conv2(F.relu(self.det_conv1(fmap)))
    return {"logits": logits, "det": det}


def blend_loss(out: dict[str, torch.Tensor], label: torch.Tensor,
               heat: torch.Tensor, class_weights: Optional[torch.Tensor] = None,
               lambda_det: float = 10.0) -> torch.Tensor:
  """Weighted CE + λ·(centre log-loss + smooth-L1 box loss): the paper's loss, to time backward."""
  ce = F.cross_entropy(out["logits"], label, weight=class_weights)
  centre = F.binary_cross_entropy_with_logits(out["det"][:, 0], heat)
  box = F.smooth_l1_loss(out["det"][:, 1:], torch.zeros_like(out["det"][:, 1:]))
  return ce + lambda_det * (centre + box)


# --------------------------------------------------------------------------------------------
# FLOP counting
# --------------------------------------------------------------------------------------------

def torch_flops(fn, *args) -> float:
  """FLOPs of `fn(*args)` from torch's FlopCounterMode (matmuls and convs, 2 per MAC)."""
  from torch.utils.flop_counter import FlopCounterMode
  counter = FlopCounterMode(display=False)
  with counter, torch.no_grad():
    fn(*args)
  return float(counter.get_total_flops())
