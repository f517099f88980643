"""GPU kernels of the bidirectional GRU recurrence (Pallas on Triton): one launch each way.

The recurrence is sequential in time but independent across batch rows and directions, so each
program of the grid (direction, block of `BLOCK_ROWS` rows) walks all T steps itself, keeping
its hidden state on chip and reading W_h from L2 each step. The XLA form
(`ctjax.models.sequence`) needs two kernels per step; these need one launch for all steps of
both directions forward, one backward. Same equations and dtypes as the XLA form: products of
the compute dtype accumulated in float32 and rounded to it, gates evaluated in float32, states
stored in the compute dtype.

Arrays as in `sequence.bidirectional_recurrence`: gi [2, T, B, 3H] (input projections, time
order, gates r, z, n), wh [2, H, 3H], bh [2, 3H], hs [2, T, B, H]; direction 1 runs from t =
T-1 down to 0.

XLA cannot split a kernel call over devices by itself (it would gather the whole batch onto
every device and run it there): `batch_parallel` declares the calls row-parallel, so on a
data-parallel mesh each device runs its own rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

BLOCK_ROWS = 16   # batch rows per program (Triton's smallest matmul tile)
NUM_WARPS = 4


def supported(gi: jax.Array) -> bool:
  """Shapes these kernels take: H a power of two ≥ 16 (Triton tiles), B a multiple of
  BLOCK_ROWS; static shapes only."""
  _, _, b, h3 = gi.shape
  if not all(isinstance(v, int) for v in (b, h3)):
    return False
  h = h3 // 3
  return h >= 16 and h & (h - 1) == 0 and b % BLOCK_ROWS == 0


def _params(interpret: bool, flops: int):
  """pallas_call arguments; the kernel's FLOPs ride along in its metadata (the compiled HLO
  shows them, as XLA cannot look inside the kernel)."""
  if interpret:
    return {"interpret": True}
  from jax.experimental.pallas import triton as pltriton
  return {"compiler_params": pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
          "metadata": {"flops": str(int(flops))}}


def _time(d, s, t_len):
  """Time index of step s for direction d (forward: s, backward: T-1-s)."""
  return jnp.where(d == 0, s, t_len - 1 - s)


def _hidden(h_prev, wh_ref, bh_ref, d, k, h, dtype):
  """(W_h h + b_h) of gate k for the rows' states, rounded to the compute dtype as XLA's."""
  w = wh_ref[d, :, pl.ds(k * h, h)]
  out = jax.lax.dot_general(h_prev.astype(dtype), w, (((1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32).astype(dtype)
  return (out + bh_ref[d, pl.ds(k * h, h)][None, :]).astype(jnp.float32)


def _back(dg, wh_ref, d, k, h, dtype):
  """dg (W_h of gate k)ᵀ in float32."""
  w = wh_ref[d, :, pl.ds(k * h, h)]
  return jax.lax.dot_general(dg.astype(dtype), w, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _forward_kernel(gi_ref, wh_ref, bh_ref, hs_ref, *, t_len, h, rows):
  d, i = pl.program_id(0), pl.program_id(1)
  r = pl.ds(i * rows, rows)
  dtype = hs_ref.dtype

  def step(s, state):
    t = _time(d, s, t_len)
    gi = [gi_ref[d, t, r, pl.ds(k * h, h)].astype(jnp.float32) for k in range(3)]
    gh = [_hidden(state, wh_ref, bh_ref, d, k, h, dtype) for k in range(3)]
    rg = jax.nn.sigmoid(gi[0] + gh[0])
    z = jax.nn.sigmoid(gi[1] + gh[1])
    n = jnp.tanh(gi[2] + rg * gh[2])
    new = ((1.0 - z) * n + z * state.astype(jnp.float32)).astype(dtype)
    hs_ref[d, t, r, :] = new
    return new

  jax.lax.fori_loop(0, t_len, step, jnp.zeros((rows, h), dtype))


def _backward_kernel(gi_ref, wh_ref, bh_ref, hs_ref, dhs_ref, dgi_ref, dgh_ref, *, t_len, h,
                     rows):
  d, i = pl.program_id(0), pl.program_id(1)
  r = pl.ds(i * rows, rows)
  dtype = hs_ref.dtype

  def step(j, dh):
    s = t_len - 1 - j
    t = _time(d, s, t_len)
    prev = jnp.clip(jnp.where(d == 0, t - 1, t + 1), 0, t_len - 1)
    h_prev = hs_ref[d, prev, r, :].astype(jnp.float32) * (s > 0).astype(jnp.float32)
    gi = [gi_ref[d, t, r, pl.ds(k * h, h)].astype(jnp.float32) for k in range(3)]
    gh = [_hidden(h_prev, wh_ref, bh_ref, d, k, h, dtype) for k in range(3)]
    rg = jax.nn.sigmoid(gi[0] + gh[0])
    z = jax.nn.sigmoid(gi[1] + gh[1])
    n = jnp.tanh(gi[2] + rg * gh[2])
    dh = dh + dhs_ref[d, t, r, :].astype(jnp.float32)
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    dr = dn * gh[2] * rg * (1.0 - rg)
    for k, (a, b) in enumerate(((dr, dr), (dz, dz), (dn, dn * rg))):
      dgi_ref[d, t, r, pl.ds(k * h, h)] = a.astype(dtype)
      dgh_ref[d, t, r, pl.ds(k * h, h)] = b.astype(dtype)
    return (dh * z + _back(dr, wh_ref, d, 0, h, dtype) + _back(dz, wh_ref, d, 1, h, dtype)
            + _back(dn * rg, wh_ref, d, 2, h, dtype))

  jax.lax.fori_loop(0, t_len, step, jnp.zeros((rows, h), jnp.float32))


def forward(gi: jax.Array, wh: jax.Array, bh: jax.Array, *, interpret: bool = False
            ) -> jax.Array:
  """Hidden states hs [2, T, B, H] (compute dtype = gi's)."""
  _, t_len, b, h3 = gi.shape
  h = h3 // 3
  kernel = functools.partial(_forward_kernel, t_len=t_len, h=h, rows=BLOCK_ROWS)
  flops = 2 * t_len * b * 3 * 2 * h * h   # per step and direction: [B,H] x [H,3H]
  return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((2, t_len, b, h), gi.dtype),
                        grid=(2, b // BLOCK_ROWS), name="bigru_forward",
                        **_params(interpret, flops))(gi, wh.astype(gi.dtype),
                                                     bh.astype(gi.dtype))


def backward(gi: jax.Array, wh: jax.Array, bh: jax.Array, hs: jax.Array, d_hs: jax.Array, *,
             interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """(d gi, d (W_h h + b_h)) [2, T, B, 3H] from the states' cotangents d_hs [2, T, B, H]."""
  _, t_len, b, h3 = gi.shape
  h = h3 // 3
  kernel = functools.partial(_backward_kernel, t_len=t_len, h=h, rows=BLOCK_ROWS)
  out = jax.ShapeDtypeStruct(gi.shape, gi.dtype)
  flops = 2 * t_len * b * 6 * 2 * h * h   # the gates recomputed, then the products back
  return pl.pallas_call(kernel, out_shape=(out, out), grid=(2, b // BLOCK_ROWS),
                        name="bigru_backward", **_params(interpret, flops))(
                            gi, wh.astype(gi.dtype), bh.astype(gi.dtype), hs,
                            d_hs.astype(gi.dtype))


def batch_parallel(kernel, fallback, batch_args: tuple[int, ...], num_outputs: int,
                   rule: str):
  """`kernel(*args)` split over the devices along the batch axis (axis 2) of the arguments
  `batch_args` and of its outputs, the other arguments whole on every device. Per device it
  runs `kernel` on its rows, or `fallback` (the XLA form) where they are not whole blocks.
  `rule`: the einsum-like sharding rule of the call (factor b the batch)."""
  from jax.experimental.custom_partitioning import custom_partitioning
  from jax.sharding import NamedSharding, PartitionSpec as P

  @custom_partitioning
  def call(*args):
    return kernel(*args)

  def shardings(mesh, arg_shapes):
    spec = arg_shapes[batch_args[0]].sharding.spec
    rows = NamedSharding(mesh, P(None, None, spec[2] if len(spec) > 2 else None, None))
    whole = NamedSharding(mesh, P())
    args = tuple(rows if i in batch_args else whole for i in range(len(arg_shapes)))
    return args, (rows if num_outputs == 1 else (rows,) * num_outputs)

  def infer(mesh, arg_shapes, result_shape):
    return shardings(mesh, arg_shapes)[1]

  def partition(mesh, arg_shapes, result_shape):
    args, outs = shardings(mesh, arg_shapes)

    def local(*xs):
      return kernel(*xs) if supported(xs[0]) else fallback(*xs)
    return mesh, local, outs, args

  call.def_partition(partition=partition, infer_sharding_from_operands=infer,
                     sharding_rule=rule, need_replication_factors=("i", "t", "k", "h"))
  return call
