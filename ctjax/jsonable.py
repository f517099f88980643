"""`to_jsonable`: reports and benchmark records (numpy / jax scalars and arrays, NaN and ±inf,
dataclasses) → plain JSON values; the one JSON cleaning of the library and the benchmarks."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np


def to_jsonable(obj: Any) -> Any:
  """Nested mappings/sequences of numbers and arrays → dicts, lists, int, float (NaN and ±inf,
  which JSON cannot hold, → None); a dataclass instance → its fields as a dict."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return to_jsonable(dataclasses.asdict(obj))
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
    arr = np.asarray(obj)
    return to_jsonable(arr.tolist()) if arr.ndim else to_jsonable(arr.item())
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, (int, np.integer)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(float(obj)) else None
  return obj
