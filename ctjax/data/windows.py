"""HU → [0, 1] windows and multi-window channel stacks.

Windowing runs on the accelerator inside the jitted step (the cache and batches carry int16 HU),
so every function here takes numpy or jax arrays and returns the same kind: numpy in → numpy
out, jax in (traced or not) → jax out. A window (level L, width W) maps HU h to
clip((h - (L - W/2)) / W, 0, 1).

Presets (level/width in HU; channel order = tuple order):

| name | windows | source |
|---|---|---|
| `rsna3` | brain 40/80, subdural 80/200, soft_tissue 40/380 | the RSNA 2019 challenge's common three-window input; DrCT's default (the DrCT2 paper names no windows) |
| `drct_cq500` | brain 40/80, subdural 80/200, bone 600/2800 | `rsna3` with its soft-tissue channel replaced by the bone window, for CQ500's calvarial-fracture label (a fracture line is invisible at 40/380, where all bone saturates) |
| `blend3` | tissue 40/40, brain 50/100, blood 60/40 | the blend-sign paper |
| `brain` | 40/80 | Radiopaedia, "Windowing (CT)": brain W:80 L:40 |
| `subdural` | 80/200 | Radiopaedia: subdural W:130–300 L:50–100 |
| `soft_tissue` | 40/380 | Radiopaedia: soft tissues W:350–400 L:20–60 |
| `bone` | 600/2800 | Radiopaedia, "Windowing (CT)": temporal bones W:2800 L:600 (the skull window) |
| `tissue`, `blood` | 40/40, 60/40 | the blend-sign paper's channels |

`rsna3`'s third channel was called "bone" here before; it is the soft-tissue window, and `bone`
is now the 600/2800 skull window.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

Window = tuple[float, float]   # (level, width) in HU

PRESETS: dict[str, tuple[Window, ...]] = {
    "rsna3": ((40.0, 80.0), (80.0, 200.0), (40.0, 380.0)),
    "drct_cq500": ((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0)),
    "blend3": ((40.0, 40.0), (50.0, 100.0), (60.0, 40.0)),
    "brain": ((40.0, 80.0),),
    "subdural": ((80.0, 200.0),),
    "soft_tissue": ((40.0, 380.0),),
    "bone": ((600.0, 2800.0),),
    "tissue": ((40.0, 40.0),),
    "blood": ((60.0, 40.0),),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WindowSpec = Union[str, Window, Sequence[Window]]


def _xp(x):
  """numpy for numpy/python inputs, jax.numpy for jax arrays and tracers."""
  if isinstance(x, (np.ndarray, np.generic, int, float, list, tuple)):
    return np
  import jax.numpy as jnp  # local: keeps numpy-only users (prepare workers) light.
  return jnp


def resolve_windows(preset_or_list: WindowSpec) -> tuple[Window, ...]:
  """Preset name, one (level, width) pair, or a list of pairs → tuple of (level, width)."""
  if isinstance(preset_or_list, str):
    if preset_or_list not in PRESETS:
      from ctjax.errors import ConfigError
      raise ConfigError(f"unknown window preset {preset_or_list!r}; known: {sorted(PRESETS)}")
    return PRESETS[preset_or_list]
  items = tuple(preset_or_list)
  if len(items) == 2 and all(isinstance(v, (int, float, np.number)) for v in items):
    items = (items,)
  out = []
  for item in items:
    level, width = (float(v) for v in item)
    if width <= 0:
      from ctjax.errors import ConfigError
      raise ConfigError(f"window width must be > 0, got level={level} width={width}")
    out.append((level, width))
  if not out:
    from ctjax.errors import ConfigError
    raise ConfigError("empty window list")
  return tuple(out)


def window(hu, level: float, width: float):
  """One window: float32 in [0, 1], same shape as `hu`."""
  xp = _xp(hu)
  lo = level - width / 2.0
  x = (xp.asarray(hu).astype(xp.float32) - np.float32(lo)) * np.float32(1.0 / width)
  return xp.clip(x, 0.0, 1.0).astype(xp.float32)


def apply_windows(hu, preset_or_list: WindowSpec = "rsna3"):
  """HU [...] → float32 [..., C] in [0, 1], one channel per window (jit-able)."""
  xp = _xp(hu)
  wins = resolve_windows(preset_or_list)
  hu = xp.asarray(hu).astype(xp.float32)
  levels = np.asarray([lv for lv, _ in wins], np.float32)
  widths = np.asarray([w for _, w in wins], np.float32)
  lo = levels - widths / 2.0
  x = (hu[..., None] - lo) * (1.0 / widths)
  return xp.clip(x, 0.0, 1.0).astype(xp.float32)


def imagenet_normalize(x):
  """[..., 3] in [0, 1] → ImageNet mean/std normalised float32 (torchvision's constants)."""
  xp = _xp(x)
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  return ((xp.asarray(x).astype(xp.float32) - mean) / std).astype(xp.float32)
