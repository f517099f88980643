"""Sequence layers of DrCT1/DrCT2 (paper section V.A): feature attention, BiGRU, slice attention.

Axes: B batch, T (= m) slices, C feature dims, H GRU hidden size. Softmaxes run in float32
whatever the compute dtype.

The GRU follows `torch.nn.GRU`'s gate equations exactly (gate order r, z, n; separate input and
hidden biases; `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`), so that weights trained in the
authors' PyTorch code can be loaded with `gru_params_from_torch` and give the same outputs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ctjax.models import gru_pallas

Dtype = Any


class FeatureAttention(nn.Module):
  """Eq. (3): w_i = softmax_i(z_i) over the feature dims; x = z ⊙ w (element-wise).

  Parameter-free, as in the paper. `rescale=True` multiplies the weights by C so that uniform
  attention leaves the features unchanged (a normalisation, not in the paper: the raw weights
  average 1/C and shrink the GRU input by that factor).
  """
  rescale: bool = False

  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z [..., C] → (x [..., C] in z's dtype, weights float32 [..., C] summing to 1)."""
    w = jax.nn.softmax(z.astype(jnp.float32), axis=-1)
    scale = z.shape[-1] if self.rescale else 1.0
    x = z * (w * scale).astype(z.dtype)
    return x, w


