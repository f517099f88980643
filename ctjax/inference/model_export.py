"""A trained run → a model folder that serves without the training code (`ctjax.inference.serving`).

    run = runs.load_run("runs/drct2_phantom")
    manifest = export_run(run, "model_dir")

The program is the run's own `Task.predict` (windowing, ImageNet normalisation, resize, the
model, sigmoid/softmax, slice attention, box decoding) traced once with `jax.export`: StableHLO
with a symbolic batch dimension, taking `(weights, hu)`. The weights are not constants of the
program but a flat dict beside it in safetensors ("params/backbone/conv0/kernel", …), so the
same program serves any checkpoint of the same architecture. Files of `out_dir`:

  model.jaxexport      `jax.export.Exported.serialize()` (StableHLO bytecode + calling convention)
  model.stablehlo.mlir the same module as text (for reading, or for other StableHLO runtimes)
  weights.safetensors  the variables, flat; its metadata carries the manifest's meaning hash and
                       the program's hash (`serving.META_*`), read by the loader on its own
  MODEL_CARD.md        the model card (`ctjax.inference.model_card`), also the manifest's
                       `model_card`
  manifest.json        the input contract (slices, size, dtype, window preset and values, label
                       order, thresholds, head check), the outputs, model name, checkpoint step,
                       versions; every file's SHA-256 (`sha256`) and the meaning hash
                       (`meaning_sha256`, `serving.meaning_sha256`)

The folder is written whole beside `out_dir` (a hidden sibling), every file with the same mode
(0o666 less the umask) and flushed to disk, then renamed into place
(`ctjax.fileio.replace_dir`): an existing export at `out_dir` is replaced in one step (Linux;
elsewhere it is absent for the instant between two renames), never mixed with the new one; a
failure (a full disk) leaves `out_dir` as it was and no partial folder. An `out_dir` that exists
and is not an export folder (other files in it) is refused.

DrCT1/DrCT2: input HU int16 [b, m, H, W] (m sampled slices, H = W = config.data.image_size);
outputs probs [b, L], probs_primary, probs_aps and key_indices (DrCT2), slice_attention
[b, m], feature_attention, highlight. Blend-sign detector: input HU int16 [b, H, W] (slices);
outputs probs [b, 3] (softmax), logits, det_scores [b, k], det_centres [b, k, 2], det_boxes
[b, k, 4] (x0, y0, x1, y1 in input pixels).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import pathlib
import secrets
import shutil
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ctjax import fileio
from ctjax.errors import ConfigError, StorageError
from ctjax.inference import serving

log = logging.getLogger(__name__)

FORMAT = serving.FORMAT
FORMAT_VERSION = 2
PROGRAM = "model.jaxexport"
PROGRAM_TEXT = "model.stablehlo.mlir"
WEIGHTS = "weights.safetensors"
CARD = "MODEL_CARD.md"
MANIFEST = serving.MANIFEST
TASKS = ("drct", "blend")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested variables → {"params/backbone/conv0/kernel": array, …}."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if hasattr(v, "items"):
      out.update(flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def input_spec(config: Any) -> tuple[tuple, Any]:
  """(symbolic input shape, dtype) of the run's task: the batch axis is `b`."""
  size = int(config.data.image_size)
  if config.task == "drct":
    m = int(config.data.num_slices)
    return jax.export.symbolic_shape(f"b, {m}, {size}, {size}"), jnp.int16
  return jax.export.symbolic_shape(f"b, {size}, {size}"), jnp.int16


def inference_function(run: Any):
  """`fn(weights, hu) -> outputs`: the run's `Task.predict` on a flat weights dict."""
  task, model, config = run.task, run.model, run.config

  def infer(weights: dict[str, jax.Array], hu: jax.Array) -> dict[str, jax.Array]:
    return dict(task.predict(model, unflatten(weights), {"hu": hu}, config))

  return infer


