"""ctjax.models.drct: shapes, key-slice selection, APS zoom, frozen backbone, jit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctjax.models import drct
from ctjax.models import pretrained
from ctjax.models.vgg import VGG16


class TinyBackbone(nn.Module):
  """Stand-in with the VGG16 contract: {"feature_map" [N,h,w,C], "pooled" [N,C]} (max pool)."""
  channels: int = 8

  @nn.compact
  def __call__(self, x, *, train=False):
    f = nn.relu(nn.Conv(self.channels, (3, 3), strides=(4, 4), name="conv")(x))
    return {"feature_map": f, "pooled": f.max(axis=(1, 2))}


def small(**kw):
  args = dict(backbone=TinyBackbone(), num_labels=3, mkey=3, aps_size=40, gru_hidden=8,
              seq_dim=8, fc_widths=(16, 8), aps_fc_dim=8)
  args.update(kw)
  return drct.DrCT(**args)


def init(model, x, **kw):
  """He-scaled numpy weights with the shapes of `model.init` (eager Flax init compiles its RNG
  initialisers op by op: ~10 s per model on 2 CPU cores, for values no test depends on)."""
  return pretrained.random_variables(model, x, **kw)


@pytest.fixture
def x():
  return jax.random.normal(jax.random.key(2), (2, 6, 32, 32, 3))


def test_select_key_slices_top_k_in_anatomical_order():
  rng = np.random.default_rng(0)
  scores = rng.random((5, 12)).astype(np.float32)
  got = np.asarray(drct.select_key_slices(jnp.asarray(scores), 4))
  want = np.sort(np.argsort(-scores, axis=1)[:, :4], axis=1)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.int32


def test_drct2_shapes_and_attention_properties(x):
  model = small()
  v = init(model, x)
  assert set(v["params"]) == {"backbone", "primary", "aps", "fusion"}
  out = jax.jit(lambda v, x: model.apply(v, x))(v, x)
  assert out["logits"].shape == (2, 3) and out["logits_primary"].shape == (2, 3)
  assert out["logits_aps"].shape == (2, 3)
  assert out["slice_attention"].shape == (2, 6)
  np.testing.assert_allclose(np.asarray(out["slice_attention"].sum(-1)), 1.0, rtol=1e-5)
  assert out["feature_attention"].shape == (2, 6, 8)
  np.testing.assert_allclose(np.asarray(out["feature_attention"].sum(-1)), 1.0, rtol=1e-5)
  hl = np.asarray(out["highlight"])
  assert hl.shape == (2, 6, 8, 8) and hl.min() >= 0
  # The raw map: ReLU(Σ_c f_c A_c) of each slice's own feature map, not rescaled per slice, so
  # a slice with weaker activations has a weaker map (values compare across slices and scans).
  fmap = np.asarray(model.apply(v, x.reshape((12, 32, 32, 3)),
                                method=drct.DrCT.backbone_features)["feature_map"])
  fw = np.asarray(out["feature_attention"]).reshape(12, 8)
  want = np.maximum(np.einsum("nhwc,nc->nhw", fmap, fw), 0).reshape(2, 6, 8, 8)
  np.testing.assert_allclose(hl, want, rtol=1e-5, atol=1e-6)
  assert len(np.unique(hl.max(axis=(2, 3)).round(5))) > 1
  # Key slices: the top-mkey slices of the slice attention, ascending.
  want = np.sort(np.argsort(-np.asarray(out["slice_attention"]), axis=1)[:, :3], axis=1)
  np.testing.assert_array_equal(np.asarray(out["key_indices"]), want)


def test_drct1_has_no_aps(x):
  model = small(aps=False)
  v = init(model, x)
  assert set(v["params"]) == {"backbone", "primary"} and "batch_stats" not in v
  out = model.apply(v, x)
  assert "key_indices" not in out and "logits_aps" not in out
  np.testing.assert_array_equal(np.asarray(out["logits"]), np.asarray(out["logits_primary"]))


@pytest.mark.parametrize("source", ["zoom", "native"])
def test_aps_sees_key_slices_zoomed_bilinearly(x, source):
  model = small(aps_source=source)
  v = init(model, x)
  native = jax.random.normal(jax.random.key(5), (2, 6, 56, 56, 3))
  out, inter = model.apply(v, x, native=native, capture_intermediates=True)
  calls = inter["intermediates"]["backbone"]["__call__"]
  assert len(calls) == 2   # primary pass, then APS pass
  src = x if source == "zoom" else native
  keys = jnp.take_along_axis(src, out["key_indices"][:, :, None, None, None], axis=1)
  zoomed = jax.image.resize(keys, (2, 3, 40, 40, 3), "bilinear").reshape(6, 40, 40, 3)
  want = TinyBackbone().apply({"params": v["params"]["backbone"]}, zoomed)["pooled"]
  np.testing.assert_allclose(np.asarray(calls[1]["pooled"]), np.asarray(want), atol=1e-5)


def test_random_selection_uses_aps_rng(x):
  model = small(selection="random", mkey=3)
  v = init(model, x)
  a = model.apply(v, x, rngs={"aps": jax.random.key(1)})["key_indices"]
  b = model.apply(v, x, rngs={"aps": jax.random.key(2)})["key_indices"]
  for k in (a, b):
    assert np.all(np.diff(np.asarray(k), axis=1) > 0)
  assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_frozen_backbone_gets_no_gradient(x):
  model = small()
  v = init(model, x)

  def loss(params):
    out, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                         rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
    return sum((out[k] ** 2).sum() for k in ("logits", "logits_aps", "logits_primary"))

  g = jax.jit(jax.grad(loss))(v["params"])
  assert all(float(jnp.abs(t).max()) == 0.0 for t in jax.tree.leaves(g["backbone"]))
  assert float(jnp.abs(g["primary"]["head"]["fc1"]["kernel"]).max()) > 0
  assert float(jnp.abs(g["aps"]["fc"]["kernel"]).max()) > 0
  # Unfrozen: gradients reach the backbone.
  model2 = small(freeze_backbone=False)
  g2 = jax.jit(jax.grad(lambda p: (model2.apply(
      {"params": p, "batch_stats": v["batch_stats"]}, x)["logits"] ** 2).sum()))(v["params"])
  assert float(jnp.abs(g2["backbone"]["conv"]["kernel"]).max()) > 0


def test_dropout_only_in_training(x):
  model = small()
  v = init(model, x)
  a = model.apply(v, x)["logits"]
  b = model.apply(v, x)["logits"]
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  t1, _ = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)},
                      mutable=["batch_stats"])
  t2, _ = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)},
                      mutable=["batch_stats"])
  assert not np.allclose(np.asarray(t1["logits"]), np.asarray(t2["logits"]))


def test_with_vgg16_backbone():
  model = drct.DrCT(backbone=VGG16(width=1 / 16), num_labels=2, mkey=2, aps_size=32,
                    gru_hidden=8, seq_dim=8, fc_widths=(8, 8), aps_fc_dim=8)
  x = jax.random.normal(jax.random.key(0), (1, 4, 32, 32, 3))
  v = init(model, x)
  out = jax.jit(lambda v, x: model.apply(v, x))(v, x)
  assert out["feature_attention"].shape == (1, 4, 32)   # 512 × 1/16 channels
  assert out["highlight"].shape == (1, 4, 1, 1)
  assert np.isfinite(np.asarray(out["logits"])).all()


def test_bf16_compute_float32_params_and_outputs(x):
  model = small(dtype=jnp.bfloat16)
  v = init(model, x)
  assert all(t.dtype == jnp.float32 for t in jax.tree.leaves(v["params"]))
  out = model.apply(v, x)
  for k in ("logits", "logits_aps", "slice_attention", "feature_attention"):
    assert out[k].dtype == jnp.float32, k
  assert np.isfinite(np.asarray(out["logits"])).all()


def test_primary_feature_batchnorm_option(x):
  model = small(aps=False, feature_norm="batchnorm", feature_attention_rescale=True)
  v = init(model, x)
  assert "bn" in v["params"]["primary"] and "bn" in v["batch_stats"]["primary"]
  out, upd = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                         mutable=["batch_stats"])
  assert not np.allclose(np.asarray(upd["batch_stats"]["primary"]["bn"]["mean"]), 0)
  np.testing.assert_allclose(np.asarray(out["feature_attention"].sum(-1)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("source,aps", [("zoom", True), ("native", True), ("zoom", False)])
def test_cached_features_equal_full_model(x, source, aps):
  """The feature-cache path (per-slice backbone outputs computed once) gives the full model's
  outputs: key slices gathered from per-slice APS vectors = the zoomed key slices' vectors."""
  model = small(aps_source=source, aps=aps)
  native = jax.random.normal(jax.random.key(5), (2, 6, 40, 40, 3))
  v = init(model, x, native=native)
  full = model.apply(v, x, native=native)
  b, m = x.shape[:2]
  flat = x.reshape((b * m,) + x.shape[2:])
  src = native.reshape((b * m,) + native.shape[2:]) if source == "native" else flat
  f = model.apply(v, flat, src if aps else None, method=drct.DrCT.backbone_features)
  feats = {k: a.reshape((b, m) + a.shape[1:]) for k, a in f.items()}
  assert feats["pooled"].shape == (2, 6, 8) and feats["feature_map"].shape == (2, 6, 8, 8, 8)
  cached = jax.jit(lambda v, f: model.apply(v, None, features=f))(v, feats)
  assert set(cached) == set(full)
  for k in full:
    np.testing.assert_allclose(np.asarray(cached[k]), np.asarray(full[k]), rtol=1e-5,
                               atol=1e-6, err_msg=k)


