"""torchvision → Flax conversion, weight files and ctjax's variables format."""

import numpy as np
import pytest

from tests.support import torch_models
from ctjax.errors import WeightsError
from ctjax.models import backbones, pretrained

torch = pytest.importorskip("torch")


def _small_resnet_state_dict(seed=0):
  return torch_models.randomize_(torch_models.resnet50(width=0.0625), seed).state_dict()


def _assert_trees_equal(a, b):
  fa, fb = pretrained._flatten(a), pretrained._flatten(b)  # pylint: disable=protected-access
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_conversion_layout_and_values():
  sd = _small_resnet_state_dict()
  v = pretrained.convert_torchvision(sd, "resnet50")
  p, s = v["params"], v["batch_stats"]
  np.testing.assert_array_equal(p["conv1"]["kernel"], sd["conv1.weight"].permute(2, 3, 1, 0))
  np.testing.assert_array_equal(p["layer2_0"]["downsample_bn"]["scale"],
                                sd["layer2.0.downsample.1.weight"])
  np.testing.assert_array_equal(s["layer4_2"]["bn3"]["var"], sd["layer4.2.bn3.running_var"])
  np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
  assert "num_batches_tracked" not in str(pretrained._flatten(v))  # pylint: disable=protected-access
  # Every torch tensor except the step counters lands somewhere, once.
  n_torch = sum(t.numel() for k, t in sd.items() if not k.endswith("num_batches_tracked"))
  assert pretrained.count_params(v) == n_torch


def test_include_fc_false_drops_heads_and_true_requires_them():
  sd = _small_resnet_state_dict()
  v = pretrained.convert_torchvision(sd, "resnet50", include_fc=False)
  assert "fc" not in v["params"] and "conv1" in v["params"]
  no_fc = {k: t for k, t in sd.items() if not k.startswith("fc.")}
  with pytest.raises(WeightsError, match="no classifier head"):
    pretrained.convert_torchvision(no_fc, "resnet50", include_fc=True)


def test_wrong_or_unknown_arch_is_a_weights_error():
  sd = _small_resnet_state_dict()
  with pytest.raises(WeightsError, match="not a parameter of torchvision's vgg16"):
    pretrained.convert_torchvision(sd, "vgg16")
  with pytest.raises(WeightsError, match="unknown backbone arch"):
    pretrained.convert_torchvision(sd, "alexnet")


def test_every_file_format_converts_identically(tmp_path):
  from safetensors.numpy import save_file
  sd = _small_resnet_state_dict(seed=3)
  want = pretrained.convert_torchvision(sd, "resnet50")
  numpy_sd = {k: t.numpy() for k, t in sd.items()}
  # A training checkpoint: wrapped in {"state_dict": …} with DataParallel's "module." prefix.
  torch.save({"state_dict": {f"module.{k}": t for k, t in sd.items()}, "epoch": 3},
             tmp_path / "ckpt.pth")
  save_file(numpy_sd, str(tmp_path / "w.safetensors"))
  np.savez(tmp_path / "w.npz", **numpy_sd)
  for name in ("ckpt.pth", "w.safetensors", "w.npz"):
    got = pretrained.convert_torchvision(pretrained.read_state_dict(tmp_path / name), "resnet50")
    _assert_trees_equal(got, want)
  (tmp_path / "w.h5").write_bytes(b"x")
  with pytest.raises(WeightsError, match="unknown weights format"):
    pretrained.read_state_dict(tmp_path / "w.h5")
  (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
  with pytest.raises(WeightsError, match="bad.safetensors: cannot read weights"):
    pretrained.read_state_dict(tmp_path / "bad.safetensors")


def test_save_load_variables_round_trip(tmp_path):
  import jax.numpy as jnp
  v = pretrained.convert_torchvision(_small_resnet_state_dict(), "resnet50")
  path = pretrained.save_variables(tmp_path / "sub" / "v.npz", v)
  with np.load(path) as z:
    assert "params/layer1_0/conv1/kernel" in z.files
    assert "batch_stats/bn1/mean" in z.files
  _assert_trees_equal(pretrained.load_variables(path), v)
  half = {"params": {"a": {"kernel": jnp.ones((2, 3), jnp.bfloat16)}}}
  back = pretrained.load_variables(pretrained.save_variables(tmp_path / "h.npz", half))
  assert back["params"]["a"]["kernel"].dtype == np.float32
  np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
  with pytest.raises(WeightsError, match="not a ctjax variables file"):
    pretrained.load_variables(tmp_path / "foreign.npz")


def test_load_backbone_missing_file_says_how_to_convert(tmp_path):
  missing = tmp_path / "vgg16.npz"
  with pytest.raises(WeightsError) as e:
    pretrained.load_backbone(missing, "vgg16")
  msg = str(e.value)
  assert str(missing) in msg and "python -m ctjax.weights convert --arch vgg16" in msg


def test_load_backbone_rejects_wrong_shapes(tmp_path):
  # A reduced-width checkpoint is not a full-width resnet50.
  path = pretrained.save_variables(
      tmp_path / "small.npz", pretrained.convert_torchvision(_small_resnet_state_dict(), "resnet50"))
  with pytest.raises(WeightsError, match="wrong shapes"):
    pretrained.load_backbone(path, "resnet50")


def test_random_variables_match_init_structure():
  import jax
  import jax.numpy as jnp
  model = backbones.build_backbone("resnet50", width=0.0625)
  x = jnp.zeros((1, 32, 32, 3))
  got = pretrained.random_variables(model, x, seed=0)
  want = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), want) == jax.tree.map(
      lambda a: (a.shape, a.dtype), got)
  k = got["params"]["conv1"]["kernel"]
  assert 0.5 < k.std() * np.sqrt(2.0 / (7 * 7 * 3)) ** -1 < 1.5   # He-scaled
