"""The PyTorch peer of `python -m benchmarks.gpu`: one process, one request per line.

  python -m benchmarks.gpu_torch --device cuda     # started by benchmarks/gpu.py, not by hand

Reads JSON requests from stdin ({"id", "figure", "args"}), answers each with one line
`@@torch {json}` on stdout ({"id", "ok", "seconds", "items", "times", ...} or {"ok": false,
"error", "oom"}). It runs in its own process so that the two frameworks never share an
allocator or a CUDA context, and it never imports jax (a JAX backend here would take GPU
memory). The peer is the fair one: the same models (tests/support/torch_models.py,
the PyTorch references the tests check ctjax against) at the same sizes, `cudnn.benchmark`, channels_last, bf16 autocast
for bf16 figures and TF32 for float32 ones (`torch_models.prepare_for_cuda`), and the same
chunking of DrCT2's frozen backbone over slices as the JAX program.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import gpu_plan
from tests.support import torch_models as tr

MARK = gpu_plan.TORCH_MARK
DEVICE = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def sync() -> None:
  if DEVICE.type == "cuda":
    torch.cuda.synchronize()


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, max_seconds: float) -> dict:
  """Warm-up calls (cudnn.benchmark autotunes here), then ≤ `repeats` timed calls, each from a
  synchronised start to a synchronised end; the median is the figure."""
  sync()
  t0 = time.perf_counter()
  for _ in range(max(warmup, 0)):
    fn()
  sync()
  warmup_s = time.perf_counter() - t0
  times = []
  start = time.perf_counter()
  for _ in range(max(repeats, 1)):
    t = time.perf_counter()
    fn()
    sync()
    times.append(time.perf_counter() - t)
    if time.perf_counter() - start >= max_seconds:
      break
  return {"seconds": statistics.median(times), "times": times, "warmup_s": warmup_s}


def autocast(tag: str):
  if tag == "bf16":
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
  return contextlib.nullcontext()


def prepare(net: torch.nn.Module) -> torch.nn.Module:
  net = net.to(DEVICE)
  return tr.prepare_for_cuda(net) if DEVICE.type == "cuda" else net


def tensor(a: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE)


# --------------------------------------------------------------------------------------------
# DrCT2 with the frozen backbone chunked over slices (as the JAX program)
# --------------------------------------------------------------------------------------------

class ChunkedTorchDrCT2(tr.TorchDrCT2):
  """`TorchDrCT2` whose frozen VGG16 (and its preprocessing and zoom) runs `chunk` slices at a
  time, and only on the m_key key slices for the APS network; `forward_store` runs the heads
  on cached backbone rows. Same outputs as `TorchDrCT2.forward` (tests/benchmarks/test_gpu.py)."""

  def __init__(self, spec: tr.DrCT2Spec, chunk: int):
    super().__init__(spec)
    self.chunk = max(1, int(chunk))

  def _primary_input(self, hu: torch.Tensor) -> torch.Tensor:
    s = self.spec
    x = self.pre(hu)
    if x.shape[-1] != s.primary_size or x.shape[-2] != s.primary_size:
      x = F.interpolate(x, size=(s.primary_size, s.primary_size), mode="bilinear",
                        align_corners=False, antialias=True)
    return x

  def _chunks(self, hu: torch.Tensor, fn: Callable) -> list:
    with torch.no_grad():   # frozen backbone: no graph through it
      return [fn(hu[i:i + self.chunk]) for i in range(0, hu.shape[0], self.chunk)]

  def encode_primary(self, hu_slices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HU [N, H, W] → (pooled [N, C], feature map [N, C, h, w])."""
    fmaps = self._chunks(hu_slices, lambda h: self.backbone(self._primary_input(h)))
    fmap = torch.cat(fmaps)
    return torch.amax(fmap, dim=(2, 3)), fmap

  def encode_aps(self, hu_slices: torch.Tensor) -> torch.Tensor:
    """HU key slices [N, H, W] → APS pooled [N, C] (zoomed to aps_size, eq. 8)."""
    s = self.spec

    def one(h):
      x = F.interpolate(self._primary_input(h), size=(s.aps_size, s.aps_size),
                        mode="bilinear", align_corners=False)
      return torch.amax(self.backbone(x), dim=(2, 3))
    return torch.cat(self._chunks(hu_slices, one))

  def forward(self, hu: torch.Tensor) -> dict:
    b, m = hu.shape[:2]
    z, fmap = self.encode_primary(hu.reshape(b * m, *hu.shape[2:]))
    z, fmap = z.view(b, m, -1), fmap.view(b, m, *fmap.shape[1:])

    def aps_of(key):
      keys = torch.gather(hu, 1, key.view(b, -1, 1, 1).expand(-1, -1, *hu.shape[2:]))
      return self.encode_aps(keys.reshape(-1, *hu.shape[2:]))
    return self.heads(z, fmap, aps_of)

  def forward_store(self, pooled: torch.Tensor, fmap: torch.Tensor,
                    aps_pooled: torch.Tensor) -> dict:
    """The heads on cached rows: pooled [b, m, C], fmap [b, m, C, h, w], aps_pooled [b, m, C]."""
    c = aps_pooled.shape[-1]
    return self.heads(pooled, fmap,
                      lambda key: torch.gather(aps_pooled, 1, key[..., None].expand(-1, -1, c)))


