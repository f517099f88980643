"""Inception v3 against torchvision's architecture (rebuilt in torch.nn) with random pretrained."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import torch_models
from ctjax.errors import ConfigError
from ctjax.models import pretrained
from ctjax.models.inception import MIN_SIZE, InceptionAux, InceptionV3

TOL = 1e-4


# 224 and 512 at reduced width as for the other backbones; full width at torchvision's minimum
# size (75 px, odd: 1×1 after Mixed_7a); full width at 224/512/299 (native) in the slow set.
@pytest.mark.parametrize("size,batch", [(224, 2), (512, 1)])
def test_parity_reduced_width(size, batch):
  err = torch_models.compare_with_torch("inception_v3", width=0.25, size=size, batch=batch,
                                        seed=size)
  assert set(err) == {"feature_map", "pooled", "logits"}
  assert max(err.values()) <= TOL, err


def test_parity_full_width_minimum_odd_size():
  err = torch_models.compare_with_torch("inception_v3", width=1.0, size=MIN_SIZE, batch=1,
                                        seed=7)
  assert max(err.values()) <= TOL, err


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 512, 299])
def test_parity_full_width(size):
  err = torch_models.compare_with_torch("inception_v3", width=1.0, size=size, batch=1, seed=1)
  assert max(err.values()) <= TOL, err


def test_parameter_counts_match_torchvision():
  n = lambda **kw: sum(int(np.prod(v)) for k, v in  # noqa: E731
                       pretrained.expected_shapes("inception_v3", **kw).items()
                       if k.startswith("params/"))
  assert n(include_fc=True, aux_logits=True) == 27_161_264   # torchvision inception_v3
  assert n(include_fc=True, aux_logits=True) == sum(
      p.numel() for p in torch_models.inception_v3(aux_logits=True).parameters())


def test_aux_logits_and_transform_input_match_torch():
  """torchvision's transform_input and its auxiliary head (≥ 299 px, training only)."""
  torch = pytest.importorskip("torch")
  tmodel = torch_models.randomize_(
      torch_models.inception_v3(width=0.125, aux_logits=True, transform_input=True), 4).eval()
  variables = pretrained.convert_torchvision(tmodel.state_dict(), "inception_v3")
  x = np.random.default_rng(1).standard_normal((2, 299, 299, 3), np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  with torch.no_grad():
    logits = tmodel(xt).numpy()
    h = tmodel._transform_input(xt)  # pylint: disable=protected-access
    for name in tmodel._STEM:  # pylint: disable=protected-access
      h = getattr(tmodel, name)(h)
    aux = tmodel.AuxLogits(h).numpy()    # eval-mode BN: running statistics
  model = InceptionV3(width=0.125, include_fc=True, aux_logits=True, transform_input=True)
  out = torch_models.run_once(model.apply, variables, x)
  assert "aux_logits" not in out                      # eval mode, like torchvision
  assert torch_models.relative_error(out["logits"], logits) <= TOL
  head = InceptionAux(width=0.125, num_classes=1000)
  got = torch_models.run_once(
      lambda v, h: head.apply(v, h, train=False),
      {c: variables[c]["AuxLogits"] for c in ("params", "batch_stats")},
      h.permute(0, 2, 3, 1).numpy())
  assert torch_models.relative_error(got, aux) <= TOL
  out, _ = jax.eval_shape(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)}),
      variables, x)
  assert out["aux_logits"].shape == (2, 1000)         # train mode adds the aux head


def test_too_small_input_is_a_clear_error():
  model = InceptionV3(width=0.125)
  with pytest.raises(ConfigError, match="at least 75"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 74, 120, 3))))


def test_bfloat16_within_1e2_of_float32():
  err = torch_models.compare_with_torch("inception_v3", width=0.25, size=MIN_SIZE, batch=2,
                                        seed=5, dtype=jnp.bfloat16, include_fc=False)
  assert err["pooled"] <= 1e-2 and err["feature_map"] <= 1e-2, err
