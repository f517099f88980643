"""benchmarks/backbones.py: the figures it reports are well-formed and its FLOP basis is sane."""

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import backbones
from tests.support import torch_models
from ctjax.models import backbones as model_backbones

torch = pytest.importorskip("torch")


def _conv_flops(arch: str, size: int) -> float:
  """2 × the multiply-adds of every torch conv (hooks), the textbook FLOP count."""
  model = torch_models.build(arch, **({"classifier": False} if arch == "vgg16" else {})).eval()
  macs = [0]

  def hook(mod, _, out):
    macs[0] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]

  for mod in model.modules():
    if isinstance(mod, torch.nn.Conv2d):
      mod.register_forward_hook(hook)
  with torch.no_grad():
    model.features(torch.zeros(1, 3, size, size))
  return 2.0 * macs[0]


@pytest.mark.parametrize("arch", ["resnet50"])
def test_xla_flop_count_is_close_to_the_conv_count(arch):
  # XLA's cost analysis (the benchmark's basis) skips the taps that fall on zero padding, so it
  # sits a few % under 2 × conv MACs (VGG16 29.7 vs 30.7 GFLOP, ResNet-50 7.94 vs 8.17 at 224).
  model = model_backbones.build_backbone(arch)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape)))
  analysis = jax.jit(model.apply).lower(v, x).cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  ratio = analysis["flops"] / _conv_flops(arch, 224)
  assert 0.94 < ratio < 1.02, ratio


def test_quick_run_writes_the_table_and_json(tmp_path, capsys):
  out = tmp_path / "bb.json"
  rc = backbones.main(["--archs", "resnet50", "--sizes", "40", "--width", "0.0625",
                       "--batch", "2", "--iters", "1", "--warmup", "0", "--json", str(out)])
  assert rc == 0
  table = capsys.readouterr().out
  assert "ctjax/torch" in table and "resnet50" in table
  row = json.loads(out.read_text())["results"][0]
  assert row["batch"] == 2 and row["size"] == 40
  assert row["gflop_per_image"] > 0 and row["ctjax_images_per_s"] > 0
  assert row["torch_images_per_s"] > 0
  assert row["ratio_ctjax_over_torch"] == pytest.approx(
      row["ctjax_images_per_s"] / row["torch_images_per_s"])
  assert row["ctjax_gflop_per_s"] == pytest.approx(
      row["gflop_per_image"] * row["ctjax_images_per_s"])
  assert row["pooled_rel_diff"] < 1e-4          # both sides computed the same function