def drct_spec(s: gpu_plan.DrCT2Sizes) -> tr.DrCT2Spec:
  return tr.DrCT2Spec(num_labels=s.num_labels, mkey=s.mkey, aps_size=s.aps_size, width=s.width,
                      gru_hidden=s.gru_hidden, seq_dim=s.seq_dim, fc_widths=tuple(s.fc_widths),
                      aps_fc_dim=s.aps_fc_dim, primary_size=s.primary_size, windows=s.windows)


def _drct_net(args: dict, train: bool) -> ChunkedTorchDrCT2:
  torch.manual_seed(0)
  net = ChunkedTorchDrCT2(drct_spec(_drct_sizes(args)), args["chunk"])
  net = prepare(net)
  return net.train() if train else net.eval()


def _drct_sizes(args: dict) -> gpu_plan.DrCT2Sizes:
  d = dict(args["drct"])
  d["fc_widths"] = tuple(d["fc_widths"])
  return gpu_plan.DrCT2Sizes(**d)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def fig_env(args: dict) -> dict:
  info = {"torch": torch.__version__, "cuda": torch.version.cuda,
          "cudnn": torch.backends.cudnn.version(), "device": str(DEVICE),
          "threads": torch.get_num_threads()}
  if DEVICE.type == "cuda":
    p = torch.cuda.get_device_properties(0)
    info.update(name=p.name, sm_count=p.multi_processor_count, memory_bytes=p.total_memory,
                capability=f"{p.major}.{p.minor}")
  return {"seconds": None, "items": None, "extra": info}


def fig_matmul(args: dict) -> dict:
  n, iters, tag = args["n"], args["iters"], args["tag"]
  dtype = torch.bfloat16 if tag == "bf16" else torch.float32
  g = torch.Generator().manual_seed(0)
  a = torch.randn(n, n, generator=g).to(DEVICE, dtype)
  b = (torch.randn(n, n, generator=g) / n ** 0.5).to(DEVICE, dtype)

  def chain():
    y = a
    for _ in range(iters):
      y = y @ b
    return y
  with torch.no_grad():
    t = time_calls(chain, args["warmup"], args["repeats"], args["max_seconds"])
  return dict(t, items=2.0 * n ** 3 * iters)


def fig_hbm(args: dict) -> dict:
  numel = args["nbytes"] // 4
  x = torch.randn(numel, generator=torch.Generator().manual_seed(0)).to(DEVICE)

  def chain():
    for _ in range(args["iters"]):
      x.neg_()
  t = time_calls(chain, args["warmup"], args["repeats"], args["max_seconds"])
  return dict(t, items=2.0 * numel * 4 * args["iters"])


