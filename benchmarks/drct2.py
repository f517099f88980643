"""DrCT2 throughput: inference (model only, from the prepared cache, from raw DICOM folders),
fp32 and bf16, against the paper's 0.82 s/scan; the training step; each beside PyTorch.

Run through `python -m benchmarks.run` (which sets the preset); `run(ctx)` returns records.
The ctjax side goes through the same Task/TrainState/steps code the trainer runs; the torch side
is `tests.support.torch_models.TorchDrCT2` built from the ctjax model's own sizes.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.common import Context, Record

log = logging.getLogger("benchmarks.drct2")

PAPER_S_PER_SCAN = 0.82   # DrCT2 paper, Table 8: 2m1s for the whole test set, 0.82 s/scan.


def drct_config(ctx: Context, *, dtype: str = "float32", batch_size: Optional[int] = None,
                num_slices: Optional[int] = None, extra: Optional[dict] = None):
  """The DrCT2 config at the preset's sizes (`settings["drct"]`)."""
  s = ctx.settings["drct"]
  config = common.load_config(s.get("config", "drct2_rsna"), s.get("config_arg"))
  values = {
      "data.num_slices": num_slices or s["num_slices"],
      "data.image_size": s["image_size"],
      "model.primary_size": s["image_size"],
      "model.mkey": min(s["mkey"], num_slices or s["num_slices"]),
      "model.aps_size": s["aps_size"],
      "model.backbone_width": s["width"],
      "model.backbone_weights": "",
      "model.dtype": dtype,
      "train.batch_size": batch_size or s["train_batch"],
  }
  values.update(s.get("overrides", {}))
  values.update(extra or {})
  return common.override(config, values)


def make_batch(config, batch_size: int, *, image_size: Optional[int] = None,
               seed: int = 0) -> dict[str, np.ndarray]:
  """A DrCT batch as the pipeline yields it (ARCHITECTURE.md shapes), with head-CT-like HU."""
  rng = np.random.default_rng(seed)
  m = config.data.num_slices
  size = image_size or config.data.image_size
  num_labels = len(config.data.labels)
  hu = rng.normal(30.0, 300.0, (batch_size, m, size, size)).clip(-1024, 3071).astype(np.int16)
  return {
      "hu": hu,
      "labels": rng.integers(0, 2, (batch_size, num_labels)).astype(np.float32),
      "slice_labels": rng.integers(0, 2, (batch_size, m, num_labels)).astype(np.uint8),
      "slice_index": np.tile(np.arange(m, dtype=np.int32), (batch_size, 1)),
      "num_source_slices": np.full((batch_size,), m, np.int32),
      "valid": np.ones((batch_size,), bool),
      "example_index": np.arange(batch_size, dtype=np.int32),
  }


def torch_spec(model, config):
  """TorchDrCT2's sizes read off the ctjax module itself (so the two cannot drift)."""
  from tests.support.torch_models import DrCT2Spec
  return DrCT2Spec(num_labels=model.num_labels, mkey=model.mkey, aps_size=model.aps_size,
                   width=model.backbone.width, gru_hidden=model.gru_hidden,
                   seq_dim=model.seq_dim, fc_widths=tuple(model.fc_widths),
                   aps_fc_dim=model.aps_fc_dim,
                   feature_attention_rescale=model.feature_attention_rescale,
                   primary_size=config.model.primary_size, windows=config.data.windows)


def build_torch(model, config):
  import torch
  from tests.support.torch_models import TorchDrCT2
  torch.manual_seed(0)
  return common.torch_prepare(TorchDrCT2(torch_spec(model, config)).to(common.torch_device())
                              .eval())


def _torch_infer(net, hu: np.ndarray, dtype: str):
  import torch
  t = torch.from_numpy(np.array(hu)).to(common.torch_device())
  def fn():
    with torch.inference_mode(), common.torch_autocast(dtype):
      return net(t)
  return fn


