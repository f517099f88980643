"""VGG16 / VGG16-BN against torchvision's architecture (rebuilt in torch.nn) with random pretrained."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import torch_models
from ctjax.models import pretrained
from ctjax.models.vgg import VGG16, adaptive_avg_pool

TOL = 1e-4


# Reduced width keeps the fast set cheap on CPU; the classifier head (and the importer's
# (c, h, w) → (h, w, c) permutation) is checked too. Full width: an odd small image here
# (every full-size name and shape), 224/512 in the slow set.
@pytest.mark.parametrize("arch,size,batch", [("vgg16", 224, 2), ("vgg16", 512, 1),
                                             ("vgg16_bn", 131, 1)])
def test_parity_reduced_width(arch, size, batch):
  err = torch_models.compare_with_torch(arch, width=0.25, size=size, batch=batch, seed=size)
  assert set(err) == {"feature_map", "pooled", "logits"}
  assert max(err.values()) <= TOL, err


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn"])
def test_parity_full_width_odd_size(arch):
  err = torch_models.compare_with_torch(arch, width=1.0, size=49, batch=1, seed=3,
                                        include_fc=False)
  assert max(err.values()) <= TOL, err


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn"])
@pytest.mark.parametrize("size", [224, 512, 333])
def test_parity_full_width(arch, size):
  err = torch_models.compare_with_torch(arch, width=1.0, size=size, batch=1, seed=1,
                                        include_fc=size == 224)
  assert max(err.values()) <= TOL, err


def test_parameter_counts_match_torchvision():
  n = lambda arch, **kw: sum(int(np.prod(v)) for k, v in  # noqa: E731
                             pretrained.expected_shapes(arch, **kw).items() if k.startswith("params/"))
  assert n("vgg16") == 14_714_688                       # torchvision vgg16 .features
  assert n("vgg16", include_fc=True) == 138_357_544     # torchvision vgg16, classifier included
  assert n("vgg16_bn", include_fc=True) == 138_365_992  # torchvision vgg16_bn
  assert n("vgg16_bn", include_fc=True) == sum(
      p.numel() for p in torch_models.vgg16_bn().parameters())


def test_pooled_is_global_max_of_feature_map_any_size():
  """DrCT2's adaptive max-pool: max over every position of the conv stack's final map."""
  model = VGG16(width=0.125)
  apply = lambda v, x: torch_models.run_once(model.apply, v, x)  # noqa: E731
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 48, 3))
  variables = pretrained.random_variables(model, x, seed=1)
  out = apply(variables, x)
  assert out["feature_map"].shape == (2, 1, 1, 64)     # 32 px → 1×1 after five pools
  np.testing.assert_array_equal(out["pooled"], out["feature_map"].max(axis=(1, 2)))
  assert "logits" not in out
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 224, 224, 3))
  out = apply(variables, x)
  assert out["feature_map"].shape == (1, 7, 7, 64)
  np.testing.assert_array_equal(out["pooled"], out["feature_map"].max(axis=(1, 2)))


@pytest.mark.parametrize("size", [7, 14, 10, 3, 16])
def test_adaptive_avg_pool_matches_torch(size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(size).standard_normal((2, size, size + 1, 5), np.float32)
  want = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x).permute(0, 3, 1, 2), (7, 7)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), (7, 7)), want, rtol=1e-5,
                             atol=1e-6)


def test_bfloat16_within_1e2_of_float32():
  err = torch_models.compare_with_torch("vgg16_bn", width=0.25, size=48, batch=2, seed=5,
                                        dtype=jnp.bfloat16, include_fc=False)
  assert err["pooled"] <= 1e-2 and err["feature_map"] <= 1e-2, err


def test_train_mode_updates_batch_stats_like_torch_momentum():
  model = VGG16(width=0.125, batch_norm=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = pretrained.random_variables(model, x, seed=1)
  _, updates = torch_models.run_once(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
  conv0 = variables["params"]["conv0"]
  y = jax.lax.conv_general_dilated(x, conv0["kernel"], (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv0["bias"]
  # torch momentum 0.1 == flax momentum 0.9: new = 0.9·old + 0.1·batch statistic.
  np.testing.assert_allclose(updates["batch_stats"]["bn0"]["mean"],
                             0.1 * y.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["bn0"]["var"],
                             0.9 + 0.1 * y.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_dtype_and_param_dtype_are_threaded_through():
  model = VGG16(width=0.125, batch_norm=True, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  assert variables["params"]["conv12"]["kernel"].dtype == jnp.bfloat16
  assert variables["batch_stats"]["bn0"]["var"].dtype == jnp.float32   # statistics stay f32
  out = jax.eval_shape(model.apply, variables, x)
  assert out["feature_map"].dtype == jnp.bfloat16 and out["pooled"].dtype == jnp.bfloat16


def test_fold_batch_norm_equals_bn_model_in_inference():
  from ctjax.models.vgg import fold_batch_norm
  bn_model = VGG16(width=0.125, batch_norm=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = pretrained.random_variables(bn_model, x, seed=3)
  rng = np.random.default_rng(4)   # non-trivial running statistics and affine parameters
  stats = jax.tree.map(lambda a: np.asarray(a), variables["batch_stats"])
  for name, s in stats.items():
    s["mean"] = rng.normal(0, 0.5, s["mean"].shape).astype(np.float32)
    s["var"] = rng.uniform(0.2, 3.0, s["var"].shape).astype(np.float32)
    p = variables["params"][name]
    p["scale"] = rng.uniform(0.5, 2.0, p["scale"].shape).astype(np.float32)
    p["bias"] = rng.normal(0, 0.3, p["bias"].shape).astype(np.float32)
  variables = {"params": variables["params"], "batch_stats": stats}
  want = bn_model.apply(variables, x, train=False)
  folded = fold_batch_norm(variables)
  assert sorted(folded["params"]) == sorted(f"conv{i}" for i in range(13))
  got = VGG16(width=0.125).apply(folded, x, train=False)
  for k in ("feature_map", "pooled"):
    scale = float(np.abs(want[k]).max())
    assert scale > 0.1
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5 * scale)
