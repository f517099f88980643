"""DrCT2 at data-set scale: does every stage after preparation stay in bounded host memory, and
how long would RSNA take?

  python -m benchmarks.scale --preset cpu --json benchmarks/results/scale-cpu.json
  python -m benchmarks.scale --preset gpu          # 224 px, full-width VGG16, APS 512
  python -m benchmarks.scale --smoke               # seconds (the test's rehearsal)

For each N (scans) a random-HU prepared cache is written straight in the cache format
(`ctjax.data.fake`, no DICOM), then three stages run, each in its own process so that its peak
resident memory (`prepare_memory.peak_rss_mb`) is its own: `store` (building the frozen-backbone feature store,
slices/s), `heads` (training DrCT2's heads from the memory-mapped store, scans/s) and `e2e` (the
end-to-end train step with the backbone chunked inside it, scans/s). The table shows how each
figure grows with N, and the extrapolation to RSNA's 21,540 scans / 874,035 slices (DrCT2
paper, Table 1; 100 epochs, VI.A.1): the store's build time, one epoch of head training, and
the peak RSS at that N from the measured per-scan slope.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

RSNA_SCANS = 21_540
RSNA_SLICES = 874_035
EPOCHS = 100            # DrCT2 paper, VI.A.1

PRESETS = {
    # 2 CPU cores: 64 px slices, 1/16-width VGG16, APS zoom to 128 px.
    "cpu": dict(scans=(1000, 2000, 4000), size=64, aps=128, width=0.0625, slices=(28, 40),
                batch=32, chunk=64, steps=6, e2e_batch=8, e2e_steps=3),
    # The paper's sizes (one accelerator host).
    "gpu": dict(scans=(1000, 2000, 4000), size=224, aps=512, width=1.0, slices=(28, 40),
                batch=256, chunk=64, steps=20, e2e_batch=64, e2e_steps=5),
    "smoke": dict(scans=(16, 32), size=32, aps=48, width=0.0625, slices=(8, 10), batch=4,
                  chunk=8, steps=2, e2e_batch=4, e2e_steps=2),
}


def stage_config(spec: dict[str, Any], stage: str):
  """The drct2_rsna config at the preset's sizes, on the random cache of `spec`."""
  from ctjax.configs import named
  c = named.get_config("drct2_rsna")
  c.data.layout = "folder"
  c.data.root = spec["root"]
  c.data.cache_dir = spec["cache_dir"]
  c.data.image_size = c.model.primary_size = spec["size"]
  c.model.aps_size = spec["aps"]
  c.model.backbone_width = spec["width"]
  # One random backbone file for every stage, so that head training finds the store that the
  # store stage built (the store is keyed by the backbone's values).
  c.model.backbone_weights = spec.get("backbone_weights", "random")
  c.features.enabled = stage in ("store", "heads")
  c.features.chunk = spec["chunk"]
  c.train.batch_size = spec["e2e_batch"] if stage == "e2e" else spec["batch"]
  c.train.num_epochs = 1000
  c.train.max_steps = spec["e2e_steps"] if stage == "e2e" else spec["steps"]
  c.train.log_every_steps = max(1, c.train.max_steps // 2)
  c.evals.val.every_epochs = 0
  c.evals.val.every_steps = -1
  c.evals.highlight_scale_split = ""   # an O(val split) prediction after training: not training
  c.checkpoint.every_steps = -1
  c.checkpoint.best_metric = ""
  c.checkpoint.async_save = False
  c.log.tensorboard = False
  c.log.progress_bar = False
  return c


def run_stage(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
  """One stage in this process; returns its figure and this process's peak RSS."""
  import jax
  from ctjax.train import features, loop
  config = stage_config(spec, stage)
  t0 = time.perf_counter()
  if stage == "store":
    from ctjax.data import pipeline
    from ctjax.models import pretrained
    from ctjax.train.tasks import drct
    splits = pipeline.build_splits(config)
    scans = splits["train"].scans
    model = drct.TASK.build_model(config)
    variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config))
    variables = drct.TASK.load_pretrained(config, variables)
    total = sum(s.num_slices for s in scans.scans)
    features.build_store(config, scans, model, variables, progress=False)
    seconds = time.perf_counter() - t0
    value, unit, items = total / seconds, "slices/s", total
  else:
    workdir = pathlib.Path(spec["workdir"]) / stage
    loop.train_and_evaluate(config, workdir)
    lines = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/scans_per_s"] for r in lines if "train/scans_per_s" in r]
    value, unit, items = rates[-1], "scans/s", int(config.train.max_steps)
    seconds = time.perf_counter() - t0
  from benchmarks.prepare_memory import peak_rss_mb
  rss = peak_rss_mb()   # this process's own peak, not its parent's (see there)
  return {"stage": stage, "value": value, "unit": unit, "items": items,
          "seconds": round(seconds, 2), "peak_rss_mb": round(rss, 1),
          "device": f"{jax.default_backend()}:{jax.devices()[0].device_kind}",
          "devices": jax.device_count()}


def _child(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
  cmd = [sys.executable, "-m", "benchmarks.scale", "--stage", stage, "--spec", json.dumps(spec)]
  r = subprocess.run(cmd, capture_output=True, text=True,
                     cwd=pathlib.Path(__file__).resolve().parents[1])
  if r.returncode != 0:
    raise RuntimeError(f"stage {stage} failed: {r.stderr[-2000:]}")
  return json.loads(r.stdout.strip().splitlines()[-1])


STAGES = ("store", "heads", "e2e")


def _random_backbone(spec: dict[str, Any], path: pathlib.Path) -> pathlib.Path:
  """A random VGG16 at the preset's width, written once as a weights file."""
  if not path.exists():
    from ctjax.models import pretrained
    from ctjax.train.tasks import drct
    config = stage_config(spec, "store")
    model = drct.TASK.build_model(config)
    variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config))
    pretrained.save_variables(path, {"params": variables["params"]["backbone"]})
  return path


