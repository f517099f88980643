"""ctjax.train.tasks.pretrain: weighted BCE against torch, a few loop steps, backbone export."""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
from tests.support import stand_ins
from configs import pretrain_phantom
from ctjax.models import pretrained
from ctjax.train import loop
from ctjax.train.tasks import pretrain

SIZE = 32


class SliceSource:
  """Multi-label slices: hu int16 [32, 32], labels float32 [6]."""

  def __init__(self, num, seed):
    rng = np.random.default_rng(seed)
    self.labels = (rng.random((num, 6)) < 0.3).astype(np.float32)
    hu = rng.normal(30, 40, size=(num, SIZE, SIZE))
    hu[:, 8:16, 8:16] += 60 * self.labels[:, :1, None]
    self.hu = hu.astype(np.int16)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"hu": self.hu[i], "labels": self.labels[i], "example_index": np.int32(i)}


class SliceData(stand_ins.MemoryData):
  def build_splits(self, config, workdir):
    return stand_ins.Splits({n: SliceSource(k, s) for s, (n, k) in
                             enumerate({"train": 16, "val": 8, "test": 8}.items())})


def _config(**kw):
  c = pretrain_phantom.get_config("runlocal")
  c.train.batch_size = 8
  c.train.max_steps = 2
  c.train.log_every_steps = 1
  c.model.backbone_width = 0.0625
  c.evals.val.every_steps = 0
  c.checkpoint.best_metric = ""
  c.log.progress_bar = False
  c.log.tensorboard = False
  stand_ins.set_fields(c, kw)
  return c


def test_loss_is_torch_weighted_bce():
  config = _config()
  task = pretrain.TASK
  model = task.build_model(config)
  # init_variables' structure, numpy He-scaled values (a jitted Flax init of the VGG16 compiles
  # for ~10 s on 2 CPU cores; the loss check does not depend on the initialiser).
  shapes = jax.eval_shape(lambda r: task.init_variables(model, config, r), jax.random.PRNGKey(0))
  variables = pretrained.random_variables(model, jnp.zeros((1, 32, 32, 3)), train=False)
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  assert [a.shape for a in jax.tree.leaves(shapes)] == [
      a.shape for a in jax.tree.leaves(variables)]
  src = SliceSource(4, 0)
  batch = {"hu": jnp.asarray(src.hu), "labels": jnp.asarray(src.labels),
           "valid": jnp.asarray([True, True, True, False])}

  @jax.jit
  def run(v, b):   # one compilation for the three calls
    extra = {k: x for k, x in v.items() if k != "params"}   # BatchNorm statistics
    loss, _ = task.loss_fn(model, v["params"], extra, b, jax.random.PRNGKey(1), config, False)
    logits = model.apply(v, pretrain.preprocess(b["hu"], config), train=False)
    return loss, logits, task.predict(model, v, b, config)["probs"]

  loss, logits, probs = run(variables, batch)
  ref = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.tensor(np.asarray(logits[:3])), torch.tensor(src.labels[:3]),
      pos_weight=torch.tensor(config.loss.pos_weight), reduction="mean")
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  np.testing.assert_allclose(probs, jax.nn.sigmoid(logits), rtol=1e-6)


def test_pretrain_loop_exports_backbone(tmp_path, monkeypatch, capsys):
  out = tmp_path / "w" / "backbone.npz"   # the default export path: inside the workdir
  config = _config()
  # Numpy weights of init's shapes (test_loss_is_torch_weighted_bce checks the structure): the
  # jitted Flax init would add ~10 s of compiling to the train + eval steps' ~20 s.
  monkeypatch.setattr(pretrain.TASK, "init_variables", lambda model, config, rng: (
      pretrained.random_variables(model, jnp.zeros((1, 32, 32, 3)), train=False)))
  final = loop.train_and_evaluate(config, tmp_path / "w", task=pretrain.TASK, data=SliceData())
  assert final["step"] == 2 and "val/macro_auc" in final
  saved = pretrained.load_variables(out)
  kernels = sorted(k for k in saved["params"])
  assert kernels == sorted(f"conv{i}" for i in range(13))
  assert saved["params"]["conv0"]["kernel"].shape == (3, 3, 3, 4)   # 64 * 1/16 channels
  # The exported file equals the trained backbone restored from the checkpoint.
  from ctjax.inference import runs
  from ctjax.commands import weights as weights_cli
  from ctjax.models.vgg import fold_batch_norm
  variables = runs.load_run(tmp_path / "w", task=pretrain.TASK).host_variables()
  assert config.model.batch_norm   # the config's default: written with BN folded in
  folded = fold_batch_norm({"params": variables["params"]["backbone"],
                            "batch_stats": variables["batch_stats"]["backbone"]})
  np.testing.assert_array_equal(saved["params"]["conv12"]["kernel"],
                                folded["params"]["conv12"]["kernel"])
  # `python -m ctjax.weights export` writes the same file from the finished run.
  again = tmp_path / "again.npz"
  assert weights_cli.main(["export", "--workdir", str(tmp_path / "w"), "--out", str(again)]) == 0
  assert "from step 2" in capsys.readouterr().out
  np.testing.assert_array_equal(pretrained.load_variables(again)["params"]["conv12"]["kernel"],
                                saved["params"]["conv12"]["kernel"])


