"""`python -m ctjax.weights convert` end to end: torchvision file → ctjax .npz → same outputs."""

import numpy as np
import pytest

from tests.support import torch_models
from ctjax.commands import weights as cli
from ctjax.models import backbones, pretrained

torch = pytest.importorskip("torch")


def test_convert_full_vgg16_then_load_backbone(tmp_path, capsys):
  from safetensors.torch import save_file
  # Full-width conv stack (the DrCT2 backbone): 14,714,688 parameters, as torchvision's.
  tmodel = torch_models.randomize_(torch_models.vgg16(classifier=False), 11).eval()
  src = tmp_path / "vgg16_features.safetensors"
  save_file(tmodel.state_dict(), str(src))
  out = tmp_path / "vgg16.npz"
  assert cli.main(["convert", "--arch", "vgg16", "--src", str(src), "--out", str(out)]) == 0
  assert "14,714,688 parameters" in capsys.readouterr().out

  variables = pretrained.load_backbone(out, "vgg16")
  # The same file loads directly too (converted on the fly).
  direct = pretrained.load_backbone(src, "vgg16")
  np.testing.assert_array_equal(direct["params"]["conv12"]["kernel"],
                                variables["params"]["conv12"]["kernel"])
  x = np.random.default_rng(0).standard_normal((1, 37, 37, 3), np.float32)
  want = torch_models.reference_outputs(tmodel, "vgg16", x, include_fc=False)
  model = backbones.build_backbone("vgg16")
  got = torch_models.run_once(model.apply, variables, x)
  assert torch_models.relative_error(got["pooled"], want["pooled"]) <= 1e-4
  assert torch_models.relative_error(got["feature_map"], want["feature_map"]) <= 1e-4


def test_convert_errors_exit_nonzero_with_one_line(tmp_path, capsys):
  rc = cli.main(["convert", "--arch", "resnet50", "--src", str(tmp_path / "nope.pth"),
                 "--out", str(tmp_path / "o.npz")])
  err = capsys.readouterr().err
  assert rc == 1 and "nope.pth" in err and err.count("\n") == 1
  assert not (tmp_path / "o.npz").exists()
