"""Defaults shared by every ctjax experiment config, and config-file loading.

Each `configs/<name>.py` calls `base_config()` (or a builder of `ctjax.configs.drct` /
`ctjax.configs.blend`) and fills in its own sections; the sections and their order follow
big_vision: seed and schedule, `train`, `data` (input), `model`, `optimizer`, `evals`,
`parallel`, `checkpoint`, `log`. Config files import only `ctjax` and `ml_collections`, so one
given by path (`--config /any/path/configs/x.py`) works from any directory.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any, Optional

import ml_collections

from ctjax.errors import ConfigError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `key=value,key=value` config arguments (`--config file.py:runlocal,fold=3`)."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in out:
      raise ConfigError(f"unknown config argument {key!r}; known: {sorted(out.keys())}")
    default = out[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("", "1", "true", "yes")
    elif value == "":
      raise ConfigError(f"config argument {key!r} needs a value")
    else:
      try:
        out[key] = type(default)(value)
      except ValueError as e:
        raise ConfigError(f"config argument {key}={value!r} is not a "
                          f"{type(default).__name__}") from e
  return out


def split_arg(arg: str | None, **own) -> tuple[ml_collections.ConfigDict, str]:
  """(the arguments named in `own`, parsed with those defaults; the rest, unparsed): a config
  file built on another takes its own arguments and passes the others on."""
  mine, rest = [], []
  for item in (arg or "").split(","):
    if item:
      (mine if item.partition("=")[0] in own else rest).append(item)
  return parse_arg(",".join(mine), **own), ",".join(rest)


def load_config_file(path: str | os.PathLike, arg: Optional[str] = None
                     ) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file given by path (as `--config path.py:arg` loads it)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"{path}: no such config file")
  spec = importlib.util.spec_from_file_location(f"_ctjax_config_{path.stem}", path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"{path}: not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: defines no get_config()")
  return module.get_config(arg)


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
  c.data.lenient = False      # skip (and record) bad slices and unreadable files, counted.
  # Folds: patients (every series of a patient in one fold) dealt round-robin (False), or also
  # stratified over the scan labels by iterative stratification (True; Sechidis et al., "On the
  # stratification of multi-label data", ECML PKDD 2011; ctjax.data.stratify).
  c.data.stratify = False
  # Which folds train, validate and test fold k (ctjax.data.datasets.FOLD_PROTOCOLS):
  # "val_next_fold" (test k, validation k + 1, training the rest), "k_minus_1" (the blend-sign
  # paper's: training on the K − 1 other folds, validation carved from them), "rsna1" (the RSNA
  # 2019 first-place code's KFold, DrCT2 VI.A.1). `val_fraction`: the share of the training
  # folds' patients carved out for validation by k_minus_1 / rsna1 (1/round(1/share) of them,
  # dealt as the folds are); 0 validates on the held-out fold itself.
  c.data.fold_protocol = "val_next_fold"
  c.data.val_fraction = 0.1
  c.data.strict_labels = False   # any DICOM without labels / label without DICOM is an error
  c.data.max_unlabelled = 0.01   # else: a share above this of either is an error (warned below)
  c.data.stale_cache = "rebuild"   # cache built from other label/DICOM files: rebuild | error
  # Which series of a study are scans (CQ500; also the report's batch mode): policy
  # soft_tissue_axial | one_per_study | all, and the exclusions' options
  # (ctjax.data.series_policy).
  c.data.series = ml_collections.ConfigDict(dict(
      policy="soft_tissue_axial", min_slices=0, exclude_contrast=True))
  c.data.reader_rule = "majority"  # CQ500 labels from R1–R3: majority | any | R1 | R2 | R3
  # Predict and report refuse a series whose pixels are no head CT (ctjax.data.headcheck; the
  # `not_head` QA flag); False reads other anatomy too (research), still flagged.
  c.data.require_head = True
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

  # One optimizer factory for every task (ctjax.train.optim); per-group learning rates are
  # `lr * lr_mults[group]` over the task's named parameter groups.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"        # adam | adamw | sgd
  c.optimizer.lr = 1e-3
  c.optimizer.lr_mults = ml_collections.ConfigDict()   # {group: multiplier}; absent = 1
  c.optimizer.schedule = "constant"   # constant | cosine | poly
  c.optimizer.warmup_steps = 0     # linear warm-up from 0; warmup_epochs is used when 0
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.final_lr_fraction = 0.0   # cosine: end value / peak
  c.optimizer.power = 1.0          # poly: lr · (1 - step/total)^power
  c.optimizer.b1 = 0.9             # adam / adamw
  c.optimizer.b2 = 0.999
  c.optimizer.momentum = 0.9       # sgd
  c.optimizer.weight_decay = 0.0   # adam, sgd: L2 added to the gradient; adamw: decoupled
  c.optimizer.grad_clip = 0.0      # > 0: clip the global gradient norm

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

  # XLA's compiled programs kept on disk for the next start (ctjax.train.compilation):
  # "" = $CTJAX_COMPILE_CACHE_DIR, else $XDG_CACHE_HOME/ctjax/jax, else ~/.cache/ctjax/jax;
  # "none" = off; else that folder. Programs compiling faster than min_compile_secs are not kept.
  c.compile = ml_collections.ConfigDict()
  c.compile.cache_dir = ""
  c.compile.min_compile_secs = 1.0
  return c


def set_dotted(config: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
  """Sets `{"a.b": value}` fields in place; a field the config lacks is a ConfigError."""
  for dotted, value in values.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      if p not in node:
        raise ConfigError(f"config has no field {dotted!r}")
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"config has no field {dotted!r}")
    node[leaf] = value
