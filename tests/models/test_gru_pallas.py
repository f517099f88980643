"""ctjax.models.gru_pallas (run by Pallas's interpreter on the CPU) against the XLA form of
the same recurrence (`ctjax.models.sequence`), which is itself checked against torch.nn.GRU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctjax.models import gru_pallas, sequence

T, B, H = 5, 32, 16


def _inputs(dtype, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  gi = jax.random.normal(k[0], (2, T, B, 3 * H)).astype(dtype)
  wh = (0.3 * jax.random.normal(k[1], (2, H, 3 * H))).astype(dtype)
  bh = (0.3 * jax.random.normal(k[2], (2, 3 * H))).astype(dtype)
  d_hs = jax.random.normal(k[3], (2, T, B, H)).astype(dtype)
  return gi, wh, bh, d_hs


def test_supported_shapes():
  assert gru_pallas.supported(jnp.zeros((2, T, 32, 3 * 16)))
  assert not gru_pallas.supported(jnp.zeros((2, T, 32, 3 * 24)))    # H not a power of two
  assert not gru_pallas.supported(jnp.zeros((2, T, 24, 3 * 16)))    # B not whole blocks
  assert not gru_pallas.supported(jnp.zeros((2, T, 32, 3 * 8)))     # H below a tile


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 0.05)])
def test_kernels_equal_the_xla_recurrence(dtype, tol):
  gi, wh, bh, d_hs = _inputs(dtype)
  want = sequence._xla_forward(gi, wh, bh)
  got = gru_pallas.forward(gi, wh, bh, interpret=True)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=tol, rtol=0)
  want_gi, want_gh = sequence._xla_backward(gi, wh, bh, want, d_hs)
  got_gi, got_gh = gru_pallas.backward(gi, wh, bh, want, d_hs, interpret=True)
  scale = float(jnp.abs(want_gi.astype(jnp.float32)).max())
  for g, w in ((got_gi, want_gi), (got_gh, want_gh)):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               atol=tol * max(scale, 1.0), rtol=0)


def test_directions_run_opposite_ways():
  """Changing the last step's input changes every backward-direction state and no forward
  state before it."""
  gi, wh, bh, _ = _inputs(jnp.float32, seed=1)
  a = gru_pallas.forward(gi, wh, bh, interpret=True)
  b = gru_pallas.forward(gi.at[:, T - 1].add(1.0), wh, bh, interpret=True)
  np.testing.assert_allclose(a[0, :T - 1], b[0, :T - 1], atol=1e-6)
  assert float(jnp.abs(a[1, 0] - b[1, 0]).max()) > 1e-4


def test_batch_parallel_runs_each_devices_rows():
  """On a 4-device data mesh the call is split by rows (no gather of the batch) and gives the
  unsplit result; a device whose rows are not whole blocks runs the fallback."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,))
  for b, kernel_rows in ((64, True), (32, False)):
    k = jax.random.split(jax.random.key(7), 3)
    gi = jax.random.normal(k[0], (2, T, b, 3 * H))
    wh = 0.3 * jax.random.normal(k[1], (2, H, 3 * H))
    bh = 0.3 * jax.random.normal(k[2], (2, 3 * H))
    calls = []

    def kernel(*a):
      calls.append(a[0].shape)
      return gru_pallas.forward(*a, interpret=True)

    fn = gru_pallas.batch_parallel(kernel, sequence._xla_forward, (0,), 1,
                                   "i t b k, i h k, i k -> i t b h")
    rows = NamedSharding(mesh, P(None, None, "data", None))
    whole = NamedSharding(mesh, P())
    jitted = jax.jit(fn, in_shardings=(rows, whole, whole), out_shardings=rows)
    compiled = jitted.lower(gi, wh, bh).compile()
    assert "all-gather" not in compiled.as_text()
    got = compiled(jax.device_put(gi, rows), jax.device_put(wh, whole),
                   jax.device_put(bh, whole))
    np.testing.assert_allclose(np.asarray(got), np.asarray(sequence._xla_forward(gi, wh, bh)),
                               atol=1e-5, rtol=0)
    # traced once whole for its shapes, then per device on its rows (32 / 4 = 8: fallback)
    assert ((2, T, b // 4, 3 * H) in calls) == kernel_rows, calls
