"""ctjax.models.sequence against torch.nn.GRU and the paper's attention equations (3), (5), (6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ctjax.models import sequence
from ctjax.models import pretrained


def _torch_gru(c: int, h: int, num_layers: int, seed: int) -> torch.nn.GRU:
  """A bidirectional torch GRU with non-zero biases everywhere, so that the b_hn-inside-r
  detail is exercised."""
  torch.manual_seed(seed)
  ref = torch.nn.GRU(c, h, num_layers=num_layers, batch_first=True, bidirectional=True)
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if "bias" in name:
        p.uniform_(-0.5, 0.5)
  return ref


@pytest.mark.parametrize("num_layers", [1, 2])
def test_bigru_matches_torch(num_layers):
  b, t, c, h = 3, 7, 10, 6
  ref = _torch_gru(c, h, num_layers, seed=0)
  x = np.random.default_rng(0).normal(size=(b, t, c)).astype(np.float32)
  want, _ = ref(torch.from_numpy(x))
  params = sequence.gru_params_from_torch(ref.state_dict(), num_layers=num_layers)
  model = sequence.BiGRU(h, num_layers=num_layers)
  init = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x))   # shapes, no compile
  assert jax.tree.map(np.shape, init["params"]) == jax.tree.map(np.shape, params)
  got = model.apply({"params": params}, jnp.asarray(x))
  assert got.shape == (b, t, 2 * h)
  np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_bigru_gradients_match_torch(num_layers):
  """The hand-written backward pass (`bidirectional_recurrence`'s VJP) against torch's autograd:
  gradients of the input and of every weight, same weights, same output cotangent."""
  b, t, c, h = 3, 5, 4, 6
  ref = _torch_gru(c, h, num_layers, seed=1)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(b, t, c)).astype(np.float32)
  cot = rng.normal(size=(b, t, 2 * h)).astype(np.float32)
  xt = torch.from_numpy(x).requires_grad_(True)
  out, _ = ref(xt)
  (out * torch.from_numpy(cot)).sum().backward()
  want = sequence.gru_params_from_torch({k: p.grad for k, p in ref.named_parameters()},
                                        num_layers=num_layers)
  params = sequence.gru_params_from_torch(ref.state_dict(), num_layers=num_layers)
  model = sequence.BiGRU(h, num_layers=num_layers)

  def loss(p, xs):
    return jnp.sum(model.apply({"params": p}, xs) * cot)

  g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(g_x), xt.grad.numpy(), atol=1e-5, rtol=1e-5)
  flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
  flat_got = dict(jax.tree_util.tree_flatten_with_path(g_params)[0])
  for path, w in flat_want:
    np.testing.assert_allclose(np.asarray(flat_got[path]), w, atol=1e-5, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


def test_bigru_bfloat16_gradients_follow_float32():
  """bfloat16 compute: the same gradients as float32 to bfloat16's precision."""
  x = jax.random.normal(jax.random.key(2), (2, 6, 5))
  f32 = sequence.BiGRU(4)
  params = pretrained.random_variables(f32, x)

  def grads(model):
    return jax.grad(lambda p: jnp.sum(jnp.sin(model.apply(p, x).astype(jnp.float32))))(params)

  want, got = grads(f32), grads(sequence.BiGRU(4, dtype=jnp.bfloat16))
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=0.05 * np.abs(w).max() + 1e-3)


def test_bigru_directions_are_causal_each_way():
  model = sequence.BiGRU(4)
  x = jax.random.normal(jax.random.key(1), (2, 6, 5))
  params = pretrained.random_variables(model, x)   # eager Flax init of a GRU costs seconds
  y = model.apply(params, x)
  x2 = x.at[:, 5].set(7.0)   # change only the last step
  y2 = model.apply(params, x2)
  # Forward states before the last step cannot see it; backward states all do.
  np.testing.assert_allclose(y[:, :5, :4], y2[:, :5, :4], atol=1e-6)
  assert np.abs(np.asarray(y[:, 0, 4:] - y2[:, 0, 4:])).max() > 1e-4


def test_feature_attention_is_softmax_over_features():
  z = jax.random.normal(jax.random.key(0), (2, 5, 16)) * 3
  x, w = sequence.FeatureAttention()(z)
  np.testing.assert_allclose(np.asarray(w.sum(-1)), 1.0, rtol=1e-6)
  e = np.exp(np.asarray(z) - np.asarray(z).max(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(w), e / e.sum(-1, keepdims=True), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(x), np.asarray(z) * np.asarray(w), rtol=1e-6)
  xs, _ = sequence.FeatureAttention(rescale=True)(z)
  np.testing.assert_allclose(np.asarray(xs), np.asarray(x) * 16, rtol=1e-5)


def test_slice_attention_softmax_over_slices():
  y = jax.random.normal(jax.random.key(0), (3, 8, 5))
  mod = sequence.SliceAttention()
  params = mod.init(jax.random.key(1), y)
  out, w = mod.apply(params, y)
  assert w.shape == (3, 8) and w.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(w.sum(-1)), 1.0, rtol=1e-6)
  k = params["params"]["mapping"]["kernel"][:, 0]
  bias = params["params"]["mapping"]["bias"][0]
  a = np.asarray(y) @ np.asarray(k) + np.asarray(bias)
  e = np.exp(a - a.max(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(w), e / e.sum(-1, keepdims=True), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out), np.asarray(y) * np.asarray(w)[..., None], rtol=1e-5)


def test_dependency_learning_shapes_and_bf16():
  x = jax.random.normal(jax.random.key(0), (2, 6, 12))
  mod = sequence.DependencyLearning(hidden_size=8, out_dim=10, dtype=jnp.bfloat16)
  params = pretrained.random_variables(mod, x)
  y = jax.jit(mod.apply)(params, x)
  assert y.shape == (2, 6, 10) and y.dtype == jnp.bfloat16
  assert jax.tree.leaves(params)[0].dtype == jnp.float32


def test_auto_recurrence_is_the_xla_form_off_gpu():
  """`kernels="auto"` lowers the Triton kernel for CUDA only; on this platform it must give
  the XLA form's values and gradients exactly, and an unknown kernel name is refused."""
  rng = np.random.default_rng(3)
  gi = jnp.asarray(rng.normal(size=(2, 5, 16, 48)).astype(np.float32))   # H = 16, B = 16
  wh = jnp.asarray(rng.normal(size=(2, 16, 48)).astype(np.float32) * 0.3)
  bh = jnp.asarray(rng.normal(size=(2, 48)).astype(np.float32))

  def loss(kernels):
    return jax.value_and_grad(
        lambda g, w, b: jnp.sum(jnp.sin(sequence.bidirectional_recurrence(g, w, b, kernels))),
        argnums=(0, 1, 2))(gi, wh, bh)

  (v_x, g_x), (v_p, g_p) = loss("xla"), loss("auto")
  assert float(v_x) == float(v_p)
  for a, b in zip(g_x, g_p):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="gru_kernel='triton'"):
    sequence.bidirectional_recurrence(gi, wh, bh, "triton")
