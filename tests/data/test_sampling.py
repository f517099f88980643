"""ctjax.data.sampling: fixed-length sampling with index maps (property tests)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ctjax.data import sampling
from ctjax.errors import EmptySeriesError


def test_uniform_known_values():
  np.testing.assert_array_equal(sampling.uniform_indices(10, 5), [1, 3, 5, 7, 9])
  np.testing.assert_array_equal(sampling.uniform_indices(3, 6), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(sampling.uniform_indices(1, 3), [0, 0, 0])
  np.testing.assert_array_equal(sampling.uniform_indices(28, 28), np.arange(28))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), m=st.integers(1, 40))
def test_uniform_properties(n, m):
  idx = sampling.uniform_indices(n, m)
  assert idx.shape == (m,) and idx.dtype == np.int32
  assert idx.min() >= 0 and idx.max() < n
  assert np.all(np.diff(idx) >= 0)
  if n >= m:
    assert len(np.unique(idx)) == m        # no repeats when there is enough
  else:
    assert set(idx.tolist()) == set(range(n))   # every slice kept when upsampling


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), m=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_random_properties(n, m, seed):
  rng = np.random.default_rng(seed)
  idx = sampling.random_indices(n, m, rng)
  assert idx.shape == (m,) and idx.min() >= 0 and idx.max() < n
  assert np.all(np.diff(idx) >= 0)
  again = sampling.random_indices(n, m, np.random.default_rng(seed))
  np.testing.assert_array_equal(idx, again)           # pure function of rng
  if n > m:
    edges = sampling.bin_edges(n, m)
    assert np.all((idx >= edges[:-1]) & (idx < edges[1:]))   # one per bin: covers the scan
    uni = sampling.uniform_indices(n, m)
    wide = (edges[1:] - edges[:-1]) > 1
    assert not np.any((idx == uni) & wide)     # draws from the unsampled slices


def test_random_redraws_differ_and_cover_unsampled():
  n, m = 100, 28
  uni = set(sampling.uniform_indices(n, m).tolist())
  seen = set()
  for s in range(50):
    seen |= set(sampling.random_indices(n, m, np.random.default_rng(s)).tolist())
  assert seen.isdisjoint(uni)
  assert len(seen) == n - m          # every unsampled slice gets drawn eventually


def test_gather_and_sample_indices():
  vol = np.arange(10)[:, None, None] * np.ones((10, 2, 2))
  idx = sampling.sample_indices(10, 4, train=False)
  np.testing.assert_array_equal(sampling.gather(vol, idx)[:, 0, 0], idx)
  with pytest.raises(EmptySeriesError):
    sampling.uniform_indices(0, 4)
