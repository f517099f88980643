"""Serve an exported model (`python -m ctjax.export`) with jax, numpy and safetensors only; read
DICOM series into its input with pydicom and numpy.

    model = load("model_dir")                 # verifies the folder (below)
    out = model(hu)            # int16 HU, model.input_shape with any batch size
    out["probs"]               # numpy [b, L], labels in model.labels order
    result = model.predict_series("dicom/series_folder")   # read, check, sample, resize, predict

Nothing of the training code, the model definitions or the configs is imported: the program is
the deserialized `jax.export.Exported` (StableHLO), called on the weights read from
`weights.safetensors` and the caller's HU. Compiled once per batch size (jit cache).
`manifest.json` holds the input contract: read `model.manifest` for the slice sampling, the
windows and the thresholds; `MODEL_CARD.md` (and the manifest's `model_card`) says what the model
is for and how it was tested.

A model folder cannot lie about its contents: `load` refuses, with one `ServingError` per problem
naming the file, a manifest that is not the one exported (its meaning — format, task, labels,
thresholds, input and output contract, windows, head check, model card — hashed into
`meaning_sha256`, which the export also writes into the weights file's own safetensors metadata,
read here from the weights' bytes independently of the manifest), a program, weights or any
other listed file whose SHA-256 differs from the manifest's, `files` that point outside the
folder, a malformed manifest (a missing or mistyped field), and a program whose outputs or
weights do not match the manifest or the weights.

`predict_series(path)` builds the model's input from a DICOM series as the trained model saw it:
`ctjax.data.dicom.read_series` (canonical orientation, validated headers), the head-CT check
and QA flags (`ctjax.data.headcheck`, `ctjax.data.qa`; a series that is no head CT is refused
when the manifest's `require_head` holds), m slices at `ctjax.data.sampling.uniform_indices`,
each resized by `ctjax.data.resize.resize_hu` — modules that need pydicom, numpy and (for the
resize and the skull search) Pillow and scipy, and none of the training stack.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import struct
from typing import Any, Optional

import jax
import numpy as np

from ctjax.errors import CTJaxError

FORMAT = "ctjax.export"
FORMAT_VERSIONS = (2,)
MANIFEST = "manifest.json"
# The manifest fields that say what the outputs mean: hashed into meaning_sha256.
MEANING_KEYS = ("format", "format_version", "task", "labels", "thresholds", "input", "outputs",
                "windows", "model_name", "model_size", "det_top_k", "det_score_threshold",
                "require_head", "model_card")
REQUIRED_FILES = ("program", "weights")
META_FORMAT = "ctjax.format"
META_MEANING = "ctjax.meaning_sha256"
META_PROGRAM = "ctjax.program_sha256"


class ServingError(CTJaxError, ValueError):
  """The model folder is incomplete, altered or of another format, or the input breaks its
  contract."""


def meaning(manifest: dict[str, Any]) -> dict[str, Any]:
  return {k: manifest[k] for k in MEANING_KEYS if k in manifest}


def meaning_sha256(manifest: dict[str, Any]) -> str:
  """SHA-256 of the manifest's meaning (canonical JSON of its MEANING_KEYS fields)."""
  blob = json.dumps(meaning(manifest), sort_keys=True, separators=(",", ":"),
                    ensure_ascii=True, allow_nan=False)
  return hashlib.sha256(blob.encode()).hexdigest()