def test_batch_norm_backbone_exports_as_plain_vgg16(tmp_path):
  from ctjax.models.vgg import VGG16
  config = _config(**{"model.batch_norm": True})
  model = pretrain.TASK.build_model(config)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = pretrained.random_variables(model, x, seed=2, train=False)
  rng = np.random.default_rng(0)   # running statistics away from their (0, 1) initial values
  variables["batch_stats"] = jax.tree.map(
      lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32), variables["batch_stats"])
  out = pretrain.export_backbone(variables, tmp_path / "vgg.npz")
  saved = pretrained.load_variables(out)
  assert "batch_stats" not in saved and not any(k.startswith("bn") for k in saved["params"])
  want = VGG16(width=0.0625, batch_norm=True).apply(
      {"params": variables["params"]["backbone"],
       "batch_stats": variables["batch_stats"]["backbone"]}, x)["pooled"]
  got = VGG16(width=0.0625).apply(saved, x)["pooled"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_zoom_sizes_train_each_part_at_its_size():
  config = _config(**{"model.batch_norm": True, "pretrain.zoom_sizes": (48,),
                      "pretrain.flip": False})
  model = pretrain.TASK.build_model(config)
  variables = pretrained.random_variables(model, jnp.zeros((1, 32, 32, 3)), seed=1, train=False)
  src = SliceSource(4, 3)
  batch = {"hu": jnp.asarray(src.hu), "labels": jnp.asarray(src.labels)}
  params, extra = variables["params"], {"batch_stats": variables["batch_stats"]}
  loss, (_, new_extra) = pretrain.TASK.loss_fn(model, params, extra, batch,
                                               jax.random.PRNGKey(0), config, True)
  # Reference: slices 0-1 at 32 px, 2-3 zoomed to 48 px, BN in train mode on each part.
  x = pretrain.preprocess(batch["hu"], config)
  parts = [x[:2], jax.image.resize(x[2:], (2, 48, 48, 3), "bilinear")]
  logits, stats = [], extra
  for p in parts:
    out, upd = model.apply({"params": params, **stats}, p, train=True, mutable=["batch_stats"])
    logits.append(out)
    stats = upd
  ref = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.tensor(np.asarray(jnp.concatenate(logits))), torch.tensor(src.labels),
      pos_weight=torch.tensor(config.loss.pos_weight), reduction="mean")
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               new_extra["batch_stats"], stats["batch_stats"])
  assert not np.allclose(new_extra["batch_stats"]["backbone"]["bn0"]["mean"],
                         extra["batch_stats"]["backbone"]["bn0"]["mean"])


# ------------------------------------------------------------------ ResNet-50 (blend-sign)


class BlendSliceSource(SliceSource):
  """As SliceSource with the blend layout's 3 one-hot slice classes."""

  def __init__(self, num, seed):
    super().__init__(num, seed)
    cls = np.random.default_rng(seed + 100).integers(0, 3, num)
    self.labels = np.eye(3, dtype=np.float32)[cls]


class BlendSliceData(stand_ins.MemoryData):
  def build_splits(self, config, workdir):
    return stand_ins.Splits({n: BlendSliceSource(k, s) for s, (n, k) in
                             enumerate({"train": 16, "val": 8, "test": 8}.items())})