def _windows(spec: Any) -> dict[str, Any]:
  from ctjax.data.windows import PRESETS, resolve_windows
  names = {v[0]: k for k, v in PRESETS.items() if len(v) == 1}
  values = [{"name": names.get(tuple(w), "window"), "level": float(w[0]), "width": float(w[1])}
            for w in resolve_windows(spec)]
  return {"preset": spec if isinstance(spec, str) else None, "values": values}


def _contract(run: Any, shape: Sequence[Any], exported: Any) -> dict[str, Any]:
  from ctjax.data.resize import HU_MAX, HU_MIN
  from ctjax.inference.report_html import thresholds
  from ctjax.inference.scan_reports import require_head
  cfg = run.config
  dims = ["b" if not isinstance(d, int) else int(d) for d in shape]
  outputs = {}
  out_tree = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
  for k, aval in out_tree.items():
    outputs[k] = {"dtype": str(aval.dtype),
                  "shape": ["b" if not isinstance(d, int) else int(d) for d in aval.shape]}
  contract = {"input": {"name": "hu", "dtype": "int16", "shape": dims,
                        "hu_range": [HU_MIN, HU_MAX], "size": int(cfg.data.image_size)},
              "outputs": outputs}
  if cfg.task == "drct":
    labels = list(cfg.data.labels)
    contract["input"].update(
        slices=int(cfg.data.num_slices),
        layout="[batch, slices, H, W]: HU of m slices of one series ordered along the slice "
               "normal, sampled at floor((i + 0.5) * S / m), i = 0..m-1 "
               "(ctjax.data.sampling.uniform_indices), each resized to size x size (area "
               "resampling when shrinking, bilinear when enlarging: ctjax.data.resize.resize_hu), "
               "rounded and clipped to hu_range; series read by ctjax.data.dicom.read_series "
               "(canonical orientation: rows anterior to posterior, columns patient right to "
               "left, slices inferior to superior)")
    contract.update(task="drct", labels=labels, thresholds=thresholds(cfg, len(labels)),
                    model_name=f"{'DrCT2' if cfg.model.aps else 'DrCT1'} "
                               f"({cfg.model.backbone} backbone)",
                    windows=_windows(cfg.data.windows), model_size=int(cfg.model.primary_size))
  else:
    from ctjax.data.labels import BLEND_CLASSES
    contract["input"]["layout"] = ("[batch, H, W]: HU of single slices resized to size x size "
                                   "(ctjax.data.resize.resize_hu), rounded and clipped to "
                                   "hu_range")
    ev = cfg.get("evals", {})
    contract.update(task="blend", labels=list(BLEND_CLASSES), thresholds=[],
                    model_name=f"blend-sign detector ({cfg.model.backbone} backbone)",
                    windows=_windows(cfg.data.get("windows", "blend3")),
                    det_top_k=int(ev.get("det_top_k", 10)),
                    det_score_threshold=float(ev.get("det_score_threshold", 0.3)))
  contract["require_head"] = require_head(cfg)
  return contract


