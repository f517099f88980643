"""The sizes of `python -m benchmarks.run`'s presets (and of `benchmarks.scaling`'s workers).

`tiny` is the harness test's, `cpu-small` fits minutes on a 2-core CPU, `full` is the papers'
sizes; `preset_settings(name, cpu_bound=True)` shrinks `full` to batch 1 and one timed call.
"""

from __future__ import annotations

import copy
from typing import Any

# The CPU presets compare against torch on the same cores; tests set their own XLA_FLAGS.
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: the harness test's preset (tests/benchmarks/test_run.py).
    "tiny": {
        "matmul_n": 128, "warmup": 1, "repeats": 2,
        "drct": {"num_slices": 4, "image_size": 32, "mkey": 2, "aps_size": 48, "width": 1 / 32,
                 "infer_batch": 1, "train_batch": 2, "dtypes": ("float32",),
                 "figures": ("infer", "train"),
                 "overrides": {"model.gru_hidden": 8, "model.seq_dim": 8,
                               "model.fc_widths": (8, 8), "model.aps_fc_dim": 8}},
        "blend": {"image_size": 32, "width": 1 / 32, "backbone": "resnet50", "infer_batch": 2,
                  "train_batch": 2, "figures": ("infer",),
                  "overrides": {"model.det_hidden": 8}},
        "data": {"num_scans": 6, "size": 48, "dicom_scans": 2, "num_folds": 3},
        "scaling": {"batch": (1, 2), "slices": (), "devices": (1, 2), "devices_batch": 2},
        "pipeline": False,
    },
    # Minutes on a 2-core CPU: small widths and sizes, every figure.
    "cpu-small": {
        "matmul_n": 1024, "warmup": 1, "repeats": 3,
        "drct": {"num_slices": 16, "image_size": 64, "mkey": 8, "aps_size": 128,
                 "width": 0.25, "infer_batch": 2, "train_batch": 4,
                 "dtypes": ("float32", "bfloat16"),
                 "figures": ("infer", "breakdown", "train", "data"),
                 "overrides": {"model.gru_hidden": 64, "model.seq_dim": 64,
                               "model.fc_widths": (64, 32), "model.aps_fc_dim": 64}},
        "blend": {"image_size": 128, "width": 0.25, "backbone": "resnet50", "infer_batch": 4,
                  "train_batch": 4, "figures": ("infer", "train")},
        "data": {"num_scans": 12, "size": 64, "dicom_scans": 4, "num_folds": 3},
        "scaling": {"batch": (1, 2, 4), "slices": (16, 32, 64), "devices": (1, 2, 4),
                    "devices_batch": 4},
        "pipeline": True,
    },
    # The papers' sizes: DrCT2 28 slices at 224, 16 key slices zoomed to 512; blend 512×512.
    # Batches are the configs' on an accelerator; `--cpu-bound` (default on CPU) uses batch 1
    # and one timed call, so that one honest full-size figure fits on a small CPU.
    "full": {
        "matmul_n": 8192, "warmup": 1, "repeats": 10,
        "drct": {"num_slices": 28, "image_size": 224, "mkey": 16, "aps_size": 512, "width": 1.0,
                 "infer_batch": 32, "train_batch": 256, "config_batch": 256,
                 "dtypes": ("float32", "bfloat16"),
                 "figures": ("infer", "breakdown", "train", "data")},
        "blend": {"image_size": 512, "width": 1.0, "backbone": "resnet50", "infer_batch": 64,
                  "train_batch": 16, "figures": ("infer", "train")},
        "data": {"num_scans": 8, "size": 512, "dicom_scans": 4, "num_folds": 3},
        "scaling": {"batch": (1, 8, 32), "slices": (16, 32, 64), "devices": (1,),
                    "devices_batch": 32},
        "pipeline": True,
    },
}

CPU_BOUND = {"matmul_n": 2048, "repeats": 1, "warmup": 0,
             "drct": {"infer_batch": 1, "train_batch": 1, "dtypes": ("float32",)},
             "blend": {"infer_batch": 1, "train_batch": 1},
             "data": {"num_scans": 4, "dicom_scans": 1},
             "scaling": {"batch": (1, 2), "slices": (16, 28), "devices": (), "devices_batch": 2}}

GROUPS = ("drct2", "blend", "scaling", "pipeline")


def preset_settings(name: str, *, cpu_bound: bool = False) -> dict[str, Any]:
  settings = copy.deepcopy(PRESETS[name])
  if cpu_bound:
    for k, v in CPU_BOUND.items():
      if isinstance(v, dict):
        settings.setdefault(k, {}).update(v)
      else:
        settings[k] = v
  return settings
