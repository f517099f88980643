"""torchvision's VGG16(-BN), ResNet-50 and Inception v3 rebuilt in plain `torch.nn`.

torchvision cannot be installed beside torch 2.13.0 here, so the parity tests
(tests/models/) and the throughput benchmarks (benchmarks/backbones.py) use these builders.
Module trees and therefore `state_dict()` keys are torchvision's exactly ("features.0.weight",
"layer1.0.downsample.1.running_var", "Mixed_5b.branch1x1.conv.weight", …), so a real
torchvision checkpoint loads into them with `load_state_dict(strict=True)`.
`width` scales channels with the same rule as ctjax (`ctjax.models.vgg.scale_channels`).
"""

from __future__ import annotations

import collections

import torch
from torch import nn
import torch.nn.functional as F

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
  from ctjax.models import weights  # pylint: disable=g-import-not-at-top

  kwargs = {"aux_logits": False} if arch == "inception_v3" else {}
  if arch.startswith("vgg") and not include_fc:
    kwargs = {"classifier": False}
  model = randomize_(build(arch, width=width, **kwargs), seed).eval()
  variables = weights.convert_torchvision(model.state_dict(), arch,
                                          include_fc=None if include_fc else False)
  x = np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)
  ref = reference_outputs(model, arch, x, include_fc)
  net = weights.build_backbone(arch, width=width, include_fc=include_fc,
                               dtype=dtype or jnp.float32)
  compiled = jax.jit(net.apply).lower(variables, x).compile(
      compiler_options={"xla_backend_optimization_level": 0} if fast_compile else None)
  out = compiled(variables, x)
  return {k: relative_error(np.asarray(out[k], np.float32), ref[k]) for k in ref}
