"""Defaults shared by every ctjax experiment config.

Each `configs/<name>.py` calls `base_config()` and fills in its own sections; the sections and
their order follow big_vision: seed and schedule, `train`, `data` (input), `model`, `optimizer`,
`evals`, `parallel`, `checkpoint`, `log`.
"""

from __future__ import annotations

import ml_collections

# Label orders of the public data sets (RSNA: the challenge CSV's subtype names; CQ500: Table 1
# of the DrCT2 paper, in the order of reads.csv).
RSNA_LABELS = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid",
               "subdural")
CQ500_LABELS = ("ich", "iph", "ivh", "sdh", "edh", "sah", "fracture", "mass_effect",
                "midline_shift")
BLEND_CLASSES = ("non_ich", "normal_ich", "blend_sign")


def parse_arg(arg: str | None, **defaults):
  """Parses `key=value,key=value` config arguments (`--config file.py:runlocal,fold=3`)."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in out:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(out.keys())}")
    default = out[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("", "1", "true", "yes")
    elif value == "":
      raise ValueError(f"config argument {key!r} needs a value")
    else:
      out[key] = type(default)(value)
  return out


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = ""              # "drct" | "blend" | "pretrain": which ctjax.train.tasks module runs.
  c.seed = 0

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 1
  c.train.batch_size = 8   # global batch, split over every device of every process.
  c.train.max_steps = -1   # > 0 stops early (smoke runs, benchmarks).
  c.train.log_every_steps = 10

  c.data = ml_collections.ConfigDict()
  c.data.layout = "phantom"   # rsna | cq500 | folder | phantom | blend
  c.data.root = ""            # data set root; phantom: generated here when empty ("" → workdir/data)
  c.data.cache_dir = ""       # prepared shards; "" → <root>/.ctjax_cache/<key>
  c.data.num_folds = 5
  c.data.fold = 0
  c.data.split_seed = 0
  c.data.num_workers = 0      # Grain worker processes and prepare processes (0 = in-process;
                              # measured: workers are slower for ~15 MB batches, benchmarks/).
  c.data.prefetch = 2
  c.data.image_size = 256     # cached slice size (int16 HU); models may zoom on device.
  c.data.num_slices = 28      # m, slices sampled per scan (DrCT2 VI.A.1: 28 RSNA, 32 CQ500).
  c.data.windows = "rsna3"    # ctjax.data.windows.PRESETS name or a list of (level, width).
  c.data.labels = ()          # expected label order; () = the data set's own.
  c.data.lenient = False      # skip (and record) bad slices instead of failing.
  c.data.max_boxes = 8        # blend: boxes per slice, padded with -1.
  c.data.eval_batch_size = 0  # 0 = train.batch_size.
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.resample_slices = True   # DrCT2 VI.A.1: unsampled slices make new sets.
  c.data.augment.hflip = 0.0
  c.data.synth = ml_collections.ConfigDict()   # layout "phantom": what to generate.
  c.data.synth.layout = "rsna"
  c.data.synth.num_scans = 24
  c.data.synth.seed = 0
  c.data.synth.size = 64

  c.model = ml_collections.ConfigDict()
  c.model.dtype = "float32"        # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"

  c.optimizer = ml_collections.ConfigDict()

  c.evals = ml_collections.ConfigDict()

  c.parallel = ml_collections.ConfigDict()
  c.parallel.data_axis = "data"
  c.parallel.num_devices = -1      # -1: every device.

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 3
  c.checkpoint.best_metric = ""    # e.g. "val/macro_f1"; "" keeps the latest only.
  c.checkpoint.async_save = True

  c.log = ml_collections.ConfigDict()
  c.log.tensorboard = True
  c.log.progress_bar = True
  return c