def _torch_train(net, batch: dict[str, np.ndarray], dtype: str):
  import torch
  from tests.support.torch_models import drct2_loss
  dev = common.torch_device()
  hu = torch.from_numpy(np.array(batch["hu"])).to(dev)
  labels = torch.from_numpy(batch["labels"]).to(dev)
  params = [p for p in net.parameters() if p.requires_grad]
  opt = torch.optim.Adam(params, lr=5e-4)

  def fn():
    net.train()
    opt.zero_grad(set_to_none=True)
    with common.torch_autocast(dtype):
      out = net(hu)
    loss = drct2_loss({k: v.float() for k, v in out.items()
                       if k.startswith("probs")}, labels)
    loss.backward()
    opt.step()
    return loss.item()
  return fn


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def infer_model(ctx: Context, dtype: str) -> list[Record]:
  """Model-only inference on a device-resident batch: the figure compared with the FLOP floor."""
  s = ctx.settings["drct"]
  config = drct_config(ctx, dtype=dtype)
  bs = s["infer_batch"]
  m = common.build_ctjax(config)
  batch = common.to_device(make_batch(config, bs))
  t, flops = ctx.time_predict(m, batch)
  torch_s = None
  if ctx.with_torch:
    net = build_torch(m.model, config)
    torch_s = ctx.time_torch(_torch_infer(net, np.asarray(batch["hu"]), dtype)).median
  tag = "fp32" if dtype == "float32" else "bf16"
  detail = dict(batch=bs, num_slices=config.data.num_slices, primary_size=config.model.primary_size,
                mkey=config.model.mkey, aps_size=config.model.aps_size,
                width=config.model.backbone_width, timed_calls=t.n, compile_s=t.compile_s,
                first_call_s=t.warmup_s)
  rec = common.speed_record(f"drct2/infer/{tag}", seconds=t.median, items=bs, unit="scans/s",
                            torch_seconds=torch_s, flops=flops, peak=ctx.peak(dtype), **detail)
  floor_s = flops / ctx.peak(dtype) / bs if ctx.peak(dtype) and flops == flops else None
  lat = common.latency_record(
      f"drct2/s_per_scan/{tag}", seconds_per_item=t.median / bs,
      torch_seconds_per_item=None if torch_s is None else torch_s / bs,
      paper_s_per_scan=PAPER_S_PER_SCAN, speedup_vs_paper=PAPER_S_PER_SCAN / (t.median / bs),
      floor_s_per_scan=floor_s, **detail)
  return [rec, lat]


def train_step(ctx: Context, dtype: str = "float32") -> list[Record]:
  """One optimizer step (forward, backward through the trainable heads, Adam) at the batch."""
  s = ctx.settings["drct"]
  config = drct_config(ctx, dtype=dtype)
  bs = config.train.batch_size
  m = common.build_ctjax(config)
  batch = common.to_device(make_batch(config, bs))
  rng = jax.random.PRNGKey(1)
  compiled = common.aot_compile(m.train_step, m.state, batch, rng)
  train, flops = compiled.executable, compiled.flops
  holder = {"state": m.state}

  def step():
    holder["state"], metrics = train(holder["state"], batch, rng)
    return metrics
  t = ctx.time(step)
  torch_s = None
  if ctx.with_torch:
    net = build_torch(m.model, config)
    torch_s = ctx.time_torch(_torch_train(net, {k: np.asarray(v) for k, v in batch.items()},
                                          dtype)).median
  tag = "fp32" if dtype == "float32" else "bf16"
  return [common.speed_record(
      f"drct2/train_step/{tag}", seconds=t.median, items=bs, unit="scans/s",
      torch_seconds=torch_s, flops=flops, peak=ctx.peak(dtype), batch=bs,
      config_batch=s.get("config_batch"), step_s=t.median, timed_calls=t.n,
      compile_s=compiled.total_s, first_call_s=t.warmup_s, num_slices=config.data.num_slices,
      primary_size=config.model.primary_size)]


