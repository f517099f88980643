"""ctjax.train.tasks.drct on random batches: losses, per-module learning rates, frozen backbone,
predict outputs and summarize against scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import f1_score

from configs import drct2_rsna, drct2_cq500
from ctjax.train import optim
from ctjax.errors import ConfigError
from ctjax.models import pretrained
from ctjax.train.state import partition_params
from ctjax.train.tasks import get_task
from ctjax.train.tasks.drct import TASK, check_config


def make_batch(config, b=4, seed=0):
  rng = np.random.default_rng(seed)
  m, s, L = config.data.num_slices, config.data.image_size, len(config.data.labels)
  labels = (rng.random((b, L)) < 0.4).astype(np.float32)
  return {"hu": rng.integers(-1024, 1500, (b, m, s, s)).astype(np.int16),
          "labels": labels,
          "slice_labels": (rng.random((b, m, L)) < 0.3).astype(np.uint8),
          "slice_index": np.tile(np.arange(m, dtype=np.int32), (b, 1)),
          "num_source_slices": np.full((b,), m, np.int32),
          "valid": np.array([True] * (b - 1) + [False]),
          "example_index": np.arange(b, dtype=np.int32)}


@pytest.fixture(scope="module")
def setup():
  config = drct2_rsna.get_config("runlocal")
  config.data.image_size = 48
  config.model.primary_size = 32
  config.model.aps_size = 48
  config.data.num_slices = 5
  config.model.mkey = 3
  config.loss.pos_weight = (2.0, 1.0, 1.0, 3.0, 1.0, 1.0)
  model = TASK.build_model(config)
  # He-scaled numpy weights of init's shapes: init_variables' jitted Flax init of the VGG16
  # compiles for ~15 s on 2 CPU cores (its output structure is checked below, untraced).
  from ctjax.train.tasks import drct
  variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config))
  return config, model, variables


def test_registered():
  assert get_task("drct") is TASK


def test_init_variables_structure(setup):
  """init_variables gives the collections, shapes and dtypes the other tests use."""
  config, model, variables = setup
  got = jax.eval_shape(lambda r: TASK.init_variables(model, config, r), jax.random.key(0))
  want = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert jax.tree.leaves(got) == jax.tree.leaves(want)
  assert set(got) == {"params", "batch_stats"}


def test_predict_outputs_follow_interface(setup):
  config, model, variables = setup
  batch = make_batch(config)
  out = jax.jit(lambda v, b: TASK.predict(model, v, b, config))(variables, batch)
  b, m, L = 4, 5, 6
  assert out["probs"].shape == (b, L) and out["probs"].dtype == jnp.float32
  assert out["probs_primary"].shape == (b, L) and out["probs_aps"].shape == (b, L)
  assert out["slice_attention"].shape == (b, m)
  np.testing.assert_allclose(np.asarray(out["slice_attention"]).sum(-1), 1, rtol=1e-5)
  assert out["feature_attention"].shape == (b, m, 64)   # 512 × 1/8
  assert out["highlight"].shape[:2] == (b, m) and out["highlight"].dtype == jnp.float32
  assert out["key_indices"].shape == (b, 3) and out["key_indices"].dtype == jnp.int32
  assert np.all(np.diff(np.asarray(out["key_indices"]), axis=1) > 0)


def test_loss_matches_numpy(setup):
  config, model, variables = setup
  batch = make_batch(config)
  loss, (metrics, extra) = TASK.loss_fn(model, variables["params"],
                                        {"batch_stats": variables["batch_stats"]}, batch,
                                        jax.random.key(1), config, False)
  out = TASK.predict(model, variables, batch, config)
  y, valid = batch["labels"], batch["valid"]
  w = np.where(y > 0.5, np.asarray(config.loss.pos_weight), 1.0)

  def mse(p):
    return ((np.asarray(p) - y) ** 2 * w).mean(-1)[valid].mean()

  def bce(p):
    p = np.asarray(p, np.float64)
    return (-(y * np.log(p) + (1 - y) * np.log(1 - p)) * w).mean(-1)[valid].mean()

  np.testing.assert_allclose(metrics["loss_primary"], mse(out["probs_primary"]), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_aps"], mse(out["probs_aps"]), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_fusion"], bce(out["probs"]), rtol=1e-4)
  np.testing.assert_allclose(loss, mse(out["probs_primary"]) + mse(out["probs_aps"])
                             + bce(out["probs"]), rtol=1e-4)
  # Table 2's switch: BCE for every head.
  cfg = config.copy_and_resolve_references()
  cfg.loss.primary = cfg.loss.aps = "bce"
  _, (m2, _) = TASK.loss_fn(model, variables["params"], {"batch_stats": variables["batch_stats"]},
                            batch, jax.random.key(1), cfg, False)
  np.testing.assert_allclose(m2["loss_primary"], bce(out["probs_primary"]), rtol=1e-4)


def test_padding_examples_do_not_count(setup):
  config, model, variables = setup
  batch = make_batch(config)
  other = dict(batch)
  other["labels"] = batch["labels"].copy()
  other["labels"][-1] = 1 - other["labels"][-1]   # change only the invalid example
  args = (variables["params"], {"batch_stats": variables["batch_stats"]})
  a, _ = TASK.loss_fn(model, *args, batch, jax.random.key(1), config, False)
  b, _ = TASK.loss_fn(model, *args, other, jax.random.key(1), config, False)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_frozen_backbone_out_of_optimizer_and_per_module_lrs(setup):
  config, model, variables = setup
  mask = TASK.trainable_mask(config, variables["params"])
  trainable, frozen = partition_params(variables["params"], mask)
  assert set(frozen) == {"backbone"} and set(trainable) == {"primary", "aps", "fusion"}
  tx, _ = optim.make_optimizer(config, 10, 10, lambda p: TASK.param_groups(config, p))
  opt_state = tx.init(trainable)
  # No optimizer state for the frozen backbone.
  n_state = sum(x.size for x in jax.tree.leaves(opt_state))
  n_train = sum(x.size for x in jax.tree.leaves(trainable))
  assert n_state <= 2 * n_train + 16
  # Adam's first step moves every parameter by its module's learning rate (|g| >> eps).
  grads = jax.tree.map(jnp.ones_like, trainable)
  updates, _ = tx.update(grads, opt_state, trainable)
  lr = {k: float(np.abs(np.asarray(jax.tree.leaves(v)[0])).max()) for k, v in updates.items()}
  np.testing.assert_allclose(lr["primary"], 5e-4, rtol=1e-3)
  np.testing.assert_allclose(lr["fusion"], 5e-4, rtol=1e-3)
  np.testing.assert_allclose(lr["aps"], 3e-4, rtol=1e-3)


def test_train_step_updates_only_trainable(setup, monkeypatch):
  config, model, variables = setup
  from ctjax.train.state import create_state
  from ctjax.train.steps import make_train_step
  # The fixture already ran (and checked) init_variables: reuse its variables, not a 2nd compile.
  monkeypatch.setattr(TASK, "init_variables", lambda *args: variables)
  tx, _ = optim.make_optimizer(config, 10, 10, lambda p: TASK.param_groups(config, p))
  state = create_state(TASK, model, config, jax.random.key(0), tx)
  step = jax.jit(make_train_step(TASK, model, config))
  new, metrics = step(state, make_batch(config), jax.random.key(3))
  assert np.isfinite(float(metrics["loss"]))
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), state.frozen, new.frozen)
  assert all(jax.tree.leaves(same))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params["primary"],
                       new.params["primary"])
  assert any(jax.tree.leaves(moved))
  # BatchNorm statistics of the APS network were updated in training mode.
  assert not np.allclose(np.asarray(state.extra["batch_stats"]["aps"]["bn"]["mean"]),
                         np.asarray(new.extra["batch_stats"]["aps"]["bn"]["mean"]))


def test_summarize_matches_sklearn(setup):
  config, _, _ = setup
  rng = np.random.default_rng(0)
  n, m, L = 40, 5, 6
  labels = (rng.random((n, L)) < 0.5).astype(np.float32)
  probs = np.clip(labels * 0.6 + rng.random((n, L)) * 0.5, 0, 1).astype(np.float32)
  att = rng.random((n, m)).astype(np.float32)
  outputs = {"labels": labels, "probs": probs, "probs_primary": probs * 0.9,
             "probs_aps": probs, "slice_attention": att / att.sum(1, keepdims=True),
             "slice_labels": (rng.random((n, m, L)) < 0.5).astype(np.uint8)}
  rep = TASK.summarize(outputs, config)
  want = f1_score(labels, probs >= 0.5, average="macro", zero_division=0)
  np.testing.assert_allclose(rep["macro_f1"], want, rtol=1e-6)
  want_p = f1_score(labels, probs * 0.9 >= 0.5, average="macro", zero_division=0)
  np.testing.assert_allclose(rep["primary/macro_f1"], want_p, rtol=1e-6)
  assert "keyslice/easy" in rep and "keyslice/comprehensive" in rep


def test_summarize_reports_the_highlight_and_pointing_game(setup):
  """`highlight/…` figures of ctjax.eval.highlight on the valid rows, pointing game with boxes."""
  from ctjax.eval.highlight import highlight_metrics
  config, _, _ = setup
  rng = np.random.default_rng(1)
  n, m, L, s = 12, 5, 6, config.data.image_size
  labels = np.zeros((n, L), np.float32)
  labels[:6, 0] = 1.0
  att = rng.random((n, m)).astype(np.float32)
  hl = rng.random((n, m, 3, 3)).astype(np.float32)
  hl[:6, :, 0, 0] += 3.0                     # positives: strong, top-left
  boxes = np.full((n, m, 2, 4), -1.0, np.float32)
  boxes[:6, :, 0] = [0, 0, s / 3, s / 3]
  valid = np.ones(n, bool)
  valid[-1] = False
  outputs = {"labels": labels, "probs": rng.random((n, L)).astype(np.float32),
             "slice_attention": att, "highlight": hl, "lesion_boxes": boxes, "valid": valid}
  rep = TASK.summarize(outputs, config)
  want = highlight_metrics({"labels": labels[valid], "slice_attention": att[valid],
                            "highlight": hl[valid], "lesion_boxes": boxes[valid]},
                           image_size=s)
  for k, v in want.items():
    assert rep[k] == pytest.approx(v), k
  assert rep["highlight/pointing/slices"] == 30 and rep["highlight/pointing/scans"] == 6
  assert rep["highlight/pointing/mass"] > 2 * rep["highlight/pointing/chance"]
  assert rep["highlight/key_sum_ratio"] < 0.1
  no_boxes = TASK.summarize({k: v for k, v in outputs.items() if k != "lesion_boxes"}, config)
  assert "highlight/pointing/mass" not in no_boxes and "highlight/floor" in no_boxes


class _BoxSource:
  """A CacheSource stand-in: scan records over scans whose metadata carry per-slice boxes."""

  def __init__(self, boxes_per_scan, indices):
    import types
    self.scans = types.SimpleNamespace(scans=[types.SimpleNamespace(boxes=b)
                                              for b in boxes_per_scan])
    self.indices = np.asarray(indices)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return {"scan": int(self.indices[i]), "example_index": int(i)}


class _BatchData:
  def __init__(self, batches):
    self.batches = batches

  def eval_batches(self, config, splits, split, **kwargs):
    return iter(self.batches)

  def steps_per_epoch(self, *args):
    return 3


def test_evaluation_batches_carry_the_sampled_slices_lesion_boxes(setup):
  from ctjax.train.tasks.drct import WithLesionBoxes
  config, _, _ = setup
  config = config.copy_and_resolve_references()
  config.data.max_boxes = 2
  per_scan = [[[], [[1, 2, 3, 4]], [[5, 6, 7, 8], [0, 0, 1, 1], [9, 9, 9, 9]]],
              [[[10, 10, 12, 12]], [], []]]      # scan → slice → boxes
  batch = {"example_index": np.array([1, 0, -1], np.int32),
           "slice_index": np.array([[0, 0, 1], [2, 1, 0], [0, 1, 2]], np.int32),
           "valid": np.array([True, True, False])}
  data = WithLesionBoxes(_BatchData([batch]), config)
  assert data.steps_per_epoch(config, {}) == 3            # everything else passes through
  got = list(data.eval_batches(config, {"val": _BoxSource(per_scan, [1, 0])}, "val"))[0]
  lb = got["lesion_boxes"]
  assert lb.shape == (3, 3, 2, 4) and lb.dtype == np.float32
  # Row 0: example 1 = the source's scan 0, slices 0, 0, 1; row 1: example 0 = scan 1,
  # slices 2, 1, 0.
  assert (lb[0, :2] == -1).all()
  np.testing.assert_array_equal(lb[0, 2], [[1, 2, 3, 4], [-1, -1, -1, -1]])
  assert (lb[1, :2] == -1).all()
  np.testing.assert_array_equal(lb[1, 2], [[10, 10, 12, 12], [-1, -1, -1, -1]])
  swapped = list(data.eval_batches(config, {"val": _BoxSource(per_scan[::-1], [1, 0])},
                                   "val"))[0]["lesion_boxes"]
  np.testing.assert_array_equal(swapped[1, 0], [[5, 6, 7, 8], [0, 0, 1, 1]])   # 3 → max_boxes
  assert (lb[2] == -1).all()                              # padding row
  # A cache without boxes (real RSNA / CQ500): batches unchanged.
  plain = list(data.eval_batches(config, {"val": _BoxSource([None, None], [1, 0])}, "val"))[0]
  assert "lesion_boxes" not in plain


@pytest.mark.parametrize("field,value", [("model.mkey", 40), ("model.backbone", "resnet50"),
                                         ("loss.fusion", "hinge"), ("data.windows", "brain"),
                                         ("model.selection", "best")])
def test_bad_config_fails_with_config_error(field, value):
  config = drct2_cq500.get_config("runlocal")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=name):
    check_config(config)


# ------------------------------------------------------- the frozen backbone's weights


@pytest.mark.parametrize("config_module", [drct2_rsna, drct2_cq500])
def test_paper_configs_refuse_a_random_frozen_backbone(config_module):
  config = config_module.get_config()
  assert config.model.freeze_backbone and config.model.backbone_weights == ""
  with pytest.raises(ConfigError) as e:
    TASK.validate_config(config)
  msg = str(e.value)
  assert "\n" not in msg and "--config.model.backbone_weights=FILE.npz" in msg
  assert "python -m ctjax.weights convert" in msg and "backbone_weights=random" in msg
  config.model.backbone_weights = "random"                  # said explicitly: allowed
  TASK.validate_config(config)
  config.model.backbone_weights = ""
  config.model.freeze_backbone = False                      # trained from scratch: allowed
  TASK.validate_config(config)


def test_train_command_refuses_before_any_data_work(tmp_path, capsys):
  from ctjax.commands import cli
  from ctjax.commands import train as train_cli
  cfg = str(drct2_rsna.__file__)
  (tmp_path / "rsna").mkdir()        # empty: reading it would be a DatasetLayoutError
  rc = train_cli.main(["--config", cfg, "--workdir", str(tmp_path / "w"),
                       f"--config.data.root={tmp_path / 'rsna'}"])
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
  assert rc == cli.EXIT_ERROR and len(err) == 1, err
  assert err[0].startswith("error: config.model.backbone_weights is empty")


def test_runlocal_and_phantom_configs_say_which_weights(caplog):
  from configs import drct2_phantom
  assert drct2_phantom.get_config().model.backbone_weights.startswith("asset:")
  for config in (drct2_rsna.get_config("runlocal"), drct2_phantom.get_config("runlocal")):
    assert config.model.backbone_weights == "random"
    TASK.validate_config(config)
    variables = {"params": {"backbone": {"w": np.zeros(2)}, "primary": {}}}
    with caplog.at_level("INFO", logger="ctjax.train.tasks.drct"):
      caplog.clear()
      assert TASK.load_pretrained(config, variables) is variables
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "keeps its random initialisation" in caplog.records[0].getMessage()


def test_saved_runs_with_an_empty_backbone_load_as_random(tmp_path):
  import json
  from ctjax.train import checkpoint
  saved = json.loads(drct2_rsna.get_config("runlocal").to_json_best_effort())
  saved["model"]["backbone_weights"] = ""                  # written before "" was refused
  (tmp_path / "config.json").write_text(json.dumps(saved))
  loaded = checkpoint.load_config(tmp_path)
  assert loaded.model.backbone_weights == "random"
  TASK.validate_config(loaded)
