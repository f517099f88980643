"""DrCT2 and the blend-sign network in PyTorch (the papers' framework), for side-by-side timing.

Same architecture and sizes as ctjax's models (channel widths via the same `scale_channels`
rule, VGG16 conv stack + adaptive max-pool, BiGRU, attention, heads), same on-device input
preprocessing (HU → windows → ImageNet normalisation inside the timed call), so the two frameworks
do the same work; `tests/benchmarks/test_run.py` checks this by comparing the torch FLOP count
(`torch.utils.flop_counter`) with XLA's count of the ctjax model.

The backbones are the torchvision rebuilds (`benchmarks/torch_models.py`; torchvision
itself cannot be installed beside torch 2.13 here), whose parity with ctjax's is tested there.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctjax.data.windows import IMAGENET_MEAN, IMAGENET_STD, resolve_windows

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
# Backbones: the torchvision rebuilds (benchmarks/torch_models.py)
# --------------------------------------------------------------------------------------------

class Backbone(nn.Module):
  """A torchvision-equivalent backbone (C's `torch_models.build`) returning its feature map.

  `channels_last` (set by `prepare_for_cuda`): the input is converted to NHWC memory layout
  before the first convolution, so that cuDNN runs its tensor-core NHWC kernels throughout."""

  channels_last: bool = False

  def __init__(self, arch: str, width: float = 1.0):
    super().__init__()
    from benchmarks import torch_models
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
    fw = torch.softmax(z, dim=-1)
    xf = z * (fw * z.shape[-1] if s.feature_attention_rescale else fw)
    y = self.dep(xf)                                       # [b, m, D]
    sw = torch.softmax(self.slice_map(y)[..., 0], dim=-1)  # [b, m]
    primary = (y * sw[..., None]).sum(dim=1)               # [b, D]
    fmap = fmap.view(b, m, *fmap.shape[1:])
    hl = F.relu(torch.einsum("bmchw,bmc->bmhw", fmap, fw))
    hl = hl / hl.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    k = s.mkey
    key = torch.topk(sw, k, dim=-1).indices.sort(dim=-1).values   # [b, k], anatomical order
    xs = x.view(b, m, *x.shape[1:])
    xk = torch.gather(xs, 1, key.view(b, k, 1, 1, 1).expand(-1, -1, *xs.shape[2:]))
    xk = F.interpolate(xk.reshape(b * k, *xs.shape[2:]), size=(s.aps_size, s.aps_size),
                       mode="bilinear", align_corners=False)
    zk, _ = self._encode(xk, b, k)                         # [b, k, C]
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