def export_run(run: Any, out_dir: str | os.PathLike, *,
               platforms: Optional[Sequence[str]] = None,
               evaluations: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
  """Writes the run's inference program, weights, model card and manifest into `out_dir` (see
  the module docstring: a new folder beside it, renamed into place); returns the manifest.
  `platforms` (e.g. ("cpu", "cuda")): what the program is lowered for; default the current
  backend. `evaluations`: `ctjax.evaluate --json` reports for the card (besides the workdir's)."""
  from ctjax import __version__
  from ctjax.inference import model_card
  if run.config.task not in TASKS:
    raise ConfigError(f"{run.workdir}: config.task={run.config.task!r}; export knows {TASKS}")
  target = pathlib.Path(out_dir)
  _check_target(target)
  flat = {k: np.asarray(v) for k, v in flatten(run.host_variables()).items()}
  shape, dtype = input_spec(run.config)
  weight_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
  platforms = tuple(platforms) if platforms else (jax.default_backend(),)
  try:
    exported = jax.export.export(jax.jit(inference_function(run)), platforms=platforms)(
        weight_specs, jax.ShapeDtypeStruct(shape, dtype))
  except (ValueError, NotImplementedError) as e:
    raise ConfigError(f"cannot export for platforms {platforms}: {' '.join(str(e).split())[:300]}"
                      ) from e
  blob = exported.serialize()
  cfg = run.config
  manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
              **_contract(run, shape, exported),
              "checkpoint_step": int(run.step), "workdir": os.path.abspath(run.workdir),
              "config_name": str(cfg.get("name", "") or ""),
              "ctjax_version": __version__, "jax_version": jax.__version__,
              "platforms": list(exported.platforms),
              "created": _dt.datetime.now().isoformat(timespec="seconds"),
              "files": {"program": PROGRAM, "program_text": PROGRAM_TEXT, "weights": WEIGHTS,
                        "model_card": CARD},
              "num_weights": len(flat),
              "num_parameters": int(sum(v.size for v in flat.values()))}
  card = model_card.build_card(run.workdir, config=cfg, step=int(run.step), manifest=manifest,
                               evaluations=evaluations)
  manifest["model_card"] = card
  manifest["meaning_sha256"] = serving.meaning_sha256(manifest)
  card_text = model_card.render_markdown(card, serving_dir=target.name)
  from safetensors.numpy import save as save_weights
  weights = save_weights(flat, metadata={
      serving.META_FORMAT: f"{FORMAT}/{FORMAT_VERSION}",
      serving.META_MEANING: manifest["meaning_sha256"],
      serving.META_PROGRAM: hashlib.sha256(blob).hexdigest()})
  contents = {PROGRAM: blob, PROGRAM_TEXT: exported.mlir_module().encode(), WEIGHTS: weights,
              CARD: card_text.encode()}
  manifest["sha256"] = {role: hashlib.sha256(contents[name]).hexdigest()
                        for role, name in manifest["files"].items()}
  contents[MANIFEST] = json.dumps(manifest, indent=1).encode()
  how = _write_folder(target, contents)
  log.info("exported %s step %d to %s (%s; %s)", run.workdir, run.step, target, platforms, how)
  return manifest


def _check_target(target: pathlib.Path) -> None:
  """`target` may be absent, an empty folder or an earlier export (replaced); nothing else."""
  if target.exists() and not target.is_dir():
    raise StorageError("--out is a file, not a folder", target)
  if target.is_dir():
    names = sorted(p.name for p in target.iterdir())
    ours = (target / MANIFEST).is_file() and _is_export(target / MANIFEST)
    if names and not ours:
      raise StorageError(f"exists and is not a {FORMAT} model folder (it holds "
                         f"{', '.join(names[:3])}{'…' if len(names) > 3 else ''}); give a new or "
                         "empty folder: an export replaces only an earlier export", target)
  fileio.writable_dir(target.parent if str(target.parent) else ".", "folder of --out")


def _is_export(manifest: pathlib.Path) -> bool:
  try:
    return json.loads(manifest.read_text()).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def _write_folder(target: pathlib.Path, contents: dict[str, bytes]) -> str:
  """Every file of `contents` into a new hidden folder beside `target` (one mode, flushed),
  then renamed into place (`fileio.replace_dir`); on failure nothing is left behind."""
  staging = target.with_name(f".{target.name}.export-{os.getpid()}-{secrets.token_hex(4)}")
  mode = fileio.file_mode()
  needed = sum(len(b) for b in contents.values())
  try:
    staging.mkdir()
    os.chmod(staging, mode | ((mode & 0o444) >> 2))   # rw-r--r-- → rwxr-xr-x
    for name, data in contents.items():
      fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
      with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      os.chmod(staging / name, mode)                   # the same mode whatever the umask did
    fd = os.open(staging, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    return fileio.replace_dir(staging, target)
  except OSError as e:
    shutil.rmtree(staging, ignore_errors=True)
    raise fileio.storage_error(e, target, "writing the exported model", needed=needed) from e
