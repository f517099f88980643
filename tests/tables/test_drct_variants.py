"""Table 4's DrCT variants: DrCT1 model fusion and high-resolution input (exact on the feature
store), Table 4's DrCT2 "APS 224" on the primary rows, and the stores they share."""

import pathlib
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from tests.support import stand_ins  # noqa: E402  (tests/train's helpers: small_drct_config)
from configs import drct1_fusion, drct1_hires
from ctjax.configs.common import load_config_file
from ctjax.data import fake, pipeline
from ctjax.errors import ConfigError
from ctjax.models import drct
from ctjax.models import pretrained
from ctjax.train import features as F
from ctjax.train.tasks import drct as drct_task
from ctjax.train.tasks.drct import TASK

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


class TinyBackbone(nn.Module):
  """The VGG16 contract: {"feature_map" [N,h,w,C], "pooled" [N,C]}."""

  @nn.compact
  def __call__(self, x, *, train=False):
    f = nn.relu(nn.Conv(8, (3, 3), strides=(4, 4), name="conv")(x))
    return {"feature_map": f, "pooled": f.max(axis=(1, 2))}


def small(**kw):
  args = dict(backbone=TinyBackbone(), num_labels=3, mkey=3, aps_size=40, gru_hidden=8,
              seq_dim=8, fc_widths=(16, 8), aps_fc_dim=8, aps=False)
  args.update(kw)
  return drct.DrCT(**args)


@pytest.fixture(scope="module")
def x():
  return jax.random.normal(jax.random.key(2), (2, 6, 32, 32, 3))


def test_fusion_stored_rows_equal_the_full_model(x):
  """Slices 2-3 at the APS size, the rest at the primary size: the end-to-end model equals the
  stored-feature path fed the APS rows of those slices, and differs from plain DrCT1."""
  model = small(hires_slices=(2, 4))
  v = pretrained.random_variables(model, x)
  full = model.apply(v, x)
  flat = x.reshape((12, 32, 32, 3))
  f = model.apply(v, flat, flat, want_map=False, method=drct.DrCT.backbone_features)
  feats = {k: a.reshape((2, 6) + a.shape[1:]) for k, a in f.items()}
  cached = jax.jit(lambda v, f: model.apply(v, None, features=f))(v, feats)
  assert "highlight" not in full and set(cached) == set(full)
  for k in full:
    np.testing.assert_allclose(np.asarray(cached[k]), np.asarray(full[k]), rtol=1e-5,
                               atol=1e-6, err_msg=k)
  plain = small().apply(v, x)
  assert not np.allclose(np.asarray(plain["logits"]), np.asarray(full["logits"]))


def test_high_resolution_everywhere_is_drct1_on_zoomed_slices(x):
  """hires over all m slices = DrCT1 whose input is every slice zoomed to aps_size (eq. 8)."""
  model = small(hires_slices=(0, 6))
  v = pretrained.random_variables(model, x)
  zoomed = jax.image.resize(x, (2, 6, 40, 40, 3), method="bilinear",
                            precision=jax.lax.Precision.DEFAULT)
  want = small().apply(v, zoomed)
  got = model.apply(v, x)
  np.testing.assert_allclose(np.asarray(got["logits"]), np.asarray(want["logits"]), rtol=1e-5,
                             atol=1e-6)


def test_bad_hires_range_is_a_value_error(x):
  model = small(hires_slices=(4, 9))
  with pytest.raises(ValueError, match="hires_slices"):
    pretrained.random_variables(model, x)


def test_configs_give_the_papers_ranges():
  fusion = drct1_fusion.get_config()
  assert not fusion.model.aps and tuple(fusion.model.hires_slices) == (15, 22)
  assert fusion.data.num_slices == 32 and fusion.model.aps_size == 512
  hires = drct1_hires.get_config("fold=3")
  assert tuple(hires.model.hires_slices) == (0, 32) and hires.data.fold == 3
  phantom = load_config_file(CONFIGS / "drct1_fusion.py", "base=phantom,num_scans=40")
  assert phantom.data.synth.layout == "cq500" and phantom.data.synth.num_scans == 40
  assert tuple(phantom.model.hires_slices) == (15, 22)
  rsna = load_config_file(CONFIGS / "drct1_fusion.py", "base=phantom,layout=rsna")
  assert tuple(rsna.model.hires_slices) == (13, 19) and rsna.data.num_slices == 28
  with pytest.raises(ConfigError, match="first"):
    drct1_hires.get_config("first=2")
  bad = drct1_fusion.get_config("runlocal")
  bad.model.hires_slices = (6, 12)
  with pytest.raises(ConfigError, match="hires_slices"):
    drct_task.check_config(bad)


# ------------------------------------------------------------------ the shared feature stores

