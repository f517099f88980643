"""Blend-sign network throughput: inference and training slices/s (512×512 in `full`), beside
PyTorch (`tests.support.torch_models.TorchBlendNet`, same backbone, heads and sizes).

The training step is the trainer's (Task.loss_fn: weighted CE + λ2·detection loss, SGD with
momentum and weight decay, BatchNorm in training mode); on-device augmentation is switched off
for both frameworks so that the two steps do the same arithmetic.
"""

from __future__ import annotations

import logging
from typing import Optional

import jax
import numpy as np

from benchmarks import common
from benchmarks.common import Context, Record
from benchmarks.drct2 import _guard

log = logging.getLogger("benchmarks.blend")


def blend_config(ctx: Context, *, dtype: str = "float32", batch_size: Optional[int] = None):
  s = ctx.settings["blend"]
  config = common.load_config(s.get("config", "blend_resnet50"), s.get("config_arg",
                                                                       "variant=wce_at"))
  values = {"data.image_size": s["image_size"], "model.backbone_width": s["width"],
            "model.backbone": s["backbone"], "model.backbone_weights": "", "model.dtype": dtype,
            "train.batch_size": batch_size or s["train_batch"],
            "data.augment.enabled": False}
  values.update(s.get("overrides", {}))
  return common.override(config, values)


def make_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A blend batch (ARCHITECTURE.md shapes): one box on each haemorrhage slice."""
  rng = np.random.default_rng(seed)
  size = config.data.image_size
  k = config.data.get("max_boxes", 8)
  hu = rng.normal(30.0, 300.0, (batch_size, size, size)).clip(-1024, 3071).astype(np.int16)
  label = rng.integers(0, 3, batch_size).astype(np.int32)
  boxes = np.full((batch_size, k, 4), -1.0, np.float32)
  num_boxes = (label > 0).astype(np.int32)
  for i in np.nonzero(label > 0)[0]:
    x0, y0 = rng.uniform(0.2, 0.6, 2) * size
    boxes[i, 0] = (x0, y0, x0 + 0.2 * size, y0 + 0.15 * size)
  return {"hu": hu, "label": label, "boxes": boxes, "num_boxes": num_boxes,
          "valid": np.ones(batch_size, bool), "example_index": np.arange(batch_size,
                                                                        dtype=np.int32)}


def build_torch(config):
  import torch
  from tests.support.torch_models import TorchBlendNet
  torch.manual_seed(0)
  mc = config.model
  return common.torch_prepare(TorchBlendNet(mc.backbone, mc.backbone_width, mc.num_classes,
                                           mc.det_hidden, config.data.get("windows", "blend3"))
                              .to(common.torch_device()))


def _centre_targets(batch, det_hw, size) -> np.ndarray:
  """A centre heat map per slice (1 at the box centre's cell) for the torch loss."""
  heat = np.zeros((batch["hu"].shape[0],) + tuple(det_hw), np.float32)
  stride = size / det_hw[0]
  for i in range(heat.shape[0]):
    for b in batch["boxes"][i, :batch["num_boxes"][i]]:
      cx, cy = (b[0] + b[2]) / 2 / stride, (b[1] + b[3]) / 2 / stride
      heat[i, min(int(cy), det_hw[0] - 1), min(int(cx), det_hw[1] - 1)] = 1.0
  return heat


def infer(ctx: Context, dtype: str = "float32") -> list[Record]:
  s = ctx.settings["blend"]
  config = blend_config(ctx, dtype=dtype)
  bs = s["infer_batch"]
  m = common.build_ctjax(config)
  batch = common.to_device(make_batch(config, bs))
  t, flops = ctx.time_predict(m, batch)
  torch_s = None
  if ctx.with_torch:
    import torch
    net = build_torch(config).eval()
    hu = torch.from_numpy(np.array(batch["hu"])).to(common.torch_device())

    def fn():
      with torch.inference_mode(), common.torch_autocast(dtype):
        return net(hu)
    torch_s = ctx.time_torch(fn).median
  tag = "fp32" if dtype == "float32" else "bf16"
  return [common.speed_record(f"blend/infer/{tag}", seconds=t.median, items=bs,
                              unit="slices/s", torch_seconds=torch_s, flops=flops,
                              peak=ctx.peak(dtype), batch=bs, image_size=config.data.image_size,
                              backbone=config.model.backbone, width=config.model.backbone_width,
                              timed_calls=t.n, compile_s=t.compile_s,
                              first_call_s=t.warmup_s)]


def train(ctx: Context, dtype: str = "float32") -> list[Record]:
  config = blend_config(ctx, dtype=dtype)
  bs = config.train.batch_size
  m = common.build_ctjax(config)
  host = make_batch(config, bs)
  batch = common.to_device(host)
  rng = jax.random.PRNGKey(1)
  compiled = common.aot_compile(m.train_step, m.state, batch, rng)
  train_fn, flops = compiled.executable, compiled.flops
  holder = {"state": m.state}

  def step():
    holder["state"], metrics = train_fn(holder["state"], batch, rng)
    return metrics
  t = ctx.time(step)
  torch_s = None
  if ctx.with_torch:
    import torch
    from tests.support.torch_models import blend_loss
    dev = common.torch_device()
    net = build_torch(config).train()
    oc = config.optimizer
    opt = torch.optim.SGD(net.parameters(), lr=oc.lr, momentum=oc.momentum,
                          weight_decay=oc.weight_decay)
    hu = torch.from_numpy(host["hu"]).to(dev)
    label = torch.from_numpy(host["label"]).long().to(dev)
    with torch.no_grad():
      det_hw = net(hu[:1])["det"].shape[2:]
    heat = torch.from_numpy(_centre_targets(host, det_hw, config.data.image_size)).to(dev)
    weights = torch.tensor(config.loss.class_weights, dtype=torch.float32, device=dev)

    def fn():
      opt.zero_grad(set_to_none=True)
      with common.torch_autocast(dtype):
        out = net(hu)
      loss = blend_loss({k: v.float() for k, v in out.items()}, label, heat, weights,
                        config.loss.det_weight)
      loss.backward()
      opt.step()
      return loss.item()
    torch_s = ctx.time_torch(fn).median
  tag = "fp32" if dtype == "float32" else "bf16"
  return [common.speed_record(f"blend/train/{tag}", seconds=t.median, items=bs,
                              unit="slices/s", torch_seconds=torch_s, flops=flops,
                              peak=ctx.peak(dtype), batch=bs, image_size=config.data.image_size,
                              backbone=config.model.backbone, width=config.model.backbone_width,
                              step_s=t.median, timed_calls=t.n, compile_s=compiled.total_s,
                              first_call_s=t.warmup_s)]


def run(ctx: Context) -> list[Record]:
  figures = ctx.settings["blend"].get("figures", ("infer", "train"))
  dtypes = ctx.settings["blend"].get("dtypes", ("float32",))
  records: list[Record] = []
  for dtype in dtypes:
    if "infer" in figures:
      records += _guard(ctx, f"blend/infer/{dtype}", infer, ctx, dtype)
    if "train" in figures:
      records += _guard(ctx, f"blend/train/{dtype}", train, ctx, dtype)
  return records
