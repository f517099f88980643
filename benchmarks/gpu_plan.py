"""Sizes, batches and random inputs of `python -m benchmarks.gpu`, shared by both frameworks.

numpy and the standard library only: the PyTorch peer (benchmarks/gpu_torch.py) imports this
module and must never import jax (a JAX backend in that process would take GPU memory).
The model sizes are the papers' and the configs' (ctjax/configs/drct.py, ctjax/configs/blend.py),
which the JAX side builds its programs from (`benchmarks.gpu.drct2_config`);
tests/benchmarks/test_gpu.py checks that they still agree with those configs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

# Prefix of the PyTorch peer's reply lines on its stdout (anything else there is passed on).
TORCH_MARK = "@@torch "
RSNA_NUM_LABELS = 6   # ctjax.data.labels.RSNA_LABELS: any, epidural, … (DrCT2 paper, Table 1)


@dataclasses.dataclass(frozen=True)
class DrCT2Sizes:
  """DrCT2 as configs/drct2_rsna.py builds it (DrCT2 paper, sections V and VI.A)."""
  num_slices: int = 28          # VI.A.1: m = 28 sampled slices (RSNA)
  image_size: int = 224         # V.A: the cache / HU resolution fed to the primary network
  primary_size: int = 224       # V.A: VGG16 input
  mkey: int = 16                # VI.A.3: m_key = 16 key slices
  aps_size: int = 512           # V.B: key slices zoomed 224 → 512
  width: float = 1.0            # VGG16 width multiplier (1 = the paper's VGG16)
  gru_hidden: int = 256         # not given in the paper (ctjax/configs/drct.py)
  seq_dim: int = 256
  fc_widths: tuple = (256, 128)
  aps_fc_dim: int = 256
  num_labels: int = RSNA_NUM_LABELS
  dropout: float = 0.5          # V.A.3
  windows: str = "rsna3"
  # Optimizer (VI.A.1): Adam, APS 3e-4, primary and fusion 5e-4.
  lr_primary: float = 5e-4
  lr_aps: float = 3e-4
  lr_fusion: float = 5e-4


@dataclasses.dataclass(frozen=True)
class BlendSizes:
  """The blend-sign network as configs/blend_resnet50.py (variant wce_at) builds it."""
  image_size: int = 512         # blend-sign paper: 512 × 512 slices
  width: float = 1.0            # ResNet-50 width multiplier
  det_hidden: int = 256         # detection branch's first conv (CenterNet head)
  num_classes: int = 3          # non-ICH, normal ICH, blend sign
  max_boxes: int = 8
  windows: str = "blend3"
  # Loss (paper, "Classification branch" / "Optimization"; CenterNet focal loss).
  class_weights: tuple = (1.0, 2.0, 20.0)
  cls_weight: float = 1.0
  det_weight: float = 10.0
  focal_alpha: float = 2.0
  focal_beta: float = 4.0
  min_overlap: float = 0.7
  det_normalize: str = "pixels"
  # SGD (paper, "Training details"): base lr 0.01, poly power 0.9, momentum 0.9, wd 5e-4.
  learning_rate: float = 0.01
  power: float = 0.9
  momentum: float = 0.9
  weight_decay: float = 5e-4


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything one run measures; `GPU` is the device run, `SMOKE` its CPU rehearsal."""
  matmul_n: int
  matmul_iters: int             # dependent products per timed call (pipelined peak)
  hbm_mib: int                  # buffer of the copy-bandwidth figure
  hbm_iters: int
  drct: DrCT2Sizes
  chunk: int                    # slices per backbone call inside the DrCT2 programs
  infer_batches: tuple          # scans per DrCT2 predict call: the first that fits is kept
  store_chunks: tuple           # slices per feature-store call
  store_train_batch: int        # DrCT2 train step from cached features (paper: 256)
  e2e_batches: tuple            # DrCT2 end-to-end train step (paper's batch first)
  blend: BlendSizes
  blend_train: tuple            # (dtype tag, batch) of each training figure
  blend_infer_batch: int
  h2d_batch: int                # DrCT2 scans per host → device batch
  gru: tuple                    # (batch, steps, hidden) of the BiGRU kernel check
  latency_calls: int            # DrCT2 batch-1 calls behind p50/p90 (from HU on the device)
  dicom_calls: int              # the same from a DICOM series on disk
  dicom_size: int               # that series' pixels (a phantom from ctjax.data.phantom)
  warmup: int
  repeats: int
  max_seconds: float            # bound on each figure's timed phase (≥ 1 timed call)
  torch_timeout_s: float        # one PyTorch peer request
  compiler_options: Optional[dict] = None
  smoke: bool = False