def _blend_r50_config(width=0.0625):
  from configs import pretrain_blend_phantom
  config = pretrain_blend_phantom.get_config("runlocal")
  config.train.batch_size = 8
  config.train.max_steps = 2
  config.model.backbone_width = width
  config.evals.val.every_steps = 0     # never: the eval step would compile a second ResNet
  config.checkpoint.best_metric = ""
  config.log.progress_bar = False
  config.log.tensorboard = False
  return config


def _numpy_variables(model, size=32, seed=0):
  """He-scaled numpy values of `model.init`'s shapes (an eager Flax init of a ResNet-50
  compiles op by op for ~30 s on 2 CPU cores; loading does not depend on the initialiser)."""
  return pretrained.random_variables(model, jnp.zeros((1, size, size, 3)), seed=seed, train=False)


def test_resnet50_export_is_what_the_blend_task_loads(tmp_path):
  from configs import blend_phantom
  from ctjax.models import blendnet
  from ctjax.train.tasks import blend
  config = _blend_r50_config(0.0625)
  assert config.model.backbone == "resnet50" and config.data.windows == "blend3"
  model = pretrain.TASK.build_model(config)
  variables = _numpy_variables(model, seed=3)
  rng = np.random.default_rng(0)   # running statistics away from their (0, 1) initial values
  variables["batch_stats"] = jax.tree.map(
      lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32), variables["batch_stats"])
  out = pretrain.export_backbone(variables, tmp_path / "r50.npz", backbone="resnet50")
  saved = pretrained.load_variables(out)
  # Native BatchNorm: the file is the backbone's params AND running statistics, unfolded.
  assert set(saved) == {"params", "batch_stats"}
  for col in saved:
    jax.tree.map(np.testing.assert_array_equal, saved[col], variables[col]["backbone"])
  assert saved["params"]["layer4_0"]["conv3"]["kernel"].shape == (1, 1, 32, 128)  # 2048 / 16

  # The blend task at the same width loads it as its backbone; the heads keep their values.
  bc = blend_phantom.get_config("size=32,width=0.0625")
  assert bc.model.backbone_weights == ""        # no shipped file at this width
  bmodel = blend.TASK.build_model(bc)
  fresh = blendnet.strip_perturbations(_numpy_variables(bmodel, seed=5))
  bc.model.backbone_weights = str(out)
  loaded = blend.TASK.load_pretrained(bc, fresh)
  for col in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, loaded[col]["backbone"], saved[col])
    assert set(loaded[col]) == set(fresh[col])
  assert not np.allclose(fresh["params"]["backbone"]["conv1"]["kernel"],
                         loaded["params"]["backbone"]["conv1"]["kernel"])
  np.testing.assert_array_equal(fresh["params"]["classifier"]["kernel"],
                                loaded["params"]["classifier"]["kernel"])
  # A file of another width is refused, naming the file.
  from ctjax.errors import WeightsError
  wide = blend_phantom.get_config("size=32,width=0.125")
  wide.model.backbone_weights = str(out)
  wide_vars = jax.eval_shape(lambda: blendnet.strip_perturbations(
      blend.TASK.build_model(wide).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))))
  with pytest.raises(WeightsError, match="r50.npz"):
    blend.TASK.load_pretrained(wide, wide_vars)


@pytest.mark.slow   # ~45 s of CPU, most of it compiling the ResNet-50 train step.
def test_resnet50_pretraining_exports_the_trained_backbone(tmp_path, monkeypatch, capsys):
  """configs/pretrain_blend_phantom.py:runlocal through the loop: `<workdir>/backbone.npz` and
  `python -m ctjax.weights export` are the trained state's backbone (params and statistics)."""
  from ctjax.inference import runs
  from ctjax.commands import weights as weights_cli
  config = _blend_r50_config(0.0625)
  monkeypatch.setattr(pretrain.TASK, "init_variables",
                      lambda model, config, rng: _numpy_variables(model))
  final = loop.train_and_evaluate(config, tmp_path / "w", task=pretrain.TASK,
                                  data=BlendSliceData())
  assert final["step"] == 2
  saved = pretrained.load_variables(tmp_path / "w" / "backbone.npz")
  variables = runs.load_run(tmp_path / "w", task=pretrain.TASK).host_variables()
  again = tmp_path / "again.npz"
  assert weights_cli.main(["export", "--workdir", str(tmp_path / "w"), "--out", str(again)]) == 0
  assert set(saved) == {"params", "batch_stats"}
  for col in saved:
    want = jax.tree.map(np.asarray, variables[col]["backbone"])
    jax.tree.map(np.testing.assert_array_equal, saved[col], want)
    jax.tree.map(np.testing.assert_array_equal, pretrained.load_variables(again)[col], want)
  assert not np.allclose(saved["batch_stats"]["bn1"]["mean"], 0.0)   # trained statistics


