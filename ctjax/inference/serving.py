"""Serve an exported model (`python -m ctjax.export`) with jax, numpy and safetensors only.

    model = load("model_dir")
    out = model(hu)            # int16 HU, model.input_shape with any batch size
    out["probs"]               # numpy [b, L], labels in model.labels order

Nothing of the training code, the model definitions or the configs is imported: the program is
the deserialized `jax.export.Exported` (StableHLO), called on the weights read from
`weights.safetensors` and the caller's HU. Compiled once per batch size (jit cache).
`manifest.json` holds the input contract: read `model.manifest` for the slice sampling, the
windows and the thresholds.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

from ctjax.errors import CTJaxError

FORMAT = "ctjax.export"
FORMAT_VERSIONS = (1,)


class ServingError(CTJaxError, ValueError):
  """The model folder is incomplete or of another format, or the input breaks its contract."""


class ServedModel:
  """An exported ctjax model: `__call__(hu) -> dict of numpy outputs`."""

  def __init__(self, model_dir: pathlib.Path, manifest: dict[str, Any], exported: Any,
               weights: dict[str, Any]):
    self.model_dir = model_dir
    self.manifest = manifest
    self.exported = exported
    self.weights = weights
    self._call = jax.jit(exported.call)

  @property
  def labels(self) -> list[str]:
    return list(self.manifest["labels"])

  @property
  def thresholds(self) -> list[float]:
    return list(self.manifest.get("thresholds", []))

  @property
  def input_shape(self) -> tuple:
    """("b", m, H, W) (DrCT) or ("b", H, W) (blend): "b" is any batch size."""
    return tuple(self.manifest["input"]["shape"])

  def check_input(self, hu: Any) -> np.ndarray:
    hu = np.asarray(hu)
    want = self.input_shape
    if hu.dtype != np.int16:
      raise ServingError(f"{self.model_dir}: input dtype {hu.dtype}; the model takes int16 HU "
                         f"clipped to {self.manifest['input']['hu_range']} (cast with "
                         "np.clip(np.rint(hu), -1024, 3071).astype(np.int16))")
    if hu.ndim != len(want) or any(w != "b" and w != s for w, s in zip(want, hu.shape)):
      raise ServingError(f"{self.model_dir}: input shape {hu.shape}; the model takes "
                         f"{tuple(want)} (b = batch)")
    if hu.shape[0] == 0:
      raise ServingError(f"{self.model_dir}: empty batch")
    return hu

  def __call__(self, hu: Any) -> dict[str, np.ndarray]:
    hu = self.check_input(hu)
    out = self._call(self.weights, hu)
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def load(model_dir: str | os.PathLike) -> ServedModel:
  """Reads `model_dir` (manifest, program, weights) and returns the callable model."""
  model_dir = pathlib.Path(model_dir)
  path = model_dir / "manifest.json"
  if not path.is_file():
    raise ServingError(f"{path}: no manifest.json; is this a `python -m ctjax.export` folder?")
  try:
    manifest = json.loads(path.read_text())
  except ValueError as e:
    raise ServingError(f"{path}: not valid JSON ({e})") from e
  if manifest.get("format") != FORMAT or manifest.get("format_version") not in FORMAT_VERSIONS:
    raise ServingError(f"{path}: format {manifest.get('format')!r} version "
                       f"{manifest.get('format_version')!r}; this loader reads {FORMAT} "
                       f"{FORMAT_VERSIONS}")
  files = manifest.get("files", {})
  program = model_dir / files.get("program", "model.jaxexport")
  weights_path = model_dir / files.get("weights", "weights.safetensors")
  for p in (program, weights_path):
    if not p.is_file():
      raise ServingError(f"{p}: missing from the exported model folder")
  try:
    exported = jax.export.deserialize(bytearray(program.read_bytes()))
  except Exception as e:  # noqa: BLE001 — any decoding failure is a bad file
    raise ServingError(f"{program}: cannot deserialize the program ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]})") from e
  if jax.default_backend() not in exported.platforms:
    raise ServingError(f"{program}: exported for {exported.platforms}, this JAX runs on "
                       f"{jax.default_backend()!r}; export again with --platforms")
  from safetensors.numpy import load_file
  try:
    flat = load_file(str(weights_path))
  except Exception as e:  # noqa: BLE001
    raise ServingError(f"{weights_path}: cannot read the weights ({type(e).__name__}: {e})"
                       ) from e
  in_tree = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)
  (want, _), _ = in_tree
  missing = sorted(set(want) - set(flat))
  if missing or set(flat) - set(want):
    raise ServingError(f"{weights_path}: weights do not match the program (missing "
                       f"{missing[:3]}, extra {sorted(set(flat) - set(want))[:3]})")
  for k, aval in want.items():
    if tuple(flat[k].shape) != tuple(aval.shape) or flat[k].dtype != aval.dtype:
      raise ServingError(f"{weights_path}: {k} is {flat[k].dtype}{list(flat[k].shape)}, the "
                         f"program wants {aval.dtype}{list(aval.shape)}")
  weights = jax.device_put({k: flat[k] for k in want})
  return ServedModel(model_dir, manifest, exported, weights)