GPU = Plan(
    matmul_n=8192, matmul_iters=10, hbm_mib=2048, hbm_iters=10,
    drct=DrCT2Sizes(), chunk=64, infer_batches=(32, 16, 8), store_chunks=(128, 64, 32),
    store_train_batch=256, e2e_batches=(256, 128, 64),
    blend=BlendSizes(),
    # The first is the headline figure (the paper's recipe at batch 64, bf16).
    blend_train=(("bf16", 64), ("bf16", 16), ("tf32", 64), ("tf32", 16)),
    blend_infer_batch=64, h2d_batch=32,
    # DrCT2 V.A / VI.A: batch 256, m = 28 slices, GRU hidden 256 (ctjax/configs/drct.py).
    gru=(256, 28, 256), latency_calls=50, dicom_calls=10, dicom_size=512,
    warmup=2, repeats=10, max_seconds=3.0, torch_timeout_s=150.0)

# Tiny sizes on a CPU: every code path of GPU (chunked maps with padding, two-phase APS,
# fallbacks, the torch peer) in well under a minute. XLA's backend optimisation is off
# (halves the CPU compile time; the arithmetic is unchanged).
SMOKE = Plan(
    matmul_n=128, matmul_iters=4, hbm_mib=1, hbm_iters=4,
    drct=DrCT2Sizes(num_slices=4, image_size=32, primary_size=32, mkey=2, aps_size=48,
                    width=1 / 32, gru_hidden=8, seq_dim=8, fc_widths=(8, 8), aps_fc_dim=8),
    chunk=3, infer_batches=(2, 1), store_chunks=(6, 3), store_train_batch=4, e2e_batches=(2, 1),
    blend=BlendSizes(image_size=32, width=1 / 32, det_hidden=8),
    # One training figure: a ResNet-50 step compiles in 5-20 s on a CPU whatever its size;
    # the float32 path differs only in the dtype (rehearsed by drct2/infer/tf32).
    blend_train=(("bf16", 2),),
    blend_infer_batch=4, h2d_batch=2,
    gru=(4, 5, 8), latency_calls=5, dicom_calls=2, dicom_size=48,
    warmup=1, repeats=2, max_seconds=0.5, torch_timeout_s=120.0,
    compiler_options={"xla_backend_optimization_level": 0}, smoke=True)


def plan_dict(plan: Plan) -> dict[str, Any]:
  return dataclasses.asdict(plan)


# --------------------------------------------------------------------------------------------
# Random inputs (no phantom generation): head-CT-like HU, never zeros
# --------------------------------------------------------------------------------------------

def random_hu(shape: tuple, seed: int = 0) -> np.ndarray:
  """int16 HU around soft tissue (mean 30, sd 300), clipped to the cache's [-1024, 3071]."""
  rng = np.random.default_rng(seed)
  return rng.normal(30.0, 300.0, shape).clip(-1024, 3071).astype(np.int16)


def drct_batch(s: DrCT2Sizes, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """HU [B, m, H, W] int16 and multi-label targets [B, L] (ARCHITECTURE.md shapes)."""
  rng = np.random.default_rng(seed + 1)
  return {"hu": random_hu((batch, s.num_slices, s.image_size, s.image_size), seed),
          "labels": rng.integers(0, 2, (batch, s.num_labels)).astype(np.float32)}


def drct_store_batch(s: DrCT2Sizes, batch: int, channels: int, fmap_hw: int,
                     seed: int = 0) -> dict[str, np.ndarray]:
  """Cached frozen-backbone rows of a batch (float32, as the feature cache stores them):
  pooled [B, m, C], feature map [B, m, h, w, C], APS pooled [B, m, C]; non-negative (ReLU
  outputs) and never zero."""
  rng = np.random.default_rng(seed)
  m = s.num_slices
  return {"pooled": rng.gamma(2.0, 0.5, (batch, m, channels)).astype(np.float32),
          "feature_map": rng.gamma(2.0, 0.5, (batch, m, fmap_hw, fmap_hw, channels)
                                   ).astype(np.float32),
          "aps_pooled": rng.gamma(2.0, 0.5, (batch, m, channels)).astype(np.float32),
          "labels": rng.integers(0, 2, (batch, s.num_labels)).astype(np.float32)}


def blend_batch(s: BlendSizes, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A blend batch (ARCHITECTURE.md shapes): one box on each haemorrhage slice."""
  rng = np.random.default_rng(seed + 1)
  size = s.image_size
  label = rng.integers(0, 3, batch).astype(np.int32)
  boxes = np.full((batch, s.max_boxes, 4), -1.0, np.float32)
  num_boxes = (label > 0).astype(np.int32)
  for i in np.nonzero(label > 0)[0]:
    x0, y0 = rng.uniform(0.2, 0.6, 2) * size
    boxes[i, 0] = (x0, y0, x0 + 0.2 * size, y0 + 0.15 * size)
  return {"hu": random_hu((batch, size, size), seed), "label": label, "boxes": boxes,
          "num_boxes": num_boxes, "valid": np.ones(batch, bool)}


def vgg_fmap_hw(size: int) -> int:
  """VGG16's feature-map side at input `size` (five 2×2 max-pools)."""
  for _ in range(5):
    size //= 2
  return size


def scale_channels(channels: int, width: float) -> int:
  """ctjax.models.vgg.scale_channels (repeated: this module must not import jax)."""
  return max(1, int(round(channels * width)))
