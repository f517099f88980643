"""How much device memory does a DrCT train step need? XLA's own answer, without running it.

  python -m benchmarks.memory                       # the paper's RSNA config, batch 256
  python -m benchmarks.memory --batches 8,32,256 --small   # small widths, the chunking check

Compiles the jitted train step (end to end: the frozen VGG16 over every slice inside the step,
`config.model.backbone_chunk` slices per pass) for abstract inputs — shapes only, nothing is
executed or allocated — and prints `compiled.memory_analysis()`: argument, output and
temporary bytes. With the backbone chunked, temporaries scale with the chunk, not with
batch × slices (the unchunked paper step needs ~275 GB of activations in bfloat16). On the CPU
the compile runs in float32; `--dtype bfloat16` compiles the accelerator dtypes.
Writes JSON under benchmarks/results/ with --json.

On the CPU, XLA folds chains of convolutions into YNNPACK custom fusions whose intermediate
buffers `memory_analysis()` does not count (a VGG16 forward at 8×512² reports 0 temporary
bytes). The command therefore turns those fusions off (`CPU_MEMORY_FLAG`, added to XLA_FLAGS
before the backend starts), so that every activation is an XLA buffer and counted: the same
forward then reports 1.07 GB, twice its conv1 output.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CPU_MEMORY_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def count_every_buffer() -> None:
  """Adds CPU_MEMORY_FLAG to XLA_FLAGS; call before the first JAX computation."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  if not any(f.startswith("--xla_cpu_experimental_ynn_fusion_type") for f in flags):
    os.environ["XLA_FLAGS"] = " ".join(flags + [CPU_MEMORY_FLAG])


def paper_config(batch: int = 256, dtype: str = "auto", chunk: int = 64):
  """configs/drct2_rsna.py (28 slices at 224², 16 zoomed to 512², full-width VGG16)."""
  from ctjax.configs import named
  c = named.get_config("drct2_rsna")
  c.train.batch_size = batch
  c.model.dtype = dtype
  c.model.backbone_chunk = chunk
  c.model.backbone_weights = "random"   # shapes only: no weights file is read
  return c


def small_config(batch: int, chunk: int, *, size: int = 32, aps: int = 48, m: int = 8,
                 width: float = 0.0625):
  """The same model at small widths and sizes (seconds to compile on a CPU)."""
  from ctjax.configs import named
  c = named.get_config("drct2_rsna", "runlocal")
  c.train.batch_size = batch
  c.data.num_slices, c.data.image_size = m, size
  c.model.primary_size, c.model.aps_size, c.model.mkey = size, aps, 4
  c.model.backbone_width, c.model.backbone_chunk = width, chunk
  return c


def train_step_memory(config) -> dict:
  """{argument, output, temp, total bytes, compile_s} of the config's jitted train step."""
  from ctjax.train import state as state_lib
  from ctjax.train import optim, parallel, steps
  from ctjax.train.tasks import get_task
  task = get_task(config.task)
  task.validate_config(config)
  model = task.build_model(config)
  mesh = parallel.make_mesh(config)
  tx, _ = optim.make_optimizer(config, 10, 10, lambda p: task.param_groups(config, p))
  state, sharding = state_lib.abstract_state(task, model, config, mesh, tx)
  b, m, s = int(config.train.batch_size), int(config.data.num_slices), int(config.data.image_size)
  data = parallel.data_sharding(mesh)
  repl = parallel.replicated(mesh)

  def spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=data)

  batch = {"hu": spec((b, m, s, s), jnp.int16),
           "labels": spec((b, len(config.data.labels)), jnp.float32),
           "valid": spec((b,), jnp.bool_)}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl)
  step = jax.jit(steps.make_train_step(task, model, config), in_shardings=(sharding, data, repl),
                 out_shardings=(sharding, repl), donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  seconds = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  out = {"argument_bytes": int(ma.argument_size_in_bytes),
         "output_bytes": int(ma.output_size_in_bytes),
         "temp_bytes": int(ma.temp_size_in_bytes), "compile_s": round(seconds, 2),
         "batch": b, "slices": m, "image_size": s,
         "aps_size": int(config.model.aps_size), "backbone_chunk":
         int(config.model.backbone_chunk), "dtype": str(config.model.dtype),
         "devices": int(mesh.devices.size), "backend": jax.default_backend(),
         "xla_flags": os.environ.get("XLA_FLAGS", "")}
  out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
  # Fusions whose buffers memory_analysis() leaves out (0 after count_every_buffer()).
  out["uncounted_fusions"] = compiled.as_text().count("kind=kCustom, calls=")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
  p.add_argument("--batches", default="256", help="comma-separated global batch sizes")
  p.add_argument("--chunks", default="64", help="comma-separated backbone_chunk values")
  p.add_argument("--small", action="store_true", help="small widths and sizes")
  p.add_argument("--dtype", default="auto")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  count_every_buffer()
  rows = []
  print(f"{'batch':>6} {'chunk':>6} {'args MB':>10} {'temp MB':>10} {'total MB':>10} {'compile s':>10}")
  for chunk in (int(x) for x in args.chunks.split(",")):
    for batch in (int(x) for x in args.batches.split(",")):
      c = small_config(batch, chunk) if args.small else paper_config(batch, args.dtype, chunk)
      r = train_step_memory(c)
      rows.append(r)
      print(f"{batch:6d} {chunk:6d} {r['argument_bytes'] / 1e6:10.1f} {r['temp_bytes'] / 1e6:10.1f}"
            f" {r['total_bytes'] / 1e6:10.1f} {r['compile_s']:10.1f}", flush=True)
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