def safetensors_metadata(blob: bytes, path: Any) -> dict[str, str]:
  """The `__metadata__` of a safetensors file's header, read from its bytes."""
  try:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
  except (struct.error, ValueError) as e:
    raise ServingError(f"{path}: not a safetensors file (unreadable header: {e})") from e
  meta = header.get("__metadata__") if isinstance(header, dict) else None
  return meta if isinstance(meta, dict) else {}


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

  def series_input(self, path: Any, *, series_uid: Any = None,
                   require_head: Optional[bool] = None) -> tuple[np.ndarray, dict[str, Any]]:
    """A DICOM series (folder, file or list of files) → (the model's input for it, what was
    read): DrCT int16 [1, m, size, size] (m slices sampled uniformly), blend int16
    [S, size, size] (every slice). `require_head` (default: the manifest's) refuses a series
    that is no head CT (`ctjax.errors.NotHeadCTError`)."""
    from ctjax.data import headcheck, qa
    from ctjax.data.dicom import read_series
    from ctjax.data.resize import resize_hu
    from ctjax.data.sampling import uniform_indices
    spec = self.manifest["input"]
    volume = read_series(path, series_uid=series_uid)
    verdict = headcheck.check_volume(volume)
    info = {"series_uid": volume.series_uid, "num_source_slices": volume.num_slices,
            "spacing_mm": tuple(float(v) for v in volume.spacing), "is_head": verdict.is_head,
            "qa_flags": qa.flags(volume, head=verdict), "sop_uids": list(volume.sop_uids)}
    required = self.manifest.get("require_head", True) if require_head is None else require_head
    if required and not verdict.is_head:
      from ctjax.errors import NotHeadCTError
      where = os.fspath(path) if isinstance(path, (str, os.PathLike)) else \
          os.path.dirname(volume.files[0])
      raise NotHeadCTError(f"not a head CT ({'; '.join(verdict.reasons)}); the model reads head "
                           "CT only (its manifest's require_head): require_head=False reads it "
                           "anyway, for research", where)
    size = int(spec["size"])
    if self.manifest.get("task") == "drct":
      idx = uniform_indices(volume.num_slices, int(spec["slices"]))
      info["slice_index"] = [int(i) for i in idx]
      return resize_hu(volume.hu[idx], size)[None], info
    info["slice_index"] = list(range(volume.num_slices))
    return resize_hu(volume.hu, size), info

  def predict_series(self, path: Any, *, series_uid: Any = None,
                     require_head: Optional[bool] = None) -> dict[str, Any]:
    """`series_input` then the model: its outputs (DrCT: the series' row, batch axis dropped;
    blend: one row per slice), "calls" (DrCT: 1 where probs >= the label's threshold), and
    the series' identity, head-CT verdict, QA flags and sampled slice indices."""
    hu, info = self.series_input(path, series_uid=series_uid, require_head=require_head)
    out = self(hu)
    if self.manifest.get("task") == "drct":
      out = {k: v[0] for k, v in out.items()}
      out["calls"] = (out["probs"] >= np.asarray(self.thresholds, np.float32)).astype(np.int32)
    return {**out, **info, "labels": self.labels}


def _fail(path: pathlib.Path, message: str) -> ServingError:
  return ServingError(f"{path}: {message}")


