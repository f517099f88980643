"""ctjax.data.windows: formula, presets, numpy/jax parity, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ctjax.data import windows
from ctjax.errors import ConfigError


def test_brain_window_values():
  hu = np.array([-1000, 0, 40, 80, 1000], np.int16)
  out = windows.apply_windows(hu, [(40, 80)])
  # level 40 width 80 → [0, 80] maps to [0, 1]
  np.testing.assert_allclose(out[..., 0], [0.0, 0.0, 0.5, 1.0, 1.0])
  assert out.dtype == np.float32 and out.shape == (5, 1)


def test_presets_channels_and_order():
  hu = np.array([[60.0]])
  out = windows.apply_windows(hu, "blend3")
  # tissue 40/40: (60-20)/40 = 1; brain 50/100: (60-0)/100=0.6; blood 60/40: (60-40)/40 = 0.5
  np.testing.assert_allclose(out[0, 0], [1.0, 0.6, 0.5], rtol=1e-6)
  out = windows.apply_windows(hu, "rsna3")
  # brain 40/80: 60/80; subdural 80/200: (60+20)/200; soft tissue 40/380: (60+150)/380
  np.testing.assert_allclose(out[0, 0], [0.75, 0.4, 210 / 380], rtol=1e-6)


def test_bone_window_and_cq500_preset():
  hu = np.array([-800.0, 600.0, 1000.0, 2000.0, 3071.0])
  # bone 600/2800: [600 - 1400, 600 + 1400] = [-800, 2000] → [0, 1]
  np.testing.assert_allclose(windows.apply_windows(hu, "bone")[..., 0],
                             [0.0, 0.5, 1800 / 2800, 1.0, 1.0], rtol=1e-6)
  out = windows.apply_windows(hu, "drct_cq500")
  np.testing.assert_allclose(out[..., 2], windows.apply_windows(hu, "bone")[..., 0])
  np.testing.assert_allclose(out[..., :2], windows.apply_windows(hu, "rsna3")[..., :2])
  assert windows.PRESETS["soft_tissue"] == (windows.PRESETS["rsna3"][2],)
  from ctjax.inference.report_html import describe_windows
  assert describe_windows("drct_cq500") == ("drct_cq500: brain 40/80, subdural 80/200, "
                                            "bone 600/2800")


@settings(max_examples=30, deadline=None)
@given(level=st.floats(-500, 500), width=st.floats(1, 2000),
       hu=st.lists(st.integers(-1024, 3071), min_size=1, max_size=20))
def test_window_matches_formula_and_range(level, width, hu):
  hu = np.asarray(hu, np.int16)
  out = windows.apply_windows(hu, (level, width))[..., 0]
  ref = np.clip((hu.astype(np.float64) - (level - width / 2)) / width, 0, 1)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  assert out.min() >= 0 and out.max() <= 1


def test_numpy_and_jax_agree_and_jit():
  hu = np.random.default_rng(0).integers(-1024, 3071, (2, 3, 8, 8)).astype(np.int16)
  ref = windows.apply_windows(hu, "rsna3")
  assert isinstance(ref, np.ndarray)
  out = jax.jit(lambda x: windows.apply_windows(x, "rsna3"))(jnp.asarray(hu))
  assert isinstance(out, jax.Array) and out.shape == (2, 3, 8, 8, 3)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-6)
  norm = jax.jit(windows.imagenet_normalize)(out)
  np.testing.assert_allclose(np.asarray(norm), windows.imagenet_normalize(ref), atol=1e-5)


def test_imagenet_normalize_matches_torchvision_constants():
  x = np.ones((1, 1, 3), np.float32) * 0.5
  out = windows.imagenet_normalize(x)
  np.testing.assert_allclose(out[0, 0], (0.5 - np.array([0.485, 0.456, 0.406])) /
                             np.array([0.229, 0.224, 0.225]), rtol=1e-6)


def test_bad_windows_raise():
  with pytest.raises(ConfigError):
    windows.apply_windows(np.zeros(3), "nope")
  with pytest.raises(ConfigError):
    windows.apply_windows(np.zeros(3), [(40, 0)])
