"""Does the input pipeline keep the device fed? DrCT2 training-step time with real batches
(prepared cache → Grain train_iterator → host→device each step) against the same step on one
constant device-resident batch; plus the data layer's own input-pipeline figures (DICOM decode
slices/s per core, cache → device scans/s) from `benchmarks/input_pipeline.py`, imported rather
than re-implemented.
"""

from __future__ import annotations

import logging
import time

import jax

from benchmarks import common
from benchmarks.common import Context, Record
from benchmarks.drct2 import _guard, _phantom_config

log = logging.getLogger("benchmarks.pipeline")


def feed(ctx: Context) -> list[Record]:
  from ctjax.data import pipeline
  config, _ = _phantom_config(ctx)
  splits = pipeline.build_splits(config, ctx.workdir)
  m = common.build_ctjax(config)
  it = pipeline.train_iterator(config, splits, seed=0)
  rng = jax.random.PRNGKey(1)
  holder = {"state": m.state}
  first = next(it)
  const = common.to_device(first)
  steps = max(ctx.repeats, 3)

  def step(batch):
    holder["state"], metrics = m.train_step(holder["state"], batch, rng)
    return metrics

  common.block(step(const))                        # compile
  t_const = ctx.time(lambda: step(const), warmup=1, repeats=steps)

  def real():
    return step(common.to_device(next(it)))
  t_real = ctx.time(real, warmup=1, repeats=steps)
  bs = config.train.batch_size
  # Host-only cost of one batch (Grain iteration, sampling, stacking), for the record.
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
  host_s = (time.perf_counter() - t) / steps
  return [
      common.speed_record("pipeline/drct2_train_real_batches", seconds=t_real.median, items=bs,
                          unit="scans/s", batch=bs, constant_batch_step_s=t_const.median,
                          real_batch_step_s=t_real.median, host_batch_s=host_s,
                          num_workers=config.data.num_workers),
      common.Record("pipeline/drct2_feed_efficiency", ctx.device,
                    t_const.median / t_real.median, "fraction",
                    details=dict(constant_batch_step_s=t_const.median,
                                 real_batch_step_s=t_real.median, host_batch_s=host_s,
                                 load_average=common.load_average(),
                                 meaning="constant-batch step time / real-batch step time; "
                                         "1.0 = the pipeline costs the device nothing")),
  ]


def data_layer_figures(ctx: Context) -> list[Record]:
  """A's figures (decode slices/s per core, DICOM→example, prepare, cache→batches, shuffle),
  by calling `benchmarks.input_pipeline.run` with this preset's sizes."""
  import argparse
  from benchmarks import input_pipeline as ip
  d, s = ctx.settings["data"], ctx.settings["drct"]
  args = argparse.Namespace(
      scans=d["num_scans"], size=d["size"], gen_scans=1, image_size=s["image_size"],
      slices=s["num_slices"], batch=s["train_batch"], slice_batch=d.get("slice_batch", 16),
      num_batches=d.get("num_batches", 5), workers=list(d.get("workers", (0,))),
      workdir=str(ctx.workdir / f"input_pipeline_{d['size']}"))
  records, summary = ip.run(args)
  for r in records:
    r.name = "pipeline/" + r.name.replace(" ", "_")
    r.details.setdefault("load_average", common.load_average())
  if records:
    records[-1].details["input_pipeline_summary"] = summary
  return records


def run(ctx: Context) -> list[Record]:
  records = _guard(ctx, "pipeline/feed", feed, ctx)
  records += _guard(ctx, "pipeline/input_pipeline", data_layer_figures, ctx)
  return records
