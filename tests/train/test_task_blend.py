"""Task "blend": augmentation (image and boxes together), losses vs PyTorch, SKD soft labels,
the poly-SGD optimizer vs torch.optim.SGD, summarize vs scikit-learn, figures."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from tests.support import stand_ins
from configs import blend_phantom
from ctjax.models import blendnet
from ctjax.train import optim
from ctjax.train.tasks import blend

SIZE = 32


class TinyBackbone(nn.Module):
  """Stand-in for the backbones: two strided convs + BN, "feature_map" at stride 8."""

  @nn.compact
  def __call__(self, x, *, train=False):
    for i, f in enumerate((4, 8)):
      x = nn.Conv(f, (3, 3), strides=(4 if i == 0 else 2,) * 2, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, name=f"bn{i}")(x)
      x = nn.relu(x)
    return {"feature_map": x, "pooled": jnp.mean(x, axis=(1, 2))}


def _config(variant="wce_at", **over):
  c = blend_phantom.get_config(f"variant={variant},size={SIZE}")
  stand_ins.set_fields(c, over)
  return c


def _batch(n=4, seed=0):
  rng = np.random.default_rng(seed)
  hu = rng.integers(-1000, 100, size=(n, SIZE, SIZE)).astype(np.int16)
  boxes = np.full((n, 2, 4), -1, np.float32)
  labels = np.arange(n) % 3
  num = (labels > 0).astype(np.int32)
  for i in range(n):
    if num[i]:
      boxes[i, 0] = [6 + i, 8, 18 + i, 20]
      hu[i, 8:20, 6 + i:18 + i] = 70
  return {"hu": hu, "label": labels.astype(np.int32), "boxes": boxes, "num_boxes": num,
          "valid": np.ones(n, bool), "example_index": np.arange(n, dtype=np.int32)}


@pytest.fixture(scope="module")
def model_and_vars():
  model = blendnet.BlendNet(backbone=TinyBackbone(), det_hidden=8)
  v = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))
  return model, blendnet.strip_perturbations(v)


# ------------------------------------------------------------------ augmentation


def _aug(**kw):
  a = dict(prob=1.0, max_rotation=0.0, scale=(1.0, 1.0), max_shift=0.0)
  a.update(kw)
  return a


def _augment(hu, boxes, key, aug):
  return jax.jit(lambda h, b, k: blend.augment(h, b, k, aug))(jnp.asarray(hu),
                                                             jnp.asarray(boxes), key)


def test_flip_only_mirrors_image_and_boxes_exactly():
  hu = np.random.default_rng(0).normal(size=(2, 8, 10)).astype(np.float32)
  boxes = np.array([[[1, 2, 4, 6], [-1, -1, -1, -1]], [[0, 0, 10, 8], [2, 2, 3, 3]]],
                   np.float32)
  out, ob = _augment(hu, boxes, jax.random.PRNGKey(0), _aug())
  np.testing.assert_allclose(out, hu[:, :, ::-1], atol=1e-4)
  np.testing.assert_allclose(ob[0, 0], [10 - 4, 2, 10 - 1, 6], atol=1e-5)
  np.testing.assert_array_equal(ob[0, 1], [-1, -1, -1, -1])       # padding untouched
  np.testing.assert_allclose(ob[1], [[0, 0, 10, 8], [7, 2, 8, 3]], atol=1e-5)


def test_no_operation_is_the_identity():
  hu = np.random.default_rng(1).normal(size=(2, 12, 12)).astype(np.float32)
  boxes = np.array([[[1, 2, 4, 6]], [[3, 3, 9, 11]]], np.float32)
  out, ob = _augment(hu, boxes, jax.random.PRNGKey(3),
                     _aug(prob=0.0, max_rotation=10.0, scale=(0.9, 1.1), max_shift=0.1))
  np.testing.assert_allclose(out, hu, atol=1e-4)
  np.testing.assert_allclose(ob, boxes, atol=1e-5)


def test_random_affine_moves_boxes_with_the_image_and_is_deterministic():
  # A bright square's transformed footprint must match its transformed box (within the
  # enclosing-hull slack of a ±10° rotation and a pixel of interpolation).
  n, s = 6, 64
  hu = np.full((n, s, s), -1000, np.float32)
  boxes = np.zeros((n, 1, 4), np.float32)
  for i in range(n):
    x0, y0 = 12 + 3 * i, 16 + 2 * i
    hu[i, y0:y0 + 16, x0:x0 + 20] = 1000
    boxes[i, 0] = [x0, y0, x0 + 20, y0 + 16]
  a = _aug(prob=1.0, max_rotation=10.0, scale=(0.9, 1.1), max_shift=0.1)
  key = jax.random.PRNGKey(7)
  out, ob = _augment(hu, boxes, key, a)
  out2, ob2 = _augment(hu, boxes, key, a)
  np.testing.assert_array_equal(out, out2)
  np.testing.assert_array_equal(ob, ob2)
  out, ob = np.asarray(out), np.asarray(ob)
  for i in range(n):
    ys, xs = np.nonzero(out[i] > 0)
    footprint = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    # rotation by θ ≤ 10° grows the hull by at most (w+h)·sin θ·scale ≈ 7 px each side.
    assert np.all(np.abs(footprint - ob[i, 0]) <= 7.0), (i, footprint, ob[i, 0])
    assert ob[i, 0, 0] <= footprint[0] + 1 and ob[i, 0, 2] >= footprint[2] - 1
  assert not np.allclose(out, hu)


# ------------------------------------------------------------------ losses vs PyTorch


def test_weighted_cross_entropy_matches_torch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 2, 0, 1, 0])
  w = np.array([1.0, 2.0, 20.0], np.float32)
  want = torch.nn.CrossEntropyLoss(weight=torch.tensor(w))(torch.tensor(logits),
                                                           torch.tensor(labels)).item()
  got = float(blend.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                           jnp.asarray(w), jnp.ones(7)))
  assert got == pytest.approx(want, rel=1e-5)
  mask = np.array([1, 1, 1, 0, 0, 1, 1], np.float32)
  sub = mask > 0
  want = torch.nn.CrossEntropyLoss(weight=torch.tensor(w))(torch.tensor(logits[sub]),
                                                           torch.tensor(labels[sub])).item()
  got = float(blend.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                           jnp.asarray(w), jnp.asarray(mask)))
  assert got == pytest.approx(want, rel=1e-5)


def test_distillation_kl_matches_torch():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 3)).astype(np.float32)
  teacher = rng.dirichlet(np.ones(3), size=5).astype(np.float32)
  want = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(logits), -1),
                                    torch.tensor(teacher), reduction="batchmean").item()
  got = float(blend.distillation_kl(jnp.asarray(logits), jnp.asarray(teacher), jnp.ones(5)))
  assert got == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ loss_fn / predict


def _loss(model, variables, batch, config, train=False, rng=0):
  """Task.loss_fn, jitted with the config closed over (as the trainer's step does)."""
  fn = jax.jit(lambda p, e, b, r: blend.TASK.loss_fn(model, p, e, b, r, config, train))
  return fn(variables["params"], {k: v for k, v in variables.items() if k != "params"},
            jax.tree.map(jnp.asarray, batch), jax.random.PRNGKey(rng))


def test_loss_parts_weights_and_padding(model_and_vars):
  model, v = model_and_vars
  batch = _batch()
  at, (m_at, _) = _loss(model, v, batch, _config("wce_at"))
  wce, (m_wce, _) = _loss(model, v, batch, _config("wce"))
  assert "det_loss" in m_at and "det_loss" not in m_wce
  assert float(at) == pytest.approx(float(m_at["wce"]) + 10.0 * float(m_at["det_loss"]),
                                    rel=1e-5)
  assert float(wce) == pytest.approx(float(m_wce["wce"]), rel=1e-6)
  # A padding example contributes nothing, whatever it holds.
  padded = {k: np.concatenate([v_, v_[:1]]) for k, v_ in batch.items()}
  padded["valid"][-1] = False
  padded["label"][-1] = 2
  padded["hu"][-1] = 500
  got, _ = _loss(model, v, padded, _config("wce_at"))
  assert float(got) == pytest.approx(float(at), rel=1e-5)


class _Data:
  """A data module of fixed batches (train and val) to see what wrap_data adds."""

  def __init__(self, batch):
    self.batch = batch

  def train_iterator(self, config, splits, **kwargs):
    return iter([dict(self.batch)])

  def eval_batches(self, config, splits, split, **kwargs):
    yield dict(self.batch)


def test_skd_soft_labels_are_added_on_the_host_to_train_batches(model_and_vars, tmp_path):
  model, v = model_and_vars
  batch = {**_batch(), "example_index": np.array([0, 1, 2, -1], np.int32)}   # last: padding
  soft = np.random.default_rng(0).dirichlet(np.ones(3), size=3).astype(np.float32)
  path = os.path.join(tmp_path, "soft.npz")
  blend.save_soft_labels(path, np.array([2, 1, 0]), soft[::-1])
  cfg = _config("wce_at_skd")
  cfg.distill.soft_labels_path = path
  splits = {"train": object(), "val": object()}
  data = blend.TASK.wrap_data(cfg, _Data(batch), splits, model, v)
  train = next(data.train_iterator(cfg, splits, seed=0))
  np.testing.assert_array_equal(train["soft_labels"][:3], soft)
  np.testing.assert_array_equal(train["soft_labels"][3], 0.0)   # no teacher row: left out
  assert "soft_labels" not in next(data.eval_batches(cfg, splits, "val"))   # train only
  with_soft, (m, _) = _loss(model, v, train, cfg)
  logits = model.apply(v, blend.preprocess(batch["hu"], cfg))["logits"]
  kl = float(blend.distillation_kl(logits[:3], soft, jnp.ones(3)))
  assert float(m["kl"]) == pytest.approx(kl, rel=1e-5)
  want = 0.5 * float(m["wce"]) + 0.5 * kl + 10.0 * float(m["det_loss"])
  assert float(with_soft) == pytest.approx(want, rel=1e-5)
  # Without soft labels in the batch the loss has no KL term (nothing read from files in jit).
  _, (plain, _) = _loss(model, v, batch, cfg)
  assert "kl" not in plain


def test_a_few_sgd_steps_reduce_the_loss(model_and_vars):
  model, v = model_and_vars
  # From scratch (TinyBackbone): the paper's base-lr (blend_phantom fine-tunes at 1e-3).
  cfg = _config("wce_at", **{"data.augment.enabled": False, "optimizer.lr": 0.01})
  batch = jax.tree.map(jnp.asarray, _batch(6))
  tx, _ = optim.make_optimizer(cfg, optim.total_steps(cfg, 100), 100,
                               lambda p: blend.TASK.param_groups(cfg, p))
  params, extra = v["params"], {"batch_stats": v["batch_stats"]}
  opt = tx.init(params)

  @jax.jit
  def step(params, extra, opt, rng):
    (loss, (_, upd)), g = jax.value_and_grad(
        lambda p: blend.TASK.loss_fn(model, p, extra, batch, rng, cfg, True), has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    import optax
    return optax.apply_updates(params, updates), upd, opt, loss

  losses = []
  for i in range(12):
    params, extra, opt, loss = step(params, extra, opt, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses


def test_optimizer_is_torch_sgd_with_poly_decay():
  cfg = _config("wce", **{"train.max_steps": 10, "optimizer.lr": 0.01})   # the paper's base-lr
  tx, _ = optim.make_optimizer(cfg, optim.total_steps(cfg, 5), 5,
                               lambda p: blend.TASK.param_groups(cfg, p))
  w0 = np.array([1.0, -2.0, 0.5], np.float32)
  grads = [np.array([0.3, -0.1, 0.2], np.float32) * (i + 1) for i in range(4)]
  params, state = jnp.asarray(w0), None
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = params + updates
  tp = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.SGD([tp], lr=0.01, momentum=0.9, weight_decay=5e-4)
  sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9)
  for g in grads:
    tp.grad = torch.tensor(g)
    opt.step()
    sched.step()
  np.testing.assert_allclose(np.asarray(params), tp.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_predict_summarize_match_sklearn_and_figures(model_and_vars, tmp_path):
  model, v = model_and_vars
  cfg = _config("wce_at")
  batch = _batch(6)
  predict = jax.jit(lambda v_, b: blend.TASK.predict(model, v_, b, cfg))
  out = jax.device_get(predict(v, jax.tree.map(jnp.asarray, batch)))
  assert out["probs"].shape == (6, 3) and out["det_boxes"].shape[-1] == 4
  np.testing.assert_allclose(out["probs"].sum(-1), 1.0, rtol=1e-5)
  # Summaries on known outputs, against scikit-learn.
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 40)
  probs = rng.dirichlet(np.ones(3), size=40) + np.eye(3)[y] * 0.3
  probs /= probs.sum(-1, keepdims=True)
  outputs = {"probs": probs, "label": y, "valid": np.ones(40, bool)}
  report = blend.TASK.summarize(outputs, cfg)
  pred = probs.argmax(-1)
  for c, name in enumerate(blend.BLEND_CLASSES):
    row = report["per_class"][name]
    assert row["sensitivity"] == pytest.approx(skm.recall_score(y == c, pred == c))
    assert row["specificity"] == pytest.approx(skm.recall_score(y != c, pred != c))
    assert row["f1"] == pytest.approx(skm.f1_score(y == c, pred == c))
    assert row["auc"] == pytest.approx(skm.roc_auc_score(y == c, probs[:, c]))
  np.testing.assert_array_equal(report["confusion_matrix"], skm.confusion_matrix(y, pred))
  # Detection quality on the tiny model's own outputs (numbers in [0, 1]).
  full = blend.TASK.summarize({**batch, **out}, cfg)
  assert 0.0 <= full["detection"]["centre_hit_rate"] <= 1.0
  assert full["detection"]["num_slices"] == 4
  paths = blend.write_figures(outputs, report, str(tmp_path))
  cam = blend.write_grad_cam(model, v, batch["hu"][:3], cfg, str(tmp_path / "cam.png"),
                             batch["label"][:3], batch["boxes"][:3])
  for p in paths + [cam]:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ pretrained backbone


@pytest.mark.parametrize("backbone,first_conv", [
    ("resnet50", "conv1"), ("vgg16", "conv0"), ("inception_v3", "Conv2d_1a_3x3")])
def test_blend_phantom_fine_tunes_the_shipped_backbone_of_another_seed(backbone, first_conv):
  from configs import pretrain_blend_phantom
  from ctjax.models import pretrained
  c = blend_phantom.get_config(f"backbone={backbone}")
  assert c.model.backbone == backbone
  assert c.model.backbone_weights == f"asset:{backbone}_w0125_blend_phantom.npz"
  # Shapes of the configured model (free: eval_shape), zero values, then the asset loaded.
  model = blend.TASK.build_model(c)
  shapes = jax.eval_shape(lambda: blend.TASK.init_variables(model, c, jax.random.PRNGKey(0)))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  loaded = blend.TASK.load_pretrained(c, zeros)
  asset = pretrained.load_variables(pretrained.resolve_weights_path(c.model.backbone_weights))
  # VGG16 has no BatchNorm (the pretraining's is folded into its convolutions on export).
  cols = ("params",) if backbone == "vgg16" else ("params", "batch_stats")
  assert set(asset) == set(cols)
  for col in cols:
    assert jax.tree.structure(loaded[col]) == jax.tree.structure(shapes[col])
    jax.tree.map(lambda a, s: np.testing.assert_equal(a.shape, s.shape), loaded[col],
                 shapes[col])
    jax.tree.map(np.testing.assert_array_equal, loaded[col]["backbone"], asset[col])
    for name, tree in loaded[col].items():   # the heads keep their (zero) initial values
      if name != "backbone":
        assert not any(np.any(a) for a in jax.tree.leaves(tree)), name
  kernel = loaded["params"]["backbone"][first_conv]
  assert np.abs(kernel.get("kernel", kernel.get("conv", {}).get("kernel"))).max() > 0
  # Its recipe: the same backbone, width and windows on phantoms of another seed.
  pre = pretrain_blend_phantom.get_config(f"backbone={backbone}")
  assert (pre.model.backbone, pre.model.backbone_width) == (c.model.backbone,
                                                            c.model.backbone_width)
  assert pre.model.batch_norm == (backbone == "vgg16")
  assert pre.data.synth.layout == c.data.synth.layout == "blend"
  assert pre.data.synth.seed != c.data.synth.seed   # never the evaluation phantoms
  assert pre.data.windows == c.data.windows
  # Other widths have no shipped file: from scratch, at the paper's base-lr.
  scratch = blend_phantom.get_config(f"backbone={backbone},width=0.0625")
  assert scratch.model.backbone_weights == "" and scratch.optimizer.lr == 0.01
  assert c.optimizer.lr == 1e-3 and c.optimizer.schedule == "poly"   # fine-tuning


def test_input_norm_unit_feeds_the_windows_as_they_are():
  """config.data.input_norm: "imagenet" (ctjax) or "unit" (the paper's [0, 1] interval)."""
  from ctjax.data import windows
  cfg = _config()
  hu = _batch()["hu"]
  x = np.asarray(blend.preprocess(hu, cfg))
  raw = windows.apply_windows(np.asarray(hu), cfg.data.windows)
  np.testing.assert_allclose(x, windows.imagenet_normalize(raw), rtol=1e-6, atol=1e-6)
  cfg.data.input_norm = "unit"
  y = np.asarray(blend.preprocess(hu, cfg))
  np.testing.assert_allclose(y, raw, rtol=1e-6, atol=1e-6)
  assert y.min() >= 0.0 and y.max() <= 1.0
  cfg.data.input_norm = "minmax"
  with pytest.raises(blend.ConfigError, match="input_norm"):
    blend.TASK.validate_config(cfg)
