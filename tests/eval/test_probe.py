"""ctjax.eval.probe.scan_probe on hand-made scans (sampling, max pooling, AUC)."""

import json
import types

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from ctjax.commands import cli
from ctjax.data import cache, sampling
from ctjax.commands import backbone_probe as probe_cli
from ctjax.eval import probe
from ctjax.eval.probe import scan_probe


def _scans(rng):
  metas = []
  for i in range(12):
    n = int(rng.integers(8, 13))
    sl = np.zeros((n, 2), np.uint8)
    if i % 3 == 0:                       # label 0 on one slice, sometimes one the sampler skips
      sl[int(rng.integers(0, n)), 0] = 1
    if i % 4 == 1:
      sl[2:5, 1] = 1
    metas.append(cache.ScanMeta(f"s{i}", f"p{i}", 0, 0, n, sl.max(0).astype(np.float32), sl,
                                None, None, {}))
  scans = types.SimpleNamespace(labels=("a", "b"), scans=metas)
  scans.scan_hu = lambda i: np.full((metas[i].num_slices, 4, 4), i, np.int16)
  return scans


def test_probe_equals_max_over_sampled_slices_and_sklearn_auc():
  rng = np.random.default_rng(0)
  scans = _scans(rng)
  noise = {i: rng.random((m.num_slices, 2)) * 0.6 for i, m in enumerate(scans.scans)}

  def slice_probs(hu):   # truth-driven scores plus noise, per scan
    i = int(hu[0, 0, 0])
    return 0.4 * scans.scans[i].slice_labels + noise[i]

  out = scan_probe(slice_probs, scans, num_slices=6)
  y = np.asarray([m.labels for m in scans.scans]) > 0.5
  sampled = np.asarray([slice_probs(scans.scan_hu(i))[
      sampling.uniform_indices(m.num_slices, 6)].max(0) for i, m in enumerate(scans.scans)])
  for j, name in enumerate(("a", "b")):
    assert out[name]["positives"] == int(y[:, j].sum())
    np.testing.assert_allclose(out[name]["auc_sampled"], roc_auc_score(y[:, j], sampled[:, j]))
    np.testing.assert_allclose(out[name]["f1_at_0.5"], f1_score(y[:, j], sampled[:, j] >= 0.5))
    oracle = [m.slice_labels[sampling.uniform_indices(m.num_slices, 6), j].max()
              for m in scans.scans if m.labels[j] > 0.5]
    np.testing.assert_allclose(out[name]["oracle_recall"], np.mean(oracle))
  assert out["b"]["oracle_recall"] == 1.0            # a 3-slice lesion is always sampled


def _fake_cache(root, name, size):
  d = root / ".ctjax_cache" / name
  d.mkdir(parents=True)
  (d / "manifest.json").write_text(json.dumps({"complete": True, "image_size": size}))
  return d


def test_cache_choice_and_errors_name_the_folder(tmp_path, capsys):
  """No cache, or caches of two sizes: one line naming the data root, before any model load."""
  argv = ["--workdir", str(tmp_path / "no_run"), "--data", str(tmp_path)]
  assert probe_cli.main(argv) == cli.EXIT_ERROR
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "no prepared cache" in err and str(tmp_path) in err
  assert "\n" not in err
  first = _fake_cache(tmp_path, "phantom_128_a", 128)
  assert probe.find_cache(tmp_path) == first
  _fake_cache(tmp_path, "phantom_64_b", 64)
  assert probe_cli.main(argv) == cli.EXIT_ERROR
  err = capsys.readouterr().err
  assert "several image sizes" in err and "phantom_64_b: 64" in err
  assert probe_cli.main(["--workdir", str(tmp_path)]) == cli.EXIT_USAGE
  assert "--data DIR is required" in capsys.readouterr().err
