"""ctjax.train.tasks.pretrain: weighted BCE against torch, a few loop steps, backbone export."""

import numpy as np
import torch

import jax
import jax.numpy as jnp
import stand_ins
from configs import pretrain_phantom
from ctjax.models import weights
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
  for k, v in kw.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def test_loss_is_torch_weighted_bce():
  config = _config()
  task = pretrain.TASK
  model = task.build_model(config)
  # init_variables' structure, numpy He-scaled values (a jitted Flax init of the VGG16 compiles
  # for ~10 s on 2 busy cores; the loss check does not depend on the initialiser).
  shapes = jax.eval_shape(lambda r: task.init_variables(model, config, r), jax.random.PRNGKey(0))
  variables = weights.random_variables(model, jnp.zeros((1, 32, 32, 3)), train=False)
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
      weights.random_variables(model, jnp.zeros((1, 32, 32, 3)), train=False)))
  final = loop.train_and_evaluate(config, tmp_path / "w", task=pretrain.TASK, data=SliceData())
  assert final["step"] == 2 and "val/macro_auc" in final
  saved = weights.load_variables(out)
  kernels = sorted(k for k in saved["params"])
  assert kernels == sorted(f"conv{i}" for i in range(13))
  assert saved["params"]["conv0"]["kernel"].shape == (3, 3, 3, 4)   # 64 * 1/16 channels
  # The exported file equals the trained backbone restored from the checkpoint.
  from ctjax import inference
  from ctjax import weights as weights_cli
  from ctjax.models.vgg import fold_batch_norm
  variables = inference.load_run(tmp_path / "w", task=pretrain.TASK).host_variables()
  assert config.model.batch_norm   # the config's default: written with BN folded in
  folded = fold_batch_norm({"params": variables["params"]["backbone"],
                            "batch_stats": variables["batch_stats"]["backbone"]})
  np.testing.assert_array_equal(saved["params"]["conv12"]["kernel"],
                                folded["params"]["conv12"]["kernel"])
  # `python -m ctjax.weights export` writes the same file from the finished run.
  again = tmp_path / "again.npz"
  assert weights_cli.main(["export", "--workdir", str(tmp_path / "w"), "--out", str(again)]) == 0
  assert "from step 2" in capsys.readouterr().out
  np.testing.assert_array_equal(weights.load_variables(again)["params"]["conv12"]["kernel"],
                                saved["params"]["conv12"]["kernel"])


def test_batch_norm_backbone_exports_as_plain_vgg16(tmp_path):
  from ctjax.models.vgg import VGG16
  config = _config(**{"model.batch_norm": True})
  model = pretrain.TASK.build_model(config)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = weights.random_variables(model, x, seed=2, train=False)
  rng = np.random.default_rng(0)   # running statistics away from their (0, 1) initial values
  variables["batch_stats"] = jax.tree.map(
      lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32), variables["batch_stats"])
  out = pretrain.export_backbone(variables, tmp_path / "vgg.npz")
  saved = weights.load_variables(out)
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
  variables = weights.random_variables(model, jnp.zeros((1, 32, 32, 3)), seed=1, train=False)
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