def measure(preset: dict[str, Any], base: pathlib.Path, stages=STAGES) -> list[dict[str, Any]]:
  from ctjax.data import fake
  rows = []
  for n in preset["scans"]:
    spec = {k: v for k, v in preset.items() if k != "scans"}
    spec.update(root=str(base / f"n{n}" / "root"), cache_dir=str(base / f"n{n}" / "cache"),
                workdir=str(base / f"n{n}" / "runs"))
    spec["backbone_weights"] = str(_random_backbone(spec, base / "backbone.npz"))
    t0 = time.perf_counter()
    manifest = fake.write_random_cache_for(stage_config(spec, "store"), num_scans=n,
                                           slices=tuple(preset["slices"]), seed=n)
    slices = json.loads(manifest.read_text())["num_slices"]
    write_s = time.perf_counter() - t0
    for stage in stages:
      r = _child(stage, spec)
      r.update(scans=n, slices=slices, cache_write_s=round(write_s, 2))
      rows.append(r)
      print(f"N={n:6d} {stage:6s} {r['value']:10.1f} {r['unit']:9s} peak RSS "
            f"{r['peak_rss_mb']:8.1f} MB  ({r['seconds']:.1f} s)", flush=True)
  return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Growth with N (per-scan RSS slope) and the extrapolation to RSNA."""
  out = {}
  for stage in STAGES:
    rs = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["scans"])
    if len(rs) < 2:
      continue
    slope = (rs[-1]["peak_rss_mb"] - rs[0]["peak_rss_mb"]) / (rs[-1]["scans"] - rs[0]["scans"])
    rate = rs[-1]["value"]
    s = {"rss_mb_per_1k_scans": round(slope * 1000, 2),
         "rss_at_rsna_mb": round(rs[-1]["peak_rss_mb"] + slope * (RSNA_SCANS - rs[-1]["scans"]),
                                 1),
         "rate_at_largest_n": rate, "unit": rs[-1]["unit"]}
    if stage == "store":
      s["rsna_build_hours"] = round(RSNA_SLICES / rate / 3600, 3)
    else:
      s["rsna_epoch_hours"] = round(RSNA_SCANS / rate / 3600, 3)
      s["rsna_100_epochs_hours"] = round(EPOCHS * RSNA_SCANS / rate / 3600, 2)
    out[stage] = s
  return out


def records(rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
  """Records in the suite's schema (`name, device, value, unit, torch_value,
  ratio_vs_torch, flop_fraction`) plus details."""
  out = []
  for r in rows:
    for name, value, unit in ((f"scale/{r['stage']}/n{r['scans']}", r["value"], r["unit"]),
                              (f"scale/{r['stage']}/n{r['scans']}/peak_rss", r["peak_rss_mb"],
                               "MB")):
      out.append({"name": name, "device": r["device"], "value": value, "unit": unit,
                  "torch_value": None, "ratio_vs_torch": None, "flop_fraction": None,
                  "details": r})
  for stage, s in summary.items():
    out.append({"name": f"scale/{stage}/rss_slope", "device": rows[0]["device"],
                "value": s["rss_mb_per_1k_scans"], "unit": "MB per 1k scans", "torch_value":
                None, "ratio_vs_torch": None, "flop_fraction": None, "details": s})
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  p.add_argument("--smoke", action="store_true", help="the smoke preset (seconds)")
  p.add_argument("--scans", default="", help="comma-separated N (overrides the preset)")
  p.add_argument("--stages", default=",".join(STAGES), help="comma-separated: store,heads,e2e")
  p.add_argument("--json", default="", help="write the records here")
  p.add_argument("--workdir", default="", help="where the caches go (default: a temp dir)")
  p.add_argument("--stage", default="", help=argparse.SUPPRESS)
  p.add_argument("--spec", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.stage:   # a child: one stage, one JSON line
    print(json.dumps(run_stage(args.stage, json.loads(args.spec))))
    return 0
  preset = dict(PRESETS["smoke" if args.smoke else args.preset])
  if args.scans:
    preset["scans"] = tuple(int(x) for x in args.scans.split(","))
  with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
    rows = measure(preset, pathlib.Path(tmp), tuple(args.stages.split(",")))
  summary = summarize(rows)
  print("\nper 1k scans more: " + ", ".join(
      f"{k} {v['rss_mb_per_1k_scans']:+.1f} MB" for k, v in summary.items()))
  if "store" in summary:
    print(f"RSNA ({RSNA_SCANS} scans, {RSNA_SLICES} slices): store build "
          f"{summary['store']['rsna_build_hours']:.2f} h at {summary['store']['rate_at_largest_n']:.0f}"
          f" slices/s, peak RSS ≈ {summary['store']['rss_at_rsna_mb']:.0f} MB")
  for stage in ("heads", "e2e"):
    if stage in summary:
      s = summary[stage]
      print(f"RSNA {stage}: one epoch {s['rsna_epoch_hours']:.2f} h, {EPOCHS} epochs "
            f"{s['rsna_100_epochs_hours']:.1f} h, peak RSS ≈ {s['rss_at_rsna_mb']:.0f} MB")
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"preset": "smoke" if args.smoke else args.preset,
                                "settings": {k: list(v) if isinstance(v, tuple) else v
                                             for k, v in preset.items()},
                                "summary": summary, "records": records(rows, summary)},
                               indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