def _phantom_config(ctx: Context, dtype: str = "float32"):
  """DrCT2 config reading a phantom RSNA data set generated (once) under the workdir."""
  d = ctx.settings["data"]
  root = ctx.workdir / f"phantom_rsna_{d['size']}_{d['num_scans']}"
  extra = {"data.layout": "phantom", "data.root": str(root), "data.fold": 0,
           "data.num_workers": 0}
  config = drct_config(ctx, dtype=dtype, extra=extra)
  import ml_collections
  with config.unlocked():
    config.data.synth = ml_collections.ConfigDict(
        {"layout": "rsna", "num_scans": d["num_scans"], "seed": 0, "size": d["size"]})
    config.data.num_folds = d.get("num_folds", 3)
    config.data.eval_batch_size = ctx.settings["drct"]["infer_batch"]
  return config, root


def infer_from_data(ctx: Context, dtype: str = "float32") -> list[Record]:
  """End to end: prepared cache → pipeline batches → device → predict (all splits' scans);
  and raw DICOM folders → read_series (decode) → sampling → predict. Both beside torch on the
  very same host batches."""
  from ctjax.data import pipeline
  config, root = _phantom_config(ctx, dtype)
  t0 = time.perf_counter()
  splits = pipeline.build_splits(config, ctx.workdir)
  prep_s = time.perf_counter() - t0
  m = common.build_ctjax(config)
  variables = m.variables
  net = build_torch(m.model, config) if ctx.with_torch else None
  bs = ctx.settings["drct"]["infer_batch"]

  def cache_pass(consume):
    n = 0
    for host in pipeline.eval_batches(config, splits, "test"):
      consume(host)
      n += int(np.asarray(host["valid"]).sum())
    return n

  def jax_consume(host):
    common.block(m.predict(variables, common.to_device(host)))

  # Warm-up (compile, page cache) then one timed pass per framework over the whole split.
  cache_pass(jax_consume)
  t = time.perf_counter()
  n = cache_pass(jax_consume)
  jax_s = time.perf_counter() - t
  torch_s = None
  if net is not None:
    def torch_consume(host):
      _torch_infer(net, np.asarray(host["hu"]), dtype)()
    ctx.pick_torch_threads(_torch_infer(net, make_batch(config, bs)["hu"], dtype))
    cache_pass(torch_consume)
    t = time.perf_counter()
    cache_pass(torch_consume)
    torch_s = time.perf_counter() - t
  tag = "fp32" if dtype == "float32" else "bf16"
  records = [common.speed_record(f"drct2/infer_cache/{tag}", seconds=jax_s, items=n,
                                 unit="scans/s", torch_seconds=torch_s, scans=n, batch=bs,
                                 prepare_s=prep_s, cache_size=config.data.image_size)]
  records.append(_infer_dicom(ctx, config, root, m, variables, net, dtype))
  return records


def _scan_folders(root) -> list[list[str]]:
  import json
  manifest = json.loads((root / "manifest.json").read_text())
  return [[str(root / f) for f in scan["files"]] for scan in manifest["scans"]]


def _infer_dicom(ctx, config, root, m, variables, net, dtype) -> Record:
  """Raw DICOM folder → HU volume (pydicom decode) → m sampled slices → int16 → predict."""
  from ctjax.data import dicom, sampling
  folders = _scan_folders(root)[:ctx.settings["data"].get("dicom_scans", 4)]
  num = config.data.num_slices

  def load(files):
    vol = dicom.read_series(files)
    idx = sampling.uniform_indices(vol.hu.shape[0], num)
    hu = np.clip(vol.hu[idx], -1024, 3071).astype(np.int16)
    return make_batch_from_hu(config, hu)

  def run(consume):
    for files in folders:
      consume(load(files))

  run(lambda b: common.block(m.predict(variables, common.to_device(b))))   # warm-up
  t = time.perf_counter()
  run(lambda b: common.block(m.predict(variables, common.to_device(b))))
  jax_s = time.perf_counter() - t
  t = time.perf_counter()
  run(lambda b: None)
  decode_s = time.perf_counter() - t
  torch_s = None
  if net is not None:
    run(lambda b: _torch_infer(net, b["hu"], dtype)())
    t = time.perf_counter()
    run(lambda b: _torch_infer(net, b["hu"], dtype)())
    torch_s = time.perf_counter() - t
  tag = "fp32" if dtype == "float32" else "bf16"
  return common.speed_record(f"drct2/infer_dicom/{tag}", seconds=jax_s, items=len(folders),
                             unit="scans/s", torch_seconds=torch_s, scans=len(folders),
                             decode_only_s=decode_s, dicom_size=ctx.settings["data"]["size"],
                             s_per_scan=jax_s / len(folders))