def fig_drct2_infer(args: dict) -> dict:
  s = _drct_sizes(args)
  net = _drct_net(args, train=False)
  hu = tensor(gpu_plan.drct_batch(s, args["batch"])["hu"])

  def fn():
    with torch.inference_mode(), autocast(args["tag"]):
      return net(hu)
  return dict(time_calls(fn, args["warmup"], args["repeats"], args["max_seconds"]),
              items=args["batch"])


def fig_featstore(args: dict) -> dict:
  s = _drct_sizes(args)
  net = _drct_net(dict(args, chunk=args["batch"]), train=False)
  hu = tensor(gpu_plan.random_hu((args["batch"], s.image_size, s.image_size)))

  def fn():
    with torch.inference_mode(), autocast(args["tag"]):
      pooled, fmap = net.encode_primary(hu)
      return pooled, fmap, net.encode_aps(hu)
  return dict(time_calls(fn, args["warmup"], args["repeats"], args["max_seconds"]),
              items=args["batch"])


def _adam(net: torch.nn.Module, s: gpu_plan.DrCT2Sizes) -> torch.optim.Optimizer:
  groups = [{"params": [p for n, p in net.named_parameters() if p.requires_grad
                        and n.startswith(prefix)], "lr": lr}
            for prefix, lr in (("aps", s.lr_aps), ("dep", s.lr_primary), ("slice_map", s.lr_primary),
                               ("head", s.lr_primary), ("fusion", s.lr_fusion))]
  return torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.999))


def _drct_step(net, opt, forward, labels, tag):
  opt.zero_grad(set_to_none=True)
  with autocast(tag):
    out = forward()
  loss = tr.drct2_loss({k: v.float() for k, v in out.items() if k.startswith("probs")}, labels)
  loss.backward()
  opt.step()
  return loss


def fig_drct2_train_store(args: dict) -> dict:
  s = _drct_sizes(args)
  net = _drct_net(args, train=True)
  opt = _adam(net, s)
  c = gpu_plan.scale_channels(512, s.width)
  hw = gpu_plan.vgg_fmap_hw(s.primary_size)
  b = gpu_plan.drct_store_batch(s, args["batch"], c, hw)
  pooled, aps = tensor(b["pooled"]), tensor(b["aps_pooled"])
  fmap = tensor(b["feature_map"]).permute(0, 1, 4, 2, 3)     # [b, m, C, h, w] (a view)
  labels = tensor(b["labels"])
  t = time_calls(lambda: _drct_step(net, opt, lambda: net.forward_store(pooled, fmap, aps),
                                    labels, args["tag"]),
                 args["warmup"], args["repeats"], args["max_seconds"])
  return dict(t, items=args["batch"])


def fig_drct2_train_e2e(args: dict) -> dict:
  s = _drct_sizes(args)
  net = _drct_net(args, train=True)
  opt = _adam(net, s)
  b = gpu_plan.drct_batch(s, args["batch"])
  hu, labels = tensor(b["hu"]), tensor(b["labels"])
  t = time_calls(lambda: _drct_step(net, opt, lambda: net(hu), labels, args["tag"]),
                 args["warmup"], args["repeats"], args["max_seconds"])
  return dict(t, items=args["batch"])


def _blend_net(s: gpu_plan.BlendSizes) -> torch.nn.Module:
  torch.manual_seed(0)
  return prepare(tr.TorchBlendNet("resnet50", s.width, s.num_classes, s.det_hidden, s.windows))


def _centre_heat(batch: dict, det_hw: tuple, size: int) -> np.ndarray:
  """1 at each box centre's cell (the torch loss's target; see torch_models.blend_loss)."""
  heat = np.zeros((batch["hu"].shape[0],) + tuple(det_hw), np.float32)
  stride = size / det_hw[0]
  for i in range(heat.shape[0]):
    for bx in batch["boxes"][i, :batch["num_boxes"][i]]:
      cx, cy = (bx[0] + bx[2]) / 2 / stride, (bx[1] + bx[3]) / 2 / stride
      heat[i, min(int(cy), det_hw[0] - 1), min(int(cx), det_hw[1] - 1)] = 1.0
  return heat