def _check_manifest(path: pathlib.Path, m: Any) -> None:
  """One ServingError for the first field that is missing or of the wrong type."""
  if not isinstance(m, dict):
    raise _fail(path, f"a JSON {type(m).__name__}, not an object")
  if m.get("format") != FORMAT or m.get("format_version") not in FORMAT_VERSIONS:
    raise _fail(path, f"format {m.get('format')!r} version {m.get('format_version')!r}; this "
                f"loader reads {FORMAT} {FORMAT_VERSIONS} (export the run again)")

  def need(key: str, ok, what: str) -> Any:
    if key not in m:
      raise _fail(path, f"field {key!r} is missing ({what} expected)")
    if not ok(m[key]):
      raise _fail(path, f"field {key!r} is {json.dumps(m[key])[:80]}, not {what}")
    return m[key]

  labels = need("labels", lambda v: isinstance(v, list) and v and all(
      isinstance(x, str) and x for x in v) and len(set(v)) == len(v),
      "a list of distinct label names")
  need("task", lambda v: v in ("drct", "blend"), "'drct' or 'blend'")
  need("thresholds", lambda v: isinstance(v, list) and all(
      isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
      and 0.0 < x < 1.0 for x in v), "a list of numbers strictly between 0 and 1")
  if m["task"] == "drct" and len(m["thresholds"]) != len(labels):
    raise _fail(path, f"{len(m['thresholds'])} thresholds for {len(labels)} labels")
  spec = need("input", lambda v: isinstance(v, dict), "an object")
  for key, ok, what in (("shape", lambda v: isinstance(v, list) and v and v[0] == "b" and all(
      isinstance(d, int) and d > 0 for d in v[1:]), 'a list ["b", sizes…]'),
                        ("dtype", lambda v: v == "int16", '"int16"'),
                        ("size", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
                        ("hu_range", lambda v: isinstance(v, list) and len(v) == 2,
                         "[min, max]")):
    if key not in spec or not ok(spec[key]):
      raise _fail(path, f"field 'input.{key}' is {json.dumps(spec.get(key))[:60]}, not {what}")
  if m["task"] == "drct" and not isinstance(spec.get("slices"), int):
    raise _fail(path, "field 'input.slices' is missing (an integer expected)")
  need("outputs", lambda v: isinstance(v, dict) and v, "an object")
  need("files", lambda v: isinstance(v, dict) and all(
      isinstance(k, str) and isinstance(x, str) and x for k, x in v.items()),
      "an object of file names")
  for role in REQUIRED_FILES:
    if role not in m["files"]:
      raise _fail(path, f"field 'files.{role}' is missing")
  need("sha256", lambda v: isinstance(v, dict) and all(
      isinstance(x, str) and len(x) == 64 for x in v.values()), "an object of SHA-256 hex")
  for role in m["files"]:
    if role not in m["sha256"]:
      raise _fail(path, f"field 'sha256.{role}' is missing (every listed file is hashed)")
  need("meaning_sha256", lambda v: isinstance(v, str) and len(v) == 64, "a SHA-256 hex")


def _inside(model_dir: pathlib.Path, manifest_path: pathlib.Path, role: str,
            name: str) -> pathlib.Path:
  """`name` of the manifest's `files` as a path inside `model_dir`, or a ServingError."""
  root = model_dir.resolve()
  path = (model_dir / name).resolve()
  if pathlib.PurePath(name).is_absolute() or root not in path.parents:
    raise _fail(manifest_path, f"files.{role} = {name!r} points outside the model folder "
                f"{model_dir}; a model folder holds its own files")
  return model_dir / name


def _read_verified(path: pathlib.Path, want: str, role: str) -> bytes:
  try:
    blob = path.read_bytes()
  except FileNotFoundError as e:
    raise _fail(path, "missing from the exported model folder") from e
  except OSError as e:
    raise _fail(path, f"cannot read it ({e.strerror or e})") from e
  got = hashlib.sha256(blob).hexdigest()
  if got != want:
    raise _fail(path, f"SHA-256 {got[:16]}… differs from the manifest's sha256.{role} "
                f"{want[:16]}…: the file was replaced or damaged after export; export the run "
                "again")
  return blob


def load(model_dir: str | os.PathLike) -> ServedModel:
  """Reads and verifies `model_dir` (manifest, hashes, program, weights; see the module
  docstring) and returns the callable model."""
  model_dir = pathlib.Path(model_dir)
  path = model_dir / MANIFEST
  if not path.is_file():
    raise _fail(path, "no manifest.json; is this a `python -m ctjax.export` folder?")
  try:
    manifest = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise _fail(path, f"not valid JSON ({e})") from e
  except OSError as e:
    raise _fail(path, f"cannot read it ({e.strerror or e})") from e
  _check_manifest(path, manifest)
  try:
    meaning_hash = meaning_sha256(manifest)
  except ValueError as e:   # NaN or inf somewhere in the meaning
    raise _fail(path, f"holds a value JSON cannot carry ({e})") from e
  if meaning_hash != manifest["meaning_sha256"]:
    raise _fail(path, "its labels, thresholds or input/output contract differ from those it was "
                "exported with (meaning_sha256 does not match): the manifest was edited; export "
                "the run again")
  files = {role: _inside(model_dir, path, role, name)
           for role, name in manifest["files"].items()}
  blobs = {role: _read_verified(p, manifest["sha256"][role], role) for role, p in files.items()}
  program, weights_path = files["program"], files["weights"]
  meta = safetensors_metadata(blobs["weights"], weights_path)
  if meta.get(META_MEANING) != meaning_hash:
    raise _fail(weights_path, f"exported with another manifest (its metadata's {META_MEANING} "
                f"{str(meta.get(META_MEANING))[:16]}… is not manifest.json's {meaning_hash[:16]}…: "
                "labels, thresholds or the input contract were changed together with the "
                "hashes); export the run again")
  if meta.get(META_PROGRAM) != manifest["sha256"]["program"]:
    raise _fail(weights_path, f"exported with another program (its metadata's {META_PROGRAM} is "
                f"not {program.name}'s hash); export the run again")
  try:
    exported = jax.export.deserialize(bytearray(blobs["program"]))
  except Exception as e:  # noqa: BLE001 — any decoding failure is a bad file
    raise _fail(program, f"cannot deserialize the program ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]})") from e
  if jax.default_backend() not in exported.platforms:
    raise _fail(program, f"exported for {exported.platforms}, this JAX runs on "
                f"{jax.default_backend()!r}; export again with --platforms")
  outs = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
  probs = outs.get("probs") if isinstance(outs, dict) else None
  if probs is None or probs.shape[-1] != len(manifest["labels"]):
    raise _fail(path, f"{len(manifest['labels'])} labels, the program gives "
                f"{None if probs is None else probs.shape[-1]} probabilities")
  from safetensors.numpy import load as load_weights
  try:
    flat = load_weights(bytes(blobs["weights"]))
  except Exception as e:  # noqa: BLE001
    raise _fail(weights_path, f"cannot read the weights ({type(e).__name__}: {e})") from e
  in_tree = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)
  (want, _), _ = in_tree
  missing = sorted(set(want) - set(flat))
  if missing or set(flat) - set(want):
    raise _fail(weights_path, f"weights do not match the program (missing {missing[:3]}, "
                f"extra {sorted(set(flat) - set(want))[:3]})")
  for k, aval in want.items():
    if tuple(flat[k].shape) != tuple(aval.shape) or flat[k].dtype != aval.dtype:
      raise _fail(weights_path, f"{k} is {flat[k].dtype}{list(flat[k].shape)}, the program "
                  f"wants {aval.dtype}{list(aval.shape)}")
  weights = jax.device_put({k: flat[k] for k in want})
  return ServedModel(model_dir, manifest, exported, weights)