def test_unknown_backbone_is_a_config_error():
  from ctjax.errors import ConfigError
  with pytest.raises(ConfigError, match="backbone"):
    pretrain.TASK.validate_config(_config(**{"model.backbone": "alexnet"}))
  pretrain.TASK.validate_config(_blend_r50_config())


def test_affine_augmentation_is_the_blend_tasks_and_runs_only_in_training(monkeypatch):
  from ctjax.train.tasks import blend
  aug = dict(prob=1.0, max_rotation=10.0, scale=(0.9, 1.1), max_shift=0.1)
  hu = jnp.asarray(SliceSource(3, 5).hu)
  key = jax.random.PRNGKey(4)
  got = pretrain.random_affine(hu, key, aug)
  want, _ = blend.augment(hu, jnp.zeros((3, 1, 4)), key, aug)
  np.testing.assert_array_equal(got, want)
  assert not np.allclose(got, hu)
  np.testing.assert_array_equal(pretrain.random_affine(hu, key, dict(aug, prob=0.0)), hu)
  # Wired into loss_fn for training only (traced with eval_shape: nothing compiles).
  calls = []
  monkeypatch.setattr(pretrain, "random_affine", lambda h, r, a: calls.append(dict(a)) or h)
  config = _config(**{"pretrain.affine": aug})
  model = pretrain.TASK.build_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  batch = {"hu": hu, "labels": jnp.zeros((3, 6))}
  for train in (False, True):
    jax.eval_shape(lambda v: pretrain.TASK.loss_fn(
        model, v["params"], {k: x for k, x in v.items() if k != "params"}, batch,
        jax.random.PRNGKey(1), config, train), shapes)
  assert calls == [aug]


# ------------------------------------------------------------------ Inception v3 (blend Table 4)


def test_inception_v3_export_keeps_batch_norm_and_the_blend_task_loads_it(tmp_path):
  from configs import blend_phantom, pretrain_blend_phantom
  from ctjax.models import blendnet
  from ctjax.models.inception import MIN_SIZE
  from ctjax.train.tasks import blend
  config = pretrain_blend_phantom.get_config("runlocal,backbone=inception_v3")
  config.model.backbone_width = 0.0625
  pretrain.TASK.validate_config(config)
  assert config.data.image_size >= MIN_SIZE and not config.model.batch_norm
  model = pretrain.TASK.build_model(config)
  # init_variables' shapes (eval_shape: nothing compiles) are those at the least input size.
  shapes = jax.eval_shape(lambda r: pretrain.TASK.init_variables(model, config, r),
                          jax.random.PRNGKey(0))
  variables = _numpy_variables(model, size=MIN_SIZE, seed=4)
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  rng = np.random.default_rng(1)
  variables["batch_stats"] = jax.tree.map(
      lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32), variables["batch_stats"])
  saved = pretrained.load_variables(pretrain.export_backbone(variables, tmp_path / "inc.npz",
                                                          backbone="inception_v3"))
  assert set(saved) == {"params", "batch_stats"}
  for col in saved:
    jax.tree.map(np.testing.assert_array_equal, saved[col], variables[col]["backbone"])
  assert saved["params"]["Mixed_7c"]["branch1x1"]["conv"]["kernel"].shape == (1, 1, 128, 20)
  # The blend task builds the same Inception v3 and loads the file as its backbone.
  bc = blend_phantom.get_config(f"backbone=inception_v3,size={MIN_SIZE + 5},width=0.0625")
  bc.model.backbone_weights = str(tmp_path / "inc.npz")
  fresh = blendnet.strip_perturbations(_numpy_variables(blend.TASK.build_model(bc),
                                                        size=MIN_SIZE + 5, seed=6))
  loaded = blend.TASK.load_pretrained(bc, fresh)
  for col in saved:
    jax.tree.map(np.testing.assert_array_equal, loaded[col]["backbone"], saved[col])
