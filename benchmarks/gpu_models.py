"""The JAX programs `python -m benchmarks.gpu` times, built on the library's models alone.

Why not through the trainer (`benchmarks.common.build_ctjax`): the task modules and
ctjax.train import ml_collections (and grain) at module level, which a bare GPU image
lacks. So these programs use only `ctjax.models.*`, `ctjax.data.windows` and
`ctjax.eval.detection`, and repeat the tasks' few lines of loss and optimizer
(`ctjax/train/tasks/{drct,blend}.py`); tests/benchmarks/test_gpu.py checks them against the
tasks' own `loss_fn` and `predict`.

DrCT2 runs with its frozen VGG16 applied over chunks of slices (`jax.lax.map`), so that the
512² activations of conv1 (34 MB a slice in bf16) exist for `chunk` slices at a time, not for
all B × m_key; the heads are the library's `DrCT(..., features=...)` path. The APS network
needs the key slices, which depend on the primary network's slice attention, so the program
runs in two phases: (1) the primary backbone pass and the primary heads give `key_indices`;
(2) only those key slices are zoomed to 512 and encoded (no slice the model would not encode),
scattered into the `aps_pooled` rows that the features path gathers back by the same indices.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.gpu_plan import BlendSizes, DrCT2Sizes
from ctjax.data.windows import apply_windows, imagenet_normalize
from ctjax.models.blendnet import decode
from ctjax.train.tasks import blend_losses
from ctjax.models import blendnet
from ctjax.models.backbones import build_backbone
from ctjax.models.drct import DrCT
from ctjax.models.vgg import VGG16

DTYPES = {"bf16": jnp.bfloat16, "tf32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float32": jnp.float32}


def precision_context(tag: str):
  """tf32 figures: float32 arrays with matrix work at TF32, named explicitly (XLA's default for
  float32 on such GPUs; a no-op on CPU); bf16 figures: the default (bf16 operands)."""
  if tag == "tf32":
    return jax.default_matmul_precision("tensorfloat32")
  return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------------------------

def chunked_map(fn: Callable, xs: jax.Array, chunk: Optional[int]) -> Any:
  """fn over `xs` [N, ...] in chunks of `chunk` rows (`lax.map`: one compiled body, chunks run
  one after another), padding N up to a multiple of `chunk` (padded rows are computed and
  dropped). chunk None or ≥ N: one call, no loop."""
  n = xs.shape[0]
  if not chunk or chunk >= n:
    return fn(xs)
  steps = -(-n // chunk)
  pad = steps * chunk - n
  if pad:
    xs = jnp.concatenate([xs, jnp.zeros((pad,) + xs.shape[1:], xs.dtype)])
  out = jax.lax.map(fn, xs.reshape((steps, chunk) + xs.shape[1:]))
  return jax.tree.map(lambda a: a.reshape((steps * chunk,) + a.shape[2:])[:n], out)


# --------------------------------------------------------------------------------------------
# DrCT2
# --------------------------------------------------------------------------------------------

def build_drct2(s: DrCT2Sizes, dtype: Any) -> DrCT:
  """DrCT2 as `DrCTTask.build_model` builds it for configs/drct2_rsna.py."""
  backbone = VGG16(width=s.width, dtype=dtype, param_dtype=jnp.float32)
  return DrCT(backbone=backbone, num_labels=s.num_labels, aps=True, freeze_backbone=True,
              gru_hidden=s.gru_hidden, seq_dim=s.seq_dim, fc_widths=tuple(s.fc_widths),
              dropout_rate=s.dropout, mkey=s.mkey, aps_size=s.aps_size, aps_fc_dim=s.aps_fc_dim,
              dtype=dtype, param_dtype=jnp.float32)


def random_variables(init: Callable[[], Any], seed: int = 0) -> dict:
  """Variables with the exact tree, shapes and dtypes of `init()` (read by `jax.eval_shape`,
  nothing compiled), drawn on the host: every ≥ 2-D parameter N(0, 1/fan_in) (LeCun normal,
  Flax's default for kernels), BatchNorm scales and variances 1, other vectors (biases, means)
  0. Benchmarks need realistic magnitudes, not trained values; compiling a model's `init`
  costs more than the figure on a CPU (27 s for DrCT2's at the smoke sizes)."""
  shapes = jax.eval_shape(init)
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if len(a.shape) >= 2:
      fan_in = int(np.prod(a.shape[:-1]))
      v = rng.standard_normal(a.shape, np.float32) / np.sqrt(max(fan_in, 1))
    elif name in ("scale", "var"):
      v = np.ones(a.shape, np.float32)
    else:
      v = np.zeros(a.shape, np.float32)
    return jnp.asarray(v, a.dtype)
  return jax.tree_util.tree_map_with_path(leaf, dict(shapes))


def init_drct2(model: DrCT, s: DrCT2Sizes, seed: int = 0) -> dict:
  """Random variables (parameter shapes do not depend on the image size: 32 px, as
  `DrCTTask.init_variables` does)."""
  small = model.clone(aps_size=32)
  x = jnp.zeros((1, s.num_slices, 32, 32, 3), jnp.float32)
  rngs = dict(zip(("params", "dropout", "aps"), jax.random.split(jax.random.PRNGKey(seed), 3)))
  return random_variables(lambda: small.init(rngs, x), seed)


def drct_preprocess(hu: jax.Array, s: DrCT2Sizes, size: int) -> jax.Array:
  """`ctjax.train.tasks.drct.preprocess`: HU [..., H, W] → windows → ImageNet normalisation
  → bilinear resize to `size` (float32 [..., size, size, 3])."""
  x = imagenet_normalize(apply_windows(hu, s.windows))
  if x.shape[-3:-1] != (size, size):
    x = jax.image.resize(x, x.shape[:-3] + (size, size, x.shape[-1]), method="bilinear")
  return x


def primary_backbone(model: DrCT, bparams: Any, s: DrCT2Sizes, hu_slices: jax.Array,
                     chunk: Optional[int]) -> tuple[jax.Array, jax.Array]:
  """HU slices [N, H, W] → (pooled [N, C], feature_map [N, h, w, C]): preprocessing and the
  frozen VGG16 per chunk."""
  def one(hu):
    x = drct_preprocess(hu, s, s.primary_size)
    out = model.backbone.apply({"params": bparams}, x.astype(model.dtype))
    return out["pooled"], out["feature_map"]
  return chunked_map(one, hu_slices, chunk)


def aps_backbone(model: DrCT, bparams: Any, s: DrCT2Sizes, hu_slices: jax.Array,
                 chunk: Optional[int]) -> jax.Array:
  """HU key slices [N, H, W] → APS pooled [N, C]: the primary input (`primary_size`) zoomed
  bilinearly to `aps_size` in float32 (eq. 8, as `DrCT._aps_features`), then the VGG16."""
  def one(hu):
    x = drct_preprocess(hu, s, s.primary_size)
    if x.shape[1:3] != (s.aps_size, s.aps_size):
      x = jax.image.resize(x.astype(jnp.float32), (x.shape[0], s.aps_size, s.aps_size, 3),
                           method="bilinear")
    return model.backbone.apply({"params": bparams}, x.astype(model.dtype))["pooled"]
  return chunked_map(one, hu_slices, chunk)


def drct2_features(model: DrCT, variables: dict, hu: jax.Array, s: DrCT2Sizes,
                   chunk: Optional[int]) -> dict[str, jax.Array]:
  """HU [B, m, H, W] → the `features=` dict of `DrCT.__call__` (frozen, no gradient).

  "aps_pooled" [B, m, C] holds the APS vectors of the key slices at their own rows (zeros
  elsewhere, never read): phase 1 finds the keys with the primary heads, phase 2 encodes only
  those slices.
  """
  b, m = hu.shape[:2]
  bparams = variables["params"]["backbone"]
  pooled, fmap = primary_backbone(model, bparams, s, hu.reshape((b * m,) + hu.shape[2:]), chunk)
  feats = {"pooled": pooled.reshape((b, m) + pooled.shape[1:]),
           "feature_map": fmap.reshape((b, m) + fmap.shape[1:])}
  probe = dict(feats, aps_pooled=jnp.zeros_like(feats["pooled"]))
  key = model.apply(variables, None, features=probe, train=False)["key_indices"]   # [B, k]
  hu_keys = jnp.take_along_axis(hu, key[:, :, None, None], axis=1)
  aps = aps_backbone(model, bparams, s, hu_keys.reshape((-1,) + hu.shape[2:]), chunk)
  aps = aps.reshape((b, model.mkey) + aps.shape[1:])
  rows = jnp.zeros((b, m) + aps.shape[2:], aps.dtype)
  feats["aps_pooled"] = rows.at[jnp.arange(b)[:, None], key].set(aps)
  return jax.lax.stop_gradient(feats)


def drct2_outputs(out: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """`DrCTTask.predict`'s outputs from the model's."""
  return {"probs": jax.nn.sigmoid(out["logits"]),
          "probs_primary": jax.nn.sigmoid(out["logits_primary"]),
          "probs_aps": jax.nn.sigmoid(out["logits_aps"]),
          "slice_attention": out["slice_attention"].astype(jnp.float32),
          "feature_attention": out["feature_attention"].astype(jnp.float32),
          "highlight": out["highlight"].astype(jnp.float32),
          "key_indices": out["key_indices"].astype(jnp.int32)}


def drct2_predict(model: DrCT, s: DrCT2Sizes, chunk: Optional[int]) -> Callable:
  """(variables, hu [B, m, H, W] int16) → `DrCTTask.predict`'s outputs, backbone chunked."""
  def predict(variables, hu):
    feats = drct2_features(model, variables, hu, s, chunk)
    return drct2_outputs(model.apply(variables, None, features=feats, train=False))
  return predict


def drct2_loss(out: dict[str, jax.Array], labels: jax.Array) -> jax.Array:
  """Eq. (11) with ctjax/configs/drct.py's losses: MSE(primary) + MSE(APS) + BCE(fusion),
  each the mean over labels and scans (`DrCTTask.loss_fn` with every example valid)."""
  labels = labels.astype(jnp.float32)
  mse = lambda logits: jnp.mean(jnp.square(jax.nn.sigmoid(logits) - labels))  # noqa: E731
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(out["logits"], labels))
  return mse(out["logits_primary"]) + mse(out["logits_aps"]) + bce


def drct2_optimizer(s: DrCT2Sizes) -> optax.GradientTransformation:
  """Adam per module (VI.A.1); the frozen backbone is outside it, as in the trainer."""
  adam = lambda lr: optax.adam(lr, b1=0.9, b2=0.999)  # noqa: E731
  return optax.multi_transform({"primary": adam(s.lr_primary), "aps": adam(s.lr_aps),
                                "fusion": adam(s.lr_fusion)},
                               lambda p: {k: jax.tree.map(lambda _: k, v) for k, v in p.items()})


def drct2_train_state(variables: dict, tx: optax.GradientTransformation) -> dict:
  """The trainable part: heads' parameters, APS BatchNorm statistics and the Adam state."""
  heads = {k: v for k, v in variables["params"].items() if k != "backbone"}
  return {"params": heads, "batch_stats": variables["batch_stats"], "opt": tx.init(heads)}


def _drct2_update(model, tx, state, feats, labels, rng):
  d_rng, a_rng = jax.random.split(rng)

  def loss_fn(params):
    out, upd = model.apply({"params": params, "batch_stats": state["batch_stats"]}, None,
                           features=feats, train=True, rngs={"dropout": d_rng, "aps": a_rng},
                           mutable=["batch_stats"])
    return drct2_loss(out, labels), upd

  (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt = tx.update(grads, state["opt"], state["params"])
  return ({"params": optax.apply_updates(state["params"], updates),
           "batch_stats": upd["batch_stats"], "opt": opt}, loss)


def drct2_train_step_store(model: DrCT, tx: optax.GradientTransformation) -> Callable:
  """(state, features, labels, rng) → (state, loss): one Adam step of the heads on cached
  backbone rows (`config.features`)."""
  def step(state, feats, labels, rng):
    return _drct2_update(model, tx, state, feats, labels, rng)
  return step


def drct2_train_step_e2e(model: DrCT, tx: optax.GradientTransformation, s: DrCT2Sizes,
                         chunk: Optional[int]) -> Callable:
  """(state, backbone params, hu, labels, rng) → (state, loss): HU in, the frozen backbone
  chunked (forward only: it is frozen), then the heads' step."""
  def step(state, bparams, hu, labels, rng):
    variables = {"params": {**state["params"], "backbone": bparams},
                 "batch_stats": state["batch_stats"]}
    feats = drct2_features(model, variables, hu, s, chunk)
    return _drct2_update(model, tx, state, feats, labels, rng)
  return step


def drct2_store_build(model: DrCT, s: DrCT2Sizes) -> Callable:
  """(backbone variables, hu [N, H, W]) → the feature-cache rows of N slices, exactly as
  `ctjax.train.features.build_store` computes a chunk: the library's
  `DrCT.backbone_features` on the primary input and on the same slices zoomed to aps_size."""
  def build(params, hu):
    x = drct_preprocess(hu, s, s.primary_size)
    return model.apply(params, x, x, method=DrCT.backbone_features)
  return build


# --------------------------------------------------------------------------------------------
# Blend-sign network
# --------------------------------------------------------------------------------------------

def build_blend(s: BlendSizes, dtype: Any) -> blendnet.BlendNet:
  backbone = build_backbone("resnet50", width=s.width, dtype=dtype,
                                    param_dtype=jnp.float32)
  return blendnet.BlendNet(backbone=backbone, num_classes=s.num_classes,
                           det_hidden=s.det_hidden, dtype=dtype, param_dtype=jnp.float32)


def init_blend(model: blendnet.BlendNet, s: BlendSizes, seed: int = 0) -> dict:
  x = jnp.zeros((1, s.image_size, s.image_size, 3), model.dtype)
  variables = random_variables(lambda: model.init(jax.random.PRNGKey(seed), x, train=False),
                               seed)
  return blendnet.strip_perturbations(variables)


def blend_preprocess(hu: jax.Array, s: BlendSizes, dtype: Any) -> jax.Array:
  """`ctjax.train.tasks.blend.preprocess`: HU [B, H, W] → `blend3` windows, normalised."""
  return imagenet_normalize(apply_windows(jnp.asarray(hu), s.windows)).astype(dtype)


def blend_loss(out: dict[str, jax.Array], batch: dict[str, jax.Array], stride: float,
               s: BlendSizes) -> jax.Array:
  """`BlendTask.loss_fn` without distillation or augmentation: weighted CE + λ·(centre focal
  loss + smooth-L1 distances, normalised by the masked examples' map cells)."""
  mask = batch["valid"].astype(jnp.float32)
  labels = batch["label"].astype(jnp.int32)
  logp = jax.nn.log_softmax(out["logits"].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  wy = jnp.asarray(s.class_weights, jnp.float32)[labels] * mask
  cls = jnp.sum(wy * nll) / jnp.maximum(jnp.sum(wy), 1e-12)
  det = out["det"]
  targets = blend_losses.render_targets(batch["boxes"].astype(jnp.float32), batch["num_boxes"],
                                     det.shape[1:3], stride, s.min_overlap)
  focal = blend_losses.centre_focal_loss(det[..., 0], targets["heatmap"], targets["centre_mask"],
                                      s.focal_alpha, s.focal_beta)
  reg = blend_losses.distance_loss(det[..., 1:], targets["distances"], targets["centre_mask"])
  if s.det_normalize != "pixels":
    raise ValueError(f"det_normalize={s.det_normalize!r}: only 'pixels' (the paper's) here")
  norm = jnp.maximum(jnp.sum(mask) * det.shape[1] * det.shape[2], 1.0)
  det_loss = jnp.sum(focal * mask) / norm + jnp.sum(reg * mask) / norm
  return s.cls_weight * cls + s.det_weight * det_loss


def blend_optimizer(s: BlendSizes, total_steps: int = 1000) -> optax.GradientTransformation:
  """The blend config's optimizer (ctjax.train.optim): weight decay + SGD with momentum, poly decay."""
  schedule = optax.polynomial_schedule(init_value=s.learning_rate, end_value=0.0, power=s.power,
                                       transition_steps=max(int(total_steps), 1))
  return optax.chain(optax.add_decayed_weights(s.weight_decay),
                     optax.sgd(schedule, momentum=s.momentum))


def blend_train_state(variables: dict, tx: optax.GradientTransformation) -> dict:
  return {"params": variables["params"], "batch_stats": variables["batch_stats"],
          "opt": tx.init(variables["params"])}


def blend_train_step(model: blendnet.BlendNet, tx: optax.GradientTransformation,
                     s: BlendSizes) -> Callable:
  """(state, batch) → (state, loss): forward and backward through the whole network
  (the paper fine-tunes everything), BatchNorm in training mode."""
  def step(state, batch):
    x = blend_preprocess(batch["hu"], s, model.dtype)

    def loss_fn(params):
      out, upd = model.apply({"params": params, "batch_stats": state["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
      stride = float(x.shape[1]) / float(out["det"].shape[1])
      return blend_loss(out, batch, stride, s), upd

    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return ({"params": optax.apply_updates(state["params"], updates),
             "batch_stats": upd["batch_stats"], "opt": opt}, loss)
  return step


def blend_predict(model: blendnet.BlendNet, s: BlendSizes, top_k: int = 10) -> Callable:
  """(variables, hu [B, H, W]) → `BlendTask.predict`'s probabilities and decoded boxes."""
  def predict(variables, hu):
    x = blend_preprocess(hu, s, model.dtype)
    out = model.apply(variables, x, train=False)
    stride = float(x.shape[1]) / float(out["det"].shape[1])
    dec = decode(jax.nn.sigmoid(out["det"][..., 0]), out["det"][..., 1:], stride,
                           top_k=top_k)
    return {"probs": jax.nn.softmax(out["logits"], -1), "logits": out["logits"],
            "det_scores": dec["scores"], "det_centres": dec["centres"],
            "det_boxes": dec["boxes"]}
  return predict


def hbm_chain(iters: int) -> Callable:
  """(x, c) ↦ x·c·c…: `iters` full read-and-write passes over x in one program. `c` is an
  argument (with c = −1 the values stay exactly ±x, never zero, but XLA cannot fold the
  products), and an optimisation barrier after each pass keeps XLA from fusing passes into
  one should it unroll the loop: every pass reads and writes the whole buffer."""
  def chain(x, c):
    return jax.lax.fori_loop(0, iters, lambda i, y: jax.lax.optimization_barrier(y * c), x)
  return jax.jit(chain)