SIZE = stand_ins.DRCT_SIZE


small_config = stand_ins.small_drct_config


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
  """A random cache and the DrCT2 store built through the task (the first cell of a table)."""
  root = tmp_path_factory.mktemp("cache")
  config = small_config(root)
  fake.write_random_cache_for(config, num_scans=9, slices=(5, 8), scans_per_shard=3, seed=0)
  splits = pipeline.build_splits(config)
  model = TASK.build_model(config)
  variables = pretrained.random_variables(drct_task.init_model(model), drct_task.init_input(config))
  data = TASK.wrap_data(config, pipeline, splits, model, variables)
  return root, splits, variables, data.store


def _variant(root, **over):
  config = small_config(root, **over)
  return config, TASK.build_model(config)


def _first_eval_batch(data, config, splits):
  return next(iter(data.eval_batches(config, splits, "train")))


def _hu_batch(batch, splits):
  """The same examples and sampled slices as HU (the end-to-end path)."""
  src = splits["train"]
  scans = src.scans
  hu = np.stack([scans.scan_hu(src[max(int(e), 0)]["scan"], idx)   # padding rows: example 0
                 for e, idx in zip(batch["example_index"], batch["slice_index"])])
  return {"hu": hu, **{k: v for k, v in batch.items() if not k.startswith("feat_")}}


@pytest.mark.parametrize("over", [{"model.aps": False},
                                  {"model.aps": False, "model.hires_slices": (1, 3)},
                                  {"model.aps": False, "model.hires_slices": (0, 5)},
                                  {"model.aps_size": 32}],
                         ids=["drct1", "fusion", "hires", "aps_at_primary_size"])
def test_variants_read_the_drct2_store_exactly(stores, over, monkeypatch):
  """DrCT1, its Table 4 variants and DrCT2 with APS at the primary size build no store of
  their own: they read the DrCT2 store's rows, and predict as the end-to-end model."""
  root, splits, variables, store = stores
  config, model = _variant(root, **over)
  built = []
  monkeypatch.setattr(F, "_write_shard", lambda *a, **k: built.append(a[1]))
  data = TASK.wrap_data(config, pipeline, splits, model, variables)
  assert built == []
  inner = getattr(data, "inner", data)
  assert getattr(inner, "store", getattr(data, "store", None)).path == store.path
  batch = _first_eval_batch(data, config, splits)
  if over.get("model.aps_size") == 32:
    np.testing.assert_array_equal(batch["feat_aps"], batch["feat_pooled"])
  got = TASK.predict(model, variables, batch, config)
  want = TASK.predict(model, variables, _hu_batch(batch, splits), config)
  valid = np.asarray(batch["valid"], bool)
  assert valid.sum() >= 2
  for k in ("probs", "probs_primary", "slice_attention"):
    np.testing.assert_allclose(np.asarray(got[k])[valid], np.asarray(want[k])[valid], rtol=1e-4,
                               atol=1e-5, err_msg=k)


def test_without_a_drct2_store_drct1_builds_its_own(tmp_path):
  config = small_config(tmp_path, **{"model.aps": False})
  fake.write_random_cache_for(config, num_scans=6, slices=(5, 6), scans_per_shard=3, seed=1)
  splits = pipeline.build_splits(config)
  model = TASK.build_model(config)
  variables = pretrained.random_variables(drct_task.init_model(model), drct_task.init_input(config))
  data = TASK.wrap_data(config, pipeline, splits, model, variables)
  assert data.store.names == ("pooled",)
  # Now its own store exists: nothing to look for beyond it.
  assert drct_task.superset_store(config, splits["train"].scans, model, variables) is None


def test_drct1_bce_cell_is_drct1_with_a_bce_trained_output_head(tmp_path):
  """Table 3's unconfounded row: DrCT1 (no APS network) whose output head, the primary
  network's, is trained by BCE as DrCT2's fusion head is."""
  from ctjax.tables import departures, drct2
  from ctjax.tables.grid import Context, build_config
  ctx = Context(tmp_path, "cpu")
  ds = drct2.dataset(ctx, "rsna")
  cfg = build_config(drct2.variant_cell(ctx, ds, "drct1_bce", 2), ctx)
  plain = build_config(drct2.variant_cell(ctx, ds, "drct1", 2), ctx)
  assert cfg.model.aps is False and cfg.loss.primary == "bce" and cfg.data.fold == 2
  assert plain.loss.primary == "mse" and plain.model.aps is False
  assert [k for k, _, _ in departures.differences(plain, cfg)] == ["loss.primary"]
  cells = drct2.cells_of(ctx, ds, ["drct1_bce", "drct2"])
  assert list(cells) == ["drct2", "drct1_bce"]   # DrCT2 first: it builds the feature store
