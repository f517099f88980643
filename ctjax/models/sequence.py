"""Sequence layers of DrCT1/DrCT2 (paper section V.A): feature attention, BiGRU, slice attention.

Axes: B batch, T (= m) slices, C feature dims, H GRU hidden size. Softmaxes run in float32
whatever the compute dtype.

The GRU follows `torch.nn.GRU`'s gate equations exactly (gate order r, z, n; separate input and
hidden biases; `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`), so that weights trained in the
authors' PyTorch code can be loaded with `gru_params_from_torch` and give the same outputs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
  """Holds a Dense-shaped {kernel [in, out], bias [out]} pair for use inside a scan body."""
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
  """One direction of one `torch.nn.GRU` layer, scanned over time.

  Params: `ih` {kernel [in, 3H], bias [3H]} and `hh` {kernel [H, 3H], bias [3H]}, gate order
  (r, z, n) as torch's weight_ih_l0 / weight_hh_l0 (transposed).
  """
  hidden_size: int
  reverse: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, T, in] → hidden states [B, T, H] (aligned with the input time steps)."""
    h_size = self.hidden_size
    # The input projection of every step at once (one big matmul), the recurrence in a scan.
    gi = nn.Dense(3 * h_size, dtype=self.dtype, param_dtype=self.param_dtype, name="ih")(x)
    kernel, bias = _Linear(h_size, 3 * h_size, nn.initializers.orthogonal(),
                           param_dtype=self.param_dtype, name="hh")()
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)

    def step(h, gi_t):
      gh = h @ kernel + bias
      i_r, i_z, i_n = jnp.split(gi_t, 3, axis=-1)
      h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
      r = jax.nn.sigmoid(i_r + h_r)
      z = jax.nn.sigmoid(i_z + h_z)
      n = jnp.tanh(i_n + r * h_n)
      h = (1.0 - z) * n + z * h
      return h, h

    h0 = jnp.zeros((x.shape[0], h_size), gi.dtype)
    _, hs = jax.lax.scan(step, h0, jnp.swapaxes(gi, 0, 1), reverse=self.reverse)
    return jnp.swapaxes(hs, 0, 1)


class BiGRU(nn.Module):
  """`torch.nn.GRU(in, hidden_size, num_layers, batch_first=True, bidirectional=True)`.

  Output [B, T, 2H]: forward and backward states concatenated per step, as torch returns them.
  """
  hidden_size: int
  num_layers: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    assert x.ndim == 3, f"BiGRU expects [B, T, C], got {x.shape}"
    for layer in range(self.num_layers):
      fwd = GRUDirection(self.hidden_size, reverse=False, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"l{layer}_forward")(x)
      bwd = GRUDirection(self.hidden_size, reverse=True, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"l{layer}_backward")(x)
      x = jnp.concatenate([fwd, bwd], axis=-1)
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
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = BiGRU(self.hidden_size, self.num_layers, dtype=self.dtype, param_dtype=self.param_dtype,
              name="bigru")(x)
    y = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(a)
    return ACTIVATIONS[self.activation](y)