class SliceAttention(nn.Module):
  """Eqs. (5)-(6): a_t = Dense→1(ŷ_t), w = softmax_t(a); returns ŷ ⊙ w (element-wise)."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """y [B, T, D] → (weighted y [B, T, D], weights float32 [B, T] summing to 1 over T)."""
    assert y.ndim == 3, f"SliceAttention expects [B, T, D], got {y.shape}"
    a = nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name="mapping")(y)[..., 0]
    w = jax.nn.softmax(a.astype(jnp.float32), axis=-1)
    return y * w[..., None].astype(y.dtype), w


class _Linear(nn.Module):
  """Holds a Dense-shaped {kernel [in, out], bias [out]} pair (nn.Dense's initialisers)."""
  in_dim: int
  out_dim: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", self.kernel_init, (self.in_dim, self.out_dim), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.out_dim,), self.param_dtype)
    return kernel, bias


class GRUDirection(nn.Module):
  """The parameters of one direction of one `torch.nn.GRU` layer.

  `ih` {kernel [in, 3H], bias [3H]} and `hh` {kernel [H, 3H], bias [3H]}, gate order (r, z, n)
  as torch's weight_ih_l0 / weight_hh_l0 (transposed). `BiGRU` runs both directions at once.
  """
  hidden_size: int
  in_dim: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(W_i [in, 3H], b_i [3H], W_h [H, 3H], b_h [3H])."""
    h = self.hidden_size
    wi, bi = _Linear(self.in_dim, 3 * h, param_dtype=self.param_dtype, name="ih")()
    wh, bh = _Linear(h, 3 * h, nn.initializers.orthogonal(), param_dtype=self.param_dtype,
                     name="hh")()
    return wi, bi, wh, bh


def _gates(gi: jax.Array, gh: jax.Array):
  """torch.nn.GRU's gates from the input and hidden projections [..., 3H]: (r, z, n, gh_n)."""
  i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
  h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
  r = jax.nn.sigmoid(i_r + h_r)
  z = jax.nn.sigmoid(i_z + h_z)
  n = jnp.tanh(i_n + r * h_n)
  return r, z, n, h_n


def _at_step(a: jax.Array, s: int) -> jax.Array:
  """[2, T, …] → [2, …]: what both directions see at step s (forward at t = s, backward at
  t = T-1-s)."""
  return jnp.stack([a[0, s], a[1, a.shape[1] - 1 - s]])


def _in_time_order(steps: list[jax.Array]) -> jax.Array:
  """Per-step [2, …] values (step order) → [2, T, …] in time order for both directions."""
  t = len(steps)
  return jnp.stack([jnp.stack([x[0] for x in steps]),
                    jnp.stack([steps[t - 1 - i][1] for i in range(t)])])


def _previous_states(hs: jax.Array) -> jax.Array:
  """hs [2, T, B, H] → the state each step started from (zeros first): forward h_{t-1},
  backward h_{t+1}."""
  zero = jnp.zeros_like(hs[:, :1])
  return jnp.concatenate([jnp.concatenate([zero[0], hs[0, :-1]])[None],
                          jnp.concatenate([hs[1, 1:], zero[1]])[None]])


KERNELS = ("auto", "xla")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def bidirectional_recurrence(gi: jax.Array, wh: jax.Array, bh: jax.Array,
                             kernels: str = "auto") -> jax.Array:
  """Both directions of a GRU layer from their input projections, one pass for the two.

  gi [2, T, B, 3H] (W_i x_t + b_i, time order, forward then backward direction), wh
  [2, H, 3H], bh [2, 3H] → hidden states [2, T, B, H] in time order.

  With `kernels="auto"`, on NVIDIA GPUs (where shapes allow, `gru_pallas.supported`) each way
  is one Pallas kernel over all steps (`ctjax.models.gru_pallas`: checked against the XLA form
  in Pallas's interpreter; `python -m benchmarks.gpu` compares the two on the GPU it runs on);
  with `kernels="xla"`, or elsewhere, the T steps are unrolled XLA ops
  (static slices: no loop counter, no per-step buffer updates), each running the two
  directions' hidden products as one batched matmul: two kernels a step. The backward pass
  recomputes the gates of every step with one matmul, walks the steps back with one
  elementwise kernel and one matmul each, and forms the weight gradients with one matmul over
  all steps (instead of one per step). The choice is made when lowering for a platform
  (`jax.lax.platform_dependent`), so ahead-of-time and exported programs get the one of their
  target."""
  return _recurrence_fwd(gi, wh, bh, kernels)[0]


def _on_gpu_kernels(kernels: str, gi: jax.Array, xla_fn, kernel_fn, *args):
  if kernels not in KERNELS:
    raise ValueError(f"gru_kernel={kernels!r}; expected one of {KERNELS}")
  if kernels == "xla" or not gru_pallas.supported(gi):
    return xla_fn(*args)
  return jax.lax.platform_dependent(*args, cuda=kernel_fn, default=xla_fn)


def _recurrence_fwd(gi, wh, bh, kernels):
  kernel = gru_pallas.batch_parallel(gru_pallas.forward, _xla_forward, (0,), 1,
                                     "i t b k, i h k, i k -> i t b h")
  hs = _on_gpu_kernels(kernels, gi, _xla_forward, kernel, gi, wh, bh)
  return hs, (gi, wh, bh, hs)


def _xla_forward(gi, wh, bh):
  _, t, b, _ = gi.shape
  h = jnp.zeros((2, b, wh.shape[1]), gi.dtype)
  steps = []
  for s in range(t):
    gh = jnp.einsum("dbh,dhk->dbk", h, wh) + bh[:, None, :]
    r, z, n, _ = _gates(_at_step(gi, s), gh)
    h = (1.0 - z) * n + z * h
    steps.append(h)
  return _in_time_order(steps)


def _recurrence_bwd(kernels, res, d_hs):
  gi, wh, bh, hs = res
  kernel = gru_pallas.batch_parallel(
      gru_pallas.backward, _xla_backward, (0, 3, 4), 2,
      "i t b k, i h k, i k, i t b h, i t b h -> i t b k, i t b k")
  d_gi, d_gh = _on_gpu_kernels(kernels, gi, _xla_backward, kernel, gi, wh, bh, hs, d_hs)
  d_wh = jnp.einsum("dtbh,dtbk->dhk", _previous_states(hs), d_gh)
  d_bh = d_gh.sum(axis=(1, 2))
  return d_gi, d_wh.astype(wh.dtype), d_bh.astype(bh.dtype)


def _xla_backward(gi, wh, bh, hs, d_hs):
  """(d gi, d (W_h h + b_h)) [2, T, B, 3H]."""
  t, h = gi.shape[1], wh.shape[1]
  h_prev = _previous_states(hs)
  gh = jnp.einsum("dtbh,dhk->dtbk", h_prev, wh) + bh[:, None, None, :]
  r, z, n, h_n = _gates(gi, gh)
  # With dh the whole gradient reaching a step's output, every gate gradient is dh times a
  # factor known from the forward values: dn = dh·a_n, dz = dh·a_z, dr = dh·a_r, and
  # d(W_h h + b_h) = dh·[a_r, a_z, a_n·r]. Only dh itself is sequential:
  # dh_{s-1} = d_hs_{s-1} + dh_s·z_s + d(W_h h + b_h)_s W_hᵀ.
  a_n = (1.0 - z) * (1.0 - n * n)
  a_z = (h_prev - n) * z * (1.0 - z)
  a_r = a_n * h_n * r * (1.0 - r)
  coef = jnp.concatenate([a_r, a_z, a_n * r], axis=-1)
  # One buffer per step, [dh·coef | dh]: the matmul reads it against [W_hᵀ; 0] and the next
  # step reads its dh, so a step is one elementwise kernel and one matmul.
  w_ext = jnp.concatenate([jnp.swapaxes(wh, 1, 2), jnp.zeros((2, h, h), wh.dtype)], axis=1)
  ext = [None] * t
  carry = jnp.zeros_like(hs[:, 0])
  for s in reversed(range(t)):
    dh = _at_step(d_hs, s).astype(hs.dtype) + carry
    ext[s] = jnp.concatenate([jnp.tile(dh, (1, 1, 3)) * _at_step(coef, s), dh], axis=-1)
    if s:   # dh read back from the step's buffer: the step stays one kernel
      carry = (ext[s][..., 3 * h:] * _at_step(z, s)
               + jnp.einsum("dbk,dkh->dbh", ext[s], w_ext))
  ext = _in_time_order(ext)
  d_gh, dh = ext[..., :3 * h], ext[..., 3 * h:]
  d_gi = jnp.tile(dh, (1, 1, 1, 3)) * jnp.concatenate([a_r, a_z, a_n], axis=-1)
  return d_gi, d_gh


bidirectional_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class BiGRU(nn.Module):
  """`torch.nn.GRU(in, hidden_size, num_layers, batch_first=True, bidirectional=True)`.

  Output [B, T, 2H]: forward and backward states concatenated per step, as torch returns them.
  Per layer the input projections of both directions and every step are one matmul, and the
  recurrence runs both directions together (`bidirectional_recurrence`).
  """
  hidden_size: int
  num_layers: int = 1
  kernels: str = "auto"          # the recurrence on NVIDIA GPUs: auto (Pallas) | xla
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    assert x.ndim == 3, f"BiGRU expects [B, T, C], got {x.shape}"
    b, t, _ = x.shape
    for layer in range(self.num_layers):
      dirs = [GRUDirection(self.hidden_size, x.shape[-1], param_dtype=self.param_dtype,
                           name=f"l{layer}_{name}")() for name in ("forward", "backward")]
      wi, bi, wh, bh = (jnp.stack(p).astype(self.dtype) for p in zip(*dirs))
      # Both directions' input projections of every step: one plain [B·T, C] x [C, 2·3H]
      # matmul (as an einsum with the direction as a batch axis, TPU compiles it into a
      # convolution over time that does T times the work).
      c, k = x.shape[-1], 3 * self.hidden_size
      gi = x.astype(self.dtype).reshape(b * t, c) @ jnp.transpose(wi, (1, 0, 2)).reshape(c, 2 * k)
      gi = jnp.transpose(gi.reshape(b, t, 2, k), (2, 1, 0, 3)) + bi[:, None, None, :]
      hs = bidirectional_recurrence(gi, wh, bh, self.kernels)               # [2, T, B, H]
      x = jnp.transpose(hs, (2, 1, 0, 3)).reshape(b, t, 2 * self.hidden_size)
    return x


def gru_params_from_torch(state_dict: Mapping[str, Any], num_layers: int = 1) -> dict:
  """`torch.nn.GRU(bidirectional=True).state_dict()` → `BiGRU` params (numpy float32).

  Accepts torch tensors or numpy arrays (keys `weight_ih_l0`, `bias_hh_l0_reverse`, …).
  """
  def arr(key):
    v = state_dict[key]
    if hasattr(v, "detach"):
      v = v.detach().cpu().numpy()
    return np.asarray(v, np.float32)

  params = {}
  for layer in range(num_layers):
    for suffix, name in (("", "forward"), ("_reverse", "backward")):
      params[f"l{layer}_{name}"] = {
          "ih": {"kernel": arr(f"weight_ih_l{layer}{suffix}").T,
                 "bias": arr(f"bias_ih_l{layer}{suffix}")},
          "hh": {"kernel": arr(f"weight_hh_l{layer}{suffix}").T,
                 "bias": arr(f"bias_hh_l{layer}{suffix}")},
      }
  return params


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid, "gelu": nn.gelu,
    "identity": lambda x: x,
}


class DependencyLearning(nn.Module):
  """Section V.A.2 / eq. (4): BiGRU, then ŷ_t = g(W_y [a→_t, a←_t] + b_y)."""
  hidden_size: int
  out_dim: int
  activation: str = "tanh"
  num_layers: int = 1
  gru_kernel: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = BiGRU(self.hidden_size, self.num_layers, kernels=self.gru_kernel, dtype=self.dtype,
              param_dtype=self.param_dtype, name="bigru")(x)
    y = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(a)
    return ACTIVATIONS[self.activation](y)
