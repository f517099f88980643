"""BlendNet: branch shapes, GAP+linear by hand, detection-head init, Grad-CAM by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ctjax.errors import ConfigError
from ctjax.models import blendnet


class IdentityBackbone(nn.Module):
  """Stand-in: the feature map is a fixed 4× average-pooled input (no parameters)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    fmap = nn.avg_pool(x, (4, 4), strides=(4, 4))
    return {"feature_map": fmap, "pooled": jnp.mean(fmap, axis=(1, 2))}


def _config(backbone="resnet50", width=1 / 32):
  return ml_collections.ConfigDict(dict(backbone=backbone, width=width, det_hidden=8,
                                        num_classes=3, dtype="float32", param_dtype="float32"))


@pytest.mark.parametrize("backbone,size,grid", [("resnet50", 64, 2), ("vgg16", 64, 2)])
def test_branch_shapes_on_each_backbone(backbone, size, grid):
  model = blendnet.build_blendnet(_config(backbone))
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)   # shapes only: fast on 2 cores.
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  out = jax.eval_shape(model.apply, blendnet.strip_perturbations(variables), x)
  assert out["logits"].shape == (2, 3)
  assert out["det"].shape == (2, grid, grid, blendnet.NUM_DET_CHANNELS)
  assert out["logits"].dtype == jnp.float32
  assert "perturbations" in variables
  assert "perturbations" not in blendnet.strip_perturbations(variables)


def test_unknown_backbone_is_a_config_error():
  with pytest.raises(ConfigError, match="resnet50"):
    blendnet.build_blendnet(_config("alexnet"))


def test_classifier_is_gap_plus_linear_and_detection_starts_at_prior():
  model = blendnet.BlendNet(backbone=IdentityBackbone(), det_hidden=4)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
  variables = blendnet.strip_perturbations(model.init(jax.random.PRNGKey(2), x))
  out = model.apply(variables, x)
  p = variables["params"]
  fmap = np.asarray(x).reshape(3, 4, 4, 4, 4, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(out["feature_map"], fmap, rtol=1e-5, atol=1e-6)
  want = fmap.mean(axis=(1, 2)) @ np.asarray(p["classifier"]["kernel"]) + np.asarray(
      p["classifier"]["bias"])
  np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-6)
  bias = np.asarray(p["det_conv2"]["bias"])
  assert bias[0] == pytest.approx(np.log(0.01 / 0.99), rel=1e-5)
  np.testing.assert_array_equal(bias[1:], 0.0)


def test_grad_cam_matches_hand_formula():
  # logits = mean_hw(A) W + b, so dy_c/dA = W[:, c] / (h w) everywhere and
  # Grad-CAM_c = ReLU(A · W[:, c]) / (h w), scaled to max 1, then resized to the input.
  model = blendnet.BlendNet(backbone=IdentityBackbone(), det_hidden=4)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 16, 3))
  variables = blendnet.strip_perturbations(model.init(jax.random.PRNGKey(4), x))
  kernel = np.asarray(variables["params"]["classifier"]["kernel"])
  cam = np.asarray(blendnet.grad_cam(model, variables, x, class_index=2))
  fmap = np.asarray(x).reshape(2, 4, 4, 4, 4, 3).mean(axis=(2, 4))
  raw = np.maximum(fmap @ kernel[:, 2], 0.0)
  want = np.asarray(jax.image.resize(jnp.asarray(raw), (2, 16, 16), "bilinear"))
  want = want / want.max(axis=(1, 2), keepdims=True)
  assert cam.shape == (2, 16, 16)
  np.testing.assert_allclose(cam, want, rtol=1e-4, atol=1e-5)
  assert cam.max() == pytest.approx(1.0)


class _ConvBackbone(nn.Module):
  """Stand-in with parameters on both sides of the feature map: conv, ReLU, 4× average pool."""

  @nn.compact
  def __call__(self, x, *, train=False):
    h = nn.relu(nn.Conv(6, (3, 3))(x))
    return {"feature_map": nn.avg_pool(h, (4, 4), (4, 4))}


def _grad_cam_two_passes(model, variables, x, class_index=None):
  """`blendnet.grad_cam` as it was: a forward pass for the map and the logits, then a second
  forward pass inside `jax.grad`; the predicted class from a third (`write_grad_cam`)."""
  variables = blendnet.strip_perturbations(variables)
  out = model.apply(variables, x, train=False)
  fmap, logits = out["feature_map"], out["logits"]
  cls = (jnp.argmax(logits, axis=-1) if class_index is None
         else jnp.broadcast_to(jnp.asarray(class_index, jnp.int32), logits.shape[:1]))

  def score(perturbations):
    out = model.apply({**variables, "perturbations": perturbations}, x, train=False)
    return jnp.sum(jnp.take_along_axis(out["logits"], cls[:, None], axis=-1))

  grads = jax.grad(score)({"feature_map": jnp.zeros_like(fmap)})["feature_map"]
  weights = jnp.mean(grads.astype(jnp.float32), axis=(1, 2), keepdims=True)
  cam = nn.relu(jnp.sum(weights * fmap.astype(jnp.float32), axis=-1))
  cam = jax.image.resize(cam, (cam.shape[0],) + x.shape[1:3], method="bilinear")
  cam = cam / jnp.maximum(jnp.max(cam, axis=(1, 2), keepdims=True), 1e-12)
  logits = model.apply(variables, x, train=False)["logits"]
  return cam, logits


@pytest.mark.parametrize("class_index", [None, 1])
def test_grad_cam_in_one_pass_equals_the_two_pass_form(class_index):
  model = blendnet.BlendNet(backbone=_ConvBackbone(), det_hidden=4)
  x = jax.random.normal(jax.random.PRNGKey(5), (3, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(6), x)
  cam, logits = blendnet.grad_cam_and_logits(model, variables, x, class_index)
  want_cam, want_logits = _grad_cam_two_passes(model, variables, x, class_index)
  np.testing.assert_array_equal(np.asarray(cam), np.asarray(want_cam))
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(want_logits))
  np.testing.assert_array_equal(np.asarray(blendnet.grad_cam(model, variables, x, class_index)),
                                np.asarray(want_cam))