def fig_blend_train(args: dict) -> dict:
  s = gpu_plan.BlendSizes(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in args["blend"].items()})
  net = _blend_net(s).eval()
  opt = torch.optim.SGD(net.parameters(), lr=s.learning_rate, momentum=s.momentum,
                        weight_decay=s.weight_decay)
  host = gpu_plan.blend_batch(s, args["batch"])
  hu, label = tensor(host["hu"]), tensor(host["label"]).long()
  with torch.no_grad():
    det_hw = net(hu[:1])["det"].shape[2:]   # eval mode: BatchNorm takes one slice
  net.train()
  heat = tensor(_centre_heat(host, det_hw, s.image_size))
  weights = torch.tensor(s.class_weights, dtype=torch.float32, device=DEVICE)

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast(args["tag"]):
      out = net(hu)
    loss = tr.blend_loss({k: v.float() for k, v in out.items()}, label, heat, weights,
                         s.det_weight)
    loss.backward()
    opt.step()
    return loss
  return dict(time_calls(step, args["warmup"], args["repeats"], args["max_seconds"]),
              items=args["batch"])


def fig_blend_infer(args: dict) -> dict:
  s = gpu_plan.BlendSizes(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in args["blend"].items()})
  net = _blend_net(s).eval()
  hu = tensor(gpu_plan.blend_batch(s, args["batch"])["hu"])

  def fn():
    with torch.inference_mode(), autocast(args["tag"]):
      return net(hu)
  return dict(time_calls(fn, args["warmup"], args["repeats"], args["max_seconds"]),
              items=args["batch"])


def fig_h2d(args: dict) -> dict:
  s = _drct_sizes(args)
  hu = gpu_plan.drct_batch(s, args["batch"])["hu"]

  def fn():
    return torch.from_numpy(hu).to(DEVICE)
  return dict(time_calls(fn, args["warmup"], args["repeats"], args["max_seconds"]),
              items=hu.nbytes / 1e6)


FIGURES: dict[str, Callable[[dict], dict]] = {
    "env": fig_env, "matmul": fig_matmul, "hbm": fig_hbm, "drct2_infer": fig_drct2_infer,
    "featstore": fig_featstore, "drct2_train_store": fig_drct2_train_store,
    "drct2_train_e2e": fig_drct2_train_e2e, "blend_train": fig_blend_train,
    "blend_infer": fig_blend_infer, "h2d": fig_h2d,
}


def is_oom(e: BaseException) -> bool:
  return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def serve(lines, write) -> None:
  for line in lines:
    line = line.strip()
    if not line:
      continue
    req = json.loads(line)
    reply: dict[str, Any] = {"id": req.get("id")}
    try:
      if req["figure"] not in FIGURES:
        raise KeyError(f"unknown torch figure {req['figure']!r}")
      reply.update(FIGURES[req["figure"]](req.get("args", {})), ok=True)
    except Exception as e:   # reported to the parent, which records it with the figure
      reply.update(ok=False, oom=is_oom(e), error=f"{type(e).__name__}: {e}"[:800],
                   trace=traceback.format_exc()[-1500:])
    finally:
      gc.collect()
      if DEVICE.type == "cuda":
        reply["max_memory_bytes"] = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    write(MARK + json.dumps(reply, default=float) + "\n")


def main(argv=None) -> int:
  global DEVICE
  parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_torch")
  parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
  parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's)")
  args = parser.parse_args(argv)
  if args.device == "cuda" and not torch.cuda.is_available():
    print(MARK + json.dumps({"id": "ready", "ok": False, "error": "torch sees no CUDA device"}),
          flush=True)
    return 1
  DEVICE = torch.device(args.device)
  if DEVICE.type == "cuda":   # every figure, the bare matmul chain included (prepare_for_cuda)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  if args.threads:
    torch.set_num_threads(args.threads)

  def write(s):
    sys.stdout.write(s)
    sys.stdout.flush()
  write(MARK + json.dumps({"id": "ready", "ok": True}) + "\n")
  serve(sys.stdin, write)
  return 0


if __name__ == "__main__":
  sys.exit(main())
