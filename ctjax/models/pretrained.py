"""torchvision → Flax weight import, and ctjax's flat .npz variables format.

`convert_torchvision(state_dict, arch)` maps a torchvision `state_dict` (any mapping of name →
array: torch tensors, numpy arrays) onto the parameter trees of `ctjax.models.{vgg,resnet,
inception}`: conv kernels OIHW → HWIO, linear weights (out, in) → (in, out), BatchNorm
weight/bias → params scale/bias and running_mean/var → batch_stats mean/var (momentum and
epsilon match torch's in the modules). VGG's first classifier layer is also permuted from
torch's (c, h, w) flatten order to ctjax's NHWC (h, w, c) order.

Files: `.pth`/`.pt` (torch needed), `.safetensors` and `.npz` torchvision state dicts (no torch
needed) are read by `read_state_dict`; `python -m ctjax.weights convert` writes ctjax's own
`.npz` (`save_variables`: one array per leaf, keys "params/conv1/kernel"), which
`load_backbone` reads back with shape checks against the architecture.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ctjax.errors import WeightsError
from ctjax.models.backbones import ARCHS, build_backbone
from ctjax.models.vgg import VGG16_LAYERS

log = logging.getLogger(__name__)

# Heads that `include_fc=False` drops (the backbone keeps the conv stack only).
HEAD_SCOPES = {"vgg16": ("fc0", "fc1", "fc2"), "vgg16_bn": ("fc0", "fc1", "fc2"),
                "resnet50": ("fc",), "inception_v3": ("fc", "AuxLogits")}
_CONVERT_HINT = ("convert a torchvision checkpoint with `python -m ctjax.weights convert "
                 "--arch {arch} --src FILE.pth|.safetensors|.npz --out {path}`")


# ----------------------------------------------------------------------------- name mapping
def _vgg_renamer(batch_norm: bool) -> Callable[[str], tuple]:
  """torchvision `features.<i>` / `classifier.<i>` indices → ctjax "conv<k>"/"bn<k>"/"fc<k>"."""
  index = {}
  i = k = 0
  for v in VGG16_LAYERS:
    if v == "M":
      i += 1
      continue
    index[i] = f"conv{k}"
    if batch_norm:
      index[i + 1] = f"bn{k}"
      i += 1
    i += 2  # conv (+ bn) + relu
    k += 1
  fc = {0: "fc0", 3: "fc1", 6: "fc2"}

  def rename(module: str) -> tuple:
    part, _, idx = module.partition(".")
    table = index if part == "features" else fc if part == "classifier" else None
    if table is None or not idx.isdigit() or int(idx) not in table:
      raise KeyError(module)
    return (table[int(idx)],)
  return rename


def _resnet_rename(module: str) -> tuple:
  m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", module)
  if not m:
    return (module,)
  rest = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(m[3], m[3])
  return (f"layer{m[1]}_{m[2]}", rest)


def _inception_rename(module: str) -> tuple:
  return tuple(module.split("."))


def _renamer(arch: str) -> Callable[[str], tuple]:
  if arch in ("vgg16", "vgg16_bn"):
    return _vgg_renamer(arch == "vgg16_bn")
  if arch == "resnet50":
    return _resnet_rename
  if arch == "inception_v3":
    return _inception_rename
  raise WeightsError(f"unknown backbone arch {arch!r}; known: {', '.join(ARCHS)}")


def _to_numpy(v: Any) -> np.ndarray:
  if hasattr(v, "detach"):  # torch tensor, without importing torch.
    v = v.detach().cpu()
    if str(v.dtype) == "torch.bfloat16":
      v = v.float()
    v = v.numpy()
  return np.asarray(v)


def _set(tree: dict, path: tuple, value: np.ndarray) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  if path[-1] in tree:
    raise WeightsError(f"two torchvision tensors map to {'/'.join(path)}")
  tree[path[-1]] = value


def convert_torchvision(state_dict: Mapping[str, Any], arch: str, *,
                        include_fc: bool | None = None) -> dict:
  """torchvision state dict → Flax variables {"params": …, "batch_stats": …} (numpy leaves).

  include_fc: None keeps whichever heads the state dict has; False drops them (fc, VGG's
  classifier, Inception's AuxLogits); True requires them.
  """
  rename = _renamer(arch)
  sd = {re.sub(r"^module\.", "", k): _to_numpy(v) for k, v in state_dict.items()}
  bn_modules = {k[:-len(".running_mean")] for k in sd if k.endswith(".running_mean")}
  heads = HEAD_SCOPES[arch]
  params: dict = {}
  stats: dict = {}
  for key, value in sd.items():
    module, _, leaf = key.rpartition(".")
    if leaf == "num_batches_tracked":
      continue
    try:
      path = rename(module)
    except KeyError:
      raise WeightsError(f"{key!r} is not a parameter of torchvision's {arch}") from None
    if path[0] in heads and include_fc is False:
      continue
    if module in bn_modules:
      target, name = {"weight": (params, "scale"), "bias": (params, "bias"),
                      "running_mean": (stats, "mean"), "running_var": (stats, "var")}[leaf]
      _set(target, path + (name,), value.astype(np.float32))
      continue
    if leaf == "weight" and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW → HWIO
      name = "kernel"
    elif leaf == "weight" and value.ndim == 2:
      if arch.startswith("vgg") and path == ("fc0",):
        out, flat = value.shape
        c = flat // 49
        value = value.reshape(out, c, 7, 7).transpose(0, 2, 3, 1).reshape(out, flat)
      value = value.T
      name = "kernel"
    elif leaf == "bias":
      name = "bias"
    else:
      raise WeightsError(f"unexpected tensor {key!r} with shape {value.shape} for {arch}")
    _set(params, path + (name,), np.ascontiguousarray(value, dtype=np.float32))
  if include_fc and not any(h in params for h in heads):
    raise WeightsError(f"include_fc=True but the {arch} state dict has no classifier head")
  out = {"params": params}
  if stats:
    out["batch_stats"] = stats
  return out


# ------------------------------------------------------------------------------------ files
def read_state_dict(path: os.PathLike | str) -> dict:
  """A torchvision state dict from .pth/.pt (needs torch), .safetensors or .npz (numpy)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise WeightsError(f"{path}: no such weights file")
  suffix = path.suffix.lower()
  try:
    if suffix in (".pth", ".pt", ".bin"):
      try:
        import torch  # pylint: disable=g-import-not-at-top
      except ImportError:
        raise WeightsError(f"{path}: reading .pth needs torch; install it, or export the state "
                           "dict to .safetensors/.npz where torch is installed") from None
      sd = torch.load(path, map_location="cpu", weights_only=True)
      if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
      return {k: _to_numpy(v) for k, v in sd.items()}
    if suffix == ".safetensors":
      try:
        from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
      except ImportError:
        raise WeightsError(f"{path}: reading .safetensors needs the `safetensors` package "
                           "(pip install safetensors), or export the state dict to .npz") from None
      return dict(load_file(str(path)))
    if suffix == ".npz":
      with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
  except WeightsError:
    raise
  except Exception as e:  # corrupt / foreign files: name the file and the cause.
    raise WeightsError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
  raise WeightsError(f"{path}: unknown weights format {suffix!r} "
                     "(expected .pth, .pt, .safetensors or .npz)")


def _flatten(tree: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
  tree: dict = {}
  for key, v in flat.items():
    _set(tree, tuple(key.split("/")), v)
  return tree


def save_variables(path: os.PathLike | str, variables: Mapping) -> pathlib.Path:
  """Writes variables as a flat .npz ("params/conv1/kernel", …); bfloat16 is stored as f32."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = {}
  for k, v in _flatten(variables).items():
    a = np.asarray(jax.device_get(v))
    if a.dtype == jnp.bfloat16:
      a = a.astype(np.float32)
    flat[k] = a
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **flat)
  os.replace(tmp, path)
  return path


def load_variables(path: os.PathLike | str) -> dict:
  """Reads a `save_variables` .npz back into nested dicts of numpy arrays."""
  path = pathlib.Path(path)
  if not path.exists():
    raise WeightsError(f"{path}: no such variables file")
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  except Exception as e:
    raise WeightsError(f"{path}: cannot read variables ({type(e).__name__}: {e})") from e
  if not flat or not all("/" in k for k in flat):
    raise WeightsError(f"{path}: not a ctjax variables file (keys like 'params/conv1/kernel')")
  return _unflatten(flat)


def expected_shapes(arch: str, *, include_fc: bool = False, **kwargs) -> dict:
  """Shapes of every variable of the full-width arch (free: jax.eval_shape, no FLOPs)."""
  size = 299 if arch == "inception_v3" else 64
  model = build_backbone(arch, include_fc=include_fc, **kwargs)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, size, size, 3))))
  return {k: tuple(v.shape) for k, v in _flatten(shapes).items()}


def check_variables(variables: Mapping, arch: str, *, include_fc: bool = False,
                    source: str = "variables", **kwargs) -> dict:
  """Keeps the leaves the arch needs, checking every shape; WeightsError names what's wrong."""
  want = expected_shapes(arch, include_fc=include_fc, **kwargs)
  have = _flatten(variables)
  missing = sorted(set(want) - set(have))
  wrong = sorted(k for k in set(want) & set(have) if tuple(np.shape(have[k])) != want[k])
  if missing or wrong:
    detail = []
    if missing:
      detail.append(f"missing {len(missing)} (e.g. {missing[:3]})")
    if wrong:
      detail.append("wrong shapes: " + ", ".join(
          f"{k} {tuple(np.shape(have[k]))} != {want[k]}" for k in wrong[:3]))
    raise WeightsError(f"{source}: does not match {arch} "
                       f"(include_fc={include_fc}): {'; '.join(detail)}")
  return _unflatten({k: have[k] for k in want})


def load_backbone(path: os.PathLike | str, arch: str, *, include_fc: bool = False) -> dict:
  """Pretrained variables for `build_backbone(arch)` at full width.

  `path` is a ctjax .npz (`python -m ctjax.weights convert`); a torchvision .pth/.safetensors/
  .npz state dict is converted on the fly. The heads are dropped unless include_fc.
  """
  path = pathlib.Path(path)
  if arch not in ARCHS:
    raise WeightsError(f"unknown backbone arch {arch!r}; known: {', '.join(ARCHS)}")
  if not path.exists():
    raise WeightsError(f"{path}: pretrained {arch} weights not found; "
                       + _CONVERT_HINT.format(arch=arch, path=path))
  if path.suffix.lower() == ".npz":
    with np.load(path, allow_pickle=False) as z:
      ctjax_format = any(k.startswith("params/") for k in z.files)
  else:
    ctjax_format = False
  if ctjax_format:
    variables = load_variables(path)
  else:
    log.info("converting torchvision %s weights from %s", arch, path)
    variables = convert_torchvision(read_state_dict(path), arch,
                                    include_fc=None if include_fc else False)
  return check_variables(variables, arch, include_fc=include_fc, source=str(path))


ASSET_PREFIX = "asset:"


def resolve_weights_path(spec: str) -> pathlib.Path:
  """A weights file named in a config: "asset:<name>" is a file shipped in the package's
  assets (read through importlib.resources, so it works from any install); anything else is
  a path (relative to the working directory)."""
  spec = str(spec)
  if spec.startswith(ASSET_PREFIX):
    import importlib.resources
    name = spec[len(ASSET_PREFIX):]
    ref = importlib.resources.files("ctjax").joinpath("assets", name)
    if not ref.is_file():
      raise WeightsError(f"{spec}: no such asset in the installed ctjax package")
    return pathlib.Path(str(ref))
  return pathlib.Path(spec)


def load_backbone_like(spec: str, arch: str, like: Mapping[str, Any], *,
                       full_width: bool) -> dict:
  """Pretrained backbone variables shaped exactly like `like` ({"params": …, maybe
  "batch_stats": …} of an initialised backbone), as numpy arrays.

  Full-width files may be torchvision state dicts (converted on load); reduced-width ones
  (ctjax's phantom pretraining) must be ctjax .npz variables. A missing collection or any
  shape difference is a WeightsError naming the file.
  """
  path = resolve_weights_path(spec)
  if not path.is_file():
    hint = ("; " + _CONVERT_HINT.format(arch=arch, path=path)) if full_width else ""
    raise WeightsError(f"{path}: backbone weights not found{hint}")
  loaded = load_backbone(path, arch) if full_width else load_variables(path)
  out = {}
  for collection, tree in like.items():
    if collection not in loaded:
      raise WeightsError(f"{path}: has no {collection!r} for the {arch} backbone")
    want = jax.tree.map(np.shape, dict(tree))
    got = jax.tree.map(np.shape, dict(loaded[collection]))
    if want != got:
      raise WeightsError(f"{path}: {collection} do not match the configured {arch} backbone "
                         "(check config.model.backbone_width)")
    out[collection] = jax.tree.map(np.asarray, dict(loaded[collection]))
  return out


def count_params(params: Mapping) -> int:
  """Number of scalars in a params tree (arrays or ShapeDtypeStructs)."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))


def random_variables(module: nn.Module, *inputs, seed: int = 0, **kwargs) -> dict:
  """He-scaled random variables for `module` without compiling Flax's RNG initialisers.

  `jax.jit(module.init)` spends seconds of CPU per conv compiling threefry + truncated normal;
  tests and benchmarks only need *some* well-scaled weights: shapes come from `jax.eval_shape`
  (free), values from numpy. BatchNorm statistics get mean 0 / var 1, scales 1.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs, **kwargs))
  rng = np.random.default_rng(seed)
  flat = {}
  for key, s in _flatten(shapes).items():
    leaf = key.rsplit("/", 1)[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      v = rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)
    elif leaf in ("scale", "var"):
      v = np.ones(s.shape)
    else:
      v = np.zeros(s.shape)
    flat[key] = v.astype(s.dtype)
  return _unflatten(flat)
