"""ResNet-50 against torchvision's architecture (rebuilt in torch.nn) with random pretrained."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import torch_models
from ctjax.models import pretrained
from ctjax.models.resnet import ResNet50

TOL = 1e-4


# Random BN running statistics are part of every case. Reduced width at 224 and 512 keeps the
# fast set cheap; the odd size (65 px: odd at every stride-2 conv and the padded max-pool) runs
# at full width, so every full-size parameter name and shape is checked too.
@pytest.mark.parametrize("size,batch", [(224, 2), (512, 1)])
def test_parity_reduced_width(size, batch):
  err = torch_models.compare_with_torch("resnet50", width=0.25, size=size, batch=batch,
                                        seed=size)
  assert set(err) == {"feature_map", "pooled", "logits"}
  assert max(err.values()) <= TOL, err


def test_parity_full_width_odd_size():
  err = torch_models.compare_with_torch("resnet50", width=1.0, size=65, batch=1, seed=7)
  assert max(err.values()) <= TOL, err


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 512, 333])
def test_parity_full_width(size):
  err = torch_models.compare_with_torch("resnet50", width=1.0, size=size, batch=1, seed=1)
  assert max(err.values()) <= TOL, err


def test_parameter_counts_match_torchvision():
  shapes = pretrained.expected_shapes("resnet50", include_fc=True)
  n = sum(int(np.prod(v)) for k, v in shapes.items() if k.startswith("params/"))
  assert n == 25_557_032                 # torchvision resnet50, fc included
  assert n == sum(p.numel() for p in torch_models.resnet50().parameters())
  n_stats = sum(int(np.prod(v)) for k, v in shapes.items() if k.startswith("batch_stats/"))
  assert n_stats == sum(b.numel() for k, b in torch_models.resnet50().state_dict().items()
                        if k.endswith(("running_mean", "running_var")))


def test_any_size_from_32_px_and_output_contract():
  model = ResNet50(width=0.0625, include_fc=True, num_classes=5)
  x = jnp.ones((2, 32, 40, 3))
  variables = pretrained.random_variables(model, x)
  out = torch_models.run_once(model.apply, variables, x)
  assert out["feature_map"].shape == (2, 1, 2, 128)    # 2048 · 1/16, stride 32
  assert out["pooled"].shape == (2, 128) and out["logits"].shape == (2, 5)
  np.testing.assert_allclose(out["pooled"], out["feature_map"].mean(axis=(1, 2)), rtol=1e-6)


def test_bfloat16_within_1e2_of_float32():
  # bf16 rounds every conv input and weight (2^-9); over ResNet-50's 53 convs the pooled
  # vector stays within 1e-2 (measured 7.3e-3) and the raw last-block map within 1.5e-2
  # (measured 1.05e-2) of float32.
  err = torch_models.compare_with_torch("resnet50", width=0.25, size=64, batch=2, seed=5,
                                        dtype=jnp.bfloat16, include_fc=False)
  assert err["pooled"] <= 1e-2 and err["feature_map"] <= 1.5e-2, err


def test_train_mode_matches_torch_batch_statistics():
  """train=True normalises with batch statistics, as torch's train mode does."""
  torch = pytest.importorskip("torch")
  tmodel = torch_models.randomize_(torch_models.resnet50(width=0.125), seed=2).train()
  variables = pretrained.convert_torchvision(tmodel.state_dict(), "resnet50", include_fc=False)
  x = np.random.default_rng(0).standard_normal((4, 64, 64, 3), np.float32)
  with torch.no_grad():
    want = tmodel.features(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  model = ResNet50(width=0.125)
  out, updates = torch_models.run_once(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
  assert torch_models.relative_error(out["feature_map"], want) <= TOL
  # Running means follow torch's momentum 0.1 (running variances differ by torch's n/(n-1)).
  np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"],
                             tmodel.bn1.running_mean.numpy(), rtol=1e-4, atol=1e-5)