def make_batch_from_hu(config, hu: np.ndarray) -> dict[str, np.ndarray]:
  """One-scan batch around sampled HU [m, H, W] (labels unknown → zeros)."""
  b = make_batch(config, 1, image_size=hu.shape[-1])
  b["hu"] = hu[None]
  b["labels"][:] = 0
  b["slice_labels"][:] = 0
  return b


def run(ctx: Context) -> list[Record]:
  records: list[Record] = []
  figures = ctx.settings["drct"].get("figures", ("infer", "train", "data"))
  dtypes = ctx.settings["drct"].get("dtypes", ("float32", "bfloat16"))
  for dtype in dtypes:
    if "infer" in figures:
      records += _guard(ctx, f"drct2/infer/{dtype}", infer_model, ctx, dtype)
  if "breakdown" in figures:
    records += _guard(ctx, "drct2/breakdown", breakdown, ctx, "float32")
  if "train" in figures:
    records += _guard(ctx, "drct2/train_step", train_step, ctx, "float32")
  if "data" in figures:
    records += _guard(ctx, "drct2/infer_cache", infer_from_data, ctx, "float32")
  return records


def _guard(ctx: Context, name: str, fn, *args) -> list[Record]:
  """Runs one figure; a missing optional module skips it with the reason noted."""
  try:
    out = fn(*args)
    for r in out:
      log.info("%s: %.4g %s (torch %s)", r.name, r.value, r.unit, r.torch_value)
    return out
  except (ImportError, AttributeError, FileNotFoundError) as e:
    if ctx.settings.get("strict"):
      raise
    log.warning("skipped %s: %s: %s", name, type(e).__name__, e)
    ctx.skipped[name] = f"{type(e).__name__}: {e}"
    return []


def breakdown(ctx: Context, dtype: str = "float32") -> list[Record]:
  """Where DrCT2 inference time goes: the VGG16 pass over the m primary slices, the pass over
  the m_key zoomed slices, and everything else (windows, resize, GRUs, heads, highlight) as
  the remainder of the full predict. Each part timed alone on the same batch size; a part far
  from the FLOP floor is the one to profile (XLA dump / jax.profiler)."""
  s = ctx.settings["drct"]
  config = drct_config(ctx, dtype=dtype)
  bs = s["infer_batch"]
  m = common.build_ctjax(config)
  variables = m.variables
  batch = common.to_device(make_batch(config, bs))
  backbone = m.model.backbone
  bb_vars = {"params": variables["params"]["backbone"]}
  peak = ctx.peak(dtype)
  out = []
  parts = {"primary_vgg": (bs * config.data.num_slices, config.model.primary_size),
           "aps_vgg": (bs * config.model.mkey, config.model.aps_size)}
  t_parts = 0.0
  for name, (n, size) in parts.items():
    x = jnp.zeros((n, size, size, 3), jnp.dtype(dtype))
    fn, flops = common.compile_with_flops(lambda v, x: backbone.apply(v, x)["pooled"],
                                          bb_vars, x)
    t = ctx.time(lambda: fn(bb_vars, x))
    t_parts += t.median
    out.append(common.speed_record(f"drct2/breakdown/{name}", seconds=t.median, items=n,
                                   unit="slices/s", flops=flops, peak=peak, size=size))
  t, flops = ctx.time_predict(m, batch)
  rest = max(t.median - t_parts, 1e-9)
  out.append(common.Record("drct2/breakdown/rest_fraction", ctx.device or common.device_name(),
                           rest / t.median, "fraction",
                           details=dict(predict_s=t.median, backbone_parts_s=t_parts,
                                        predict_flops=flops,
                                        load_average=common.load_average())))
  return out