@pytest.mark.parametrize("frozen", [True, False])
def test_chunked_backbone_equals_one_pass(frozen):
  """`backbone_chunk`: the backbone over chunks of slices in a loop (weights cast to the compute
  dtype once, before it) gives the one-pass outputs and gradients; the stored weights stay
  float32, and a model initialises through the loop too."""
  x = jax.random.normal(jax.random.key(5), (2, 4, 32, 32, 3))
  one = drct.DrCT(backbone=VGG16(width=1 / 16), num_labels=2, mkey=2, aps_size=32,
                  gru_hidden=8, seq_dim=8, fc_widths=(8, 8), aps_fc_dim=8,
                  freeze_backbone=frozen)
  chunked = one.clone(backbone_chunk=2)
  v = init(one, x)
  assert jax.tree.map(np.shape, init(chunked, x)) == jax.tree.map(np.shape, v)

  def loss(model):
    def f(params):
      out = model.apply({**v, "params": params}, x)
      return (out["logits"] ** 2).sum() + (out["logits_aps"] ** 2).sum(), out
    return jax.jit(jax.value_and_grad(f, has_aux=True))(v["params"])

  (l1, o1), g1 = loss(one)
  (l2, o2), g2 = loss(chunked)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(o2["slice_attention"]), np.asarray(o1["slice_attention"]),
                             atol=1e-6)
  for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * (1 + np.abs(b).max()))
  # bf16 compute: the same with bf16 rounding; float32 weights
  one16, chunked16 = one.clone(dtype=jnp.bfloat16), chunked.clone(dtype=jnp.bfloat16)
  b1 = one16.apply(v, x)["logits"]
  b2 = chunked16.apply(v, x)["logits"]
  np.testing.assert_allclose(np.asarray(b2), np.asarray(b1), atol=2e-2)
  assert all(t.dtype == jnp.float32 for t in jax.tree.leaves(init(chunked16, x)["params"]))
