"""`python -m benchmarks.gpu`: the device run rehearsed on the CPU, and what its figures rest on.

- The `--smoke` run in a subprocess with grain, pydicom, tensorboardX and ml_collections made
  unimportable (a bare GPU host's python3 has none of them): every figure's line, in the schema, a forced
  out-of-memory recorded while the others still run, an out-of-memory fallback to a smaller
  batch, and the budget guard.
- The chunked DrCT2 program against the library's model, the losses against the tasks' own
  `loss_fn`, the plan's sizes against the configs, the torch peer's chunked DrCT2 against
  `TorchDrCT2`, and the roofline walker against textbook counts.
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, gpu, gpu_models, gpu_plan, roofline

ROOT = pathlib.Path(__file__).resolve().parents[2]
BLOCKED = ("grain", "pydicom", "tensorboardX", "ml_collections")
LINE_FIELDS = set(common.RECORD_FIELDS) | {"status", "error", "error_kind", "skipped",
                                           "details", "run_id", "elapsed_s"}


def _blocked_env(tmp_path: pathlib.Path) -> dict:
  """PYTHONPATH with a sitecustomize that makes the device's missing modules unimportable
  (`sys.modules[name] = None`: `import name` raises ImportError), for this process and the
  torch peer it starts."""
  shim = tmp_path / "shim"
  shim.mkdir()
  (shim / "sitecustomize.py").write_text(textwrap.dedent(f"""
      import sys
      for name in {BLOCKED!r}:
        sys.modules[name] = None
      """))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(shim), str(ROOT), env.get("PYTHONPATH", "")])
  env.pop("OUT", None)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _lines(path: pathlib.Path) -> dict:
  out = {}
  for raw in path.read_text().splitlines():
    line = json.loads(raw)
    assert line["name"] not in out, f"{line['name']} written twice"
    out[line["name"]] = line
  return out


def test_smoke_run_without_the_modules_the_device_lacks(tmp_path):
  """The whole run at tiny sizes (~40-60 s on 2 idle cores, dominated by XLA compiling a
  ResNet-50 step and the DrCT2 programs): the reason this test is slow."""
  env = _blocked_env(tmp_path)
  probe = subprocess.run([sys.executable, "-c", "import ml_collections"], env=env,
                         capture_output=True, text=True, cwd=ROOT)
  assert probe.returncode != 0 and "halted; None in sys.modules" in probe.stderr   # blocked
  out = tmp_path / "gpu.jsonl"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(out),
       "--inject-failure", "drct2/infer/bf16=oom-once",
       "--inject-failure", "drct2/infer/tf32=oom"],
      env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "# wrote" in proc.stdout and "drct2/infer/bf16" in proc.stdout
  lines = _lines(out)
  names = [f.name for f in gpu.figures(gpu_plan.SMOKE)]
  assert list(lines) == names                          # every figure, in priority order
  env_line = lines["environment"]
  assert env_line["details"]["absent_here"] == {m: True for m in BLOCKED}
  assert env_line["details"]["torch_peer"]["torch"]    # the peer started without them too
  for name, line in lines.items():
    assert set(line) == LINE_FIELDS, name
    assert line["device"].startswith("cpu"), name
    if name == "drct2/infer/tf32":
      continue
    assert line["status"] == "ok", (name, line["error"], line["details"].get("torch_error"))
    if name == "environment":
      continue
    for key in ("value", "torch_value", "ratio_vs_torch"):
      assert isinstance(line[key], float) and math.isfinite(line[key]) and line[key] > 0, (
          name, key, line["details"].get("torch_error"))
    assert line["ratio_vs_torch"] == pytest.approx(line["value"] / line["torch_value"])
    if name != "input/h2d":   # programs: compiled apart from their (timed) executions
      assert line["compile_s"] > 0 and line["details"]["first_call_s"] > 0, name
      assert line["roofline_fraction"] > 0, name
    if name.startswith(("drct2", "featstore", "blend")):
      assert 0 < line["flop_fraction"] < 1, name
      assert line["details"]["walker_flops"] > 0 and line["details"]["floor_s"] > 0, name
  # The forced out-of-memory: recorded as such, the figures after it still measured.
  failed = lines["drct2/infer/tf32"]
  assert failed["status"] == "error" and failed["error_kind"] == "oom"
  assert "RESOURCE_EXHAUSTED" in failed["error"] and failed["value"] is None
  # Out of memory at the first batch: the next one tried, and kept ("batch as fits").
  fell_back = lines["drct2/infer/bf16"]["details"]
  assert fell_back["batch"] == gpu_plan.SMOKE.infer_batches[1]
  assert [o["batch"] for o in fell_back["ooms"]] == [gpu_plan.SMOKE.infer_batches[0]]
  # Chunked programs take FLOPs from the unchunked program (XLA counts a loop body once).
  assert lines["drct2/infer/bf16"]["details"]["flops_source"] == "xla-lowered-unchunked"
  assert lines["drct2/train_e2e/bf16"]["details"]["flops_source"] == "xla-lowered-unchunked"
  table = gpu.markdown(out)   # the README table of this run
  rows = [r.split(" | ")[0][2:] for r in table.splitlines()[4:]]
  assert rows == names[1:]
  assert "error: JaxRuntimeError: RESOURCE_EXHAUSTED" in table


def test_budget_guard_skips_with_a_reason(tmp_path):
  out = tmp_path / "gpu.jsonl"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--no-torch", "--budget-s", "0",
       "--out", str(out)], env=_blocked_env(tmp_path), capture_output=True, text=True,
      cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = _lines(out)
  assert lines.pop("environment")["status"] == "ok"
  assert set(lines) == {f.name for f in gpu.figures(gpu_plan.SMOKE)} - {"environment"}
  for name, line in lines.items():
    assert line["status"] == "skipped" and line["value"] is None, name
    assert line["skipped"].startswith("budget: needs ~") and "of the 0 s budget" in line["skipped"]


def test_a_failing_figure_is_recorded_and_the_next_runs(tmp_path):
  run = gpu.Run(gpu_plan.SMOKE, tmp_path / "g.jsonl", 100.0, with_torch=False)

  def boom(run, det):
    det["reached"] = True
    raise ValueError("no such thing")

  def oom(run, det):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 TiB")

  def fine(run, det):
    line = gpu.empty_line("fine", run.device, "x/s")
    line["value"] = 1.0
    return line

  for fig in (gpu.Figure("boom", boom, 1, 1), gpu.Figure("oom", oom, 1, 1),
              gpu.Figure("fine", fine, 1, 1)):
    gpu.run_figure(run, fig)
  run.close()
  lines = _lines(tmp_path / "g.jsonl")
  assert lines["boom"]["status"] == "error" and lines["boom"]["error_kind"] == "error"
  assert lines["boom"]["error"] == "ValueError: no such thing"
  assert lines["boom"]["details"]["reached"] is True      # what the figure knew is kept
  assert lines["oom"]["error_kind"] == "oom"
  assert lines["fine"]["status"] == "ok" and lines["fine"]["value"] == 1.0


def test_inject_failure_flag_is_checked(capsys):
  assert gpu.main(["--smoke", "--inject-failure", "matmul/bf16=crash"]) == 2
  assert "expected FIGURE=oom|oom-once|error" in capsys.readouterr().err
  bad = ROOT / "pyproject.toml"
  assert gpu.main(["--render", str(bad)]) == 1
  assert capsys.readouterr().err.startswith(f"benchmarks.gpu: {bad}: not a results file")


# --------------------------------------------------------------------------------------------
# What the figures rest on
# --------------------------------------------------------------------------------------------

def _o0(fn, *args):
  """jit + run once with XLA's backend optimisation off (half the CPU compile time; the
  arithmetic is unchanged)."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def _tiny_drct(dtype=jnp.float32):
  s = gpu_plan.SMOKE.drct
  model = gpu_models.build_drct2(s, dtype)
  return s, model, gpu_models.init_drct2(model, s, seed=3)


def test_chunked_drct2_predict_equals_the_model():
  """Chunks that do not divide the slices (padding), the two-phase APS: the same outputs as
  the library's DrCT2 on the task's preprocessing."""
  from ctjax.data.windows import apply_windows, imagenet_normalize
  s, model, variables = _tiny_drct()
  hu = jnp.asarray(gpu_plan.drct_batch(s, 3, seed=5)["hu"])
  ours = _o0(gpu_models.drct2_predict(model, s, chunk=5), variables, hu)
  x = imagenet_normalize(apply_windows(hu, s.windows))   # image_size == primary_size here
  ref = gpu_models.drct2_outputs(_o0(lambda v, x: model.apply(v, x), variables, x))
  assert set(ours) == set(ref)
  for k in ref:
    np.testing.assert_allclose(np.asarray(ours[k]), np.asarray(ref[k]), rtol=1e-5, atol=1e-6,
                               err_msg=k)


def test_drct2_loss_and_features_match_the_task():
  """The end-to-end step's loss (chunked features, heads in train mode) equals
  `DrCTTask.loss_fn` on the full model with the same parameters and rng."""
  from ctjax.train.tasks.drct import DrCTTask
  s, model, variables = _tiny_drct()
  config = common.override(common.load_config("drct2_rsna"), {
      "data.num_slices": s.num_slices, "data.image_size": s.image_size,
      "model.primary_size": s.primary_size, "model.mkey": s.mkey, "model.aps_size": s.aps_size})
  host = gpu_plan.drct_batch(s, 3, seed=7)
  batch = {"hu": jnp.asarray(host["hu"]), "labels": jnp.asarray(host["labels"]),
           "valid": jnp.ones(3, bool)}
  rng = jax.random.PRNGKey(11)
  params = variables["params"]
  extra = {"batch_stats": variables["batch_stats"]}

  def ours(params, hu, labels):
    feats = gpu_models.drct2_features(model, variables, hu, s, chunk=4)
    d_rng, a_rng = jax.random.split(rng)
    heads = {k: v for k, v in params.items() if k != "backbone"}
    out, _ = model.apply({"params": heads, **extra}, None, features=feats, train=True,
                         rngs={"dropout": d_rng, "aps": a_rng}, mutable=["batch_stats"])
    return gpu_models.drct2_loss(out, labels)

  from ctjax.train.tasks.drct import slice_preprocess
  full = model.clone(slice_preprocess=slice_preprocess(config), primary_size=s.primary_size)
  want = _o0(lambda p, b: DrCTTask().loss_fn(full, p, extra, b, rng, config, True)[0],
             params, batch)
  got = _o0(ours, params, batch["hu"], batch["labels"])
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_blend_loss_matches_the_task():
  from ctjax.train.tasks.blend import BlendTask
  bs = gpu_plan.SMOKE.blend
  config = common.override(common.load_config("blend_resnet50", "variant=wce_at"), {
      "data.image_size": bs.image_size, "model.backbone_width": bs.width, "model.backbone_weights": "",
      "data.augment.enabled": False})
  model = gpu_models.build_blend(bs, jnp.float32)
  variables = gpu_models.init_blend(model, bs, seed=2)
  host = gpu_plan.blend_batch(bs, 4, seed=3)
  assert (host["num_boxes"] > 0).any()   # the detection terms are exercised
  batch = {k: jnp.asarray(v) for k, v in host.items()}
  params, extra = variables["params"], {"batch_stats": variables["batch_stats"]}
  task = BlendTask()

  def both(params, batch):
    want = task.loss_fn(model, params, extra, batch, jax.random.PRNGKey(0), config, True)[0]
    x = gpu_models.blend_preprocess(batch["hu"], bs, model.dtype)
    out, _ = model.apply({"params": params, **extra}, x, train=True, mutable=["batch_stats"])
    got = gpu_models.blend_loss(out, batch, bs.image_size / out["det"].shape[1], bs)
    return got, want

  got, want = _o0(both, params, batch)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_plan_sizes_are_the_configs():
  d = common.load_config("drct2_rsna")
  s = gpu_plan.GPU.drct
  assert (s.num_slices, s.image_size, s.primary_size, s.mkey, s.aps_size, s.width) == (
      d.data.num_slices, d.data.image_size, d.model.primary_size, d.model.mkey,
      d.model.aps_size, d.model.backbone_width)
  assert (s.gru_hidden, s.seq_dim, tuple(s.fc_widths), s.aps_fc_dim, s.dropout) == (
      d.model.gru_hidden, d.model.seq_dim, tuple(d.model.fc_widths), d.model.aps_fc_dim,
      d.model.dropout_rate)
  assert (s.num_labels, s.windows) == (len(d.data.labels), d.data.windows)
  lr, mult = d.optimizer.lr, d.optimizer.lr_mults
  assert (s.lr_primary, s.lr_aps, s.lr_fusion) == pytest.approx(
      (lr * mult.primary, lr * mult.aps, lr * mult.fusion))
  assert (d.loss.primary, d.loss.aps, d.loss.fusion) == ("mse", "mse", "bce")   # drct2_loss
  assert gpu_plan.GPU.store_train_batch == d.train.batch_size == gpu_plan.GPU.e2e_batches[0]
  b = common.load_config("blend_resnet50", "variant=wce_at")
  bs = gpu_plan.GPU.blend
  assert (bs.image_size, bs.width, bs.det_hidden, bs.num_classes, bs.max_boxes, bs.windows) == (
      b.data.image_size, b.model.backbone_width, b.model.det_hidden, b.model.num_classes,
      b.data.max_boxes, b.data.windows)
  assert b.model.backbone == "resnet50"
  for k in ("class_weights", "cls_weight", "det_weight", "focal_alpha", "focal_beta",
            "min_overlap", "det_normalize"):
    assert getattr(bs, k) == (tuple(b.loss[k]) if k == "class_weights" else b.loss[k]), k
  assert bs.learning_rate == b.optimizer.lr and b.optimizer.schedule == "poly"
  for k in ("power", "momentum", "weight_decay"):
    assert getattr(bs, k) == b.optimizer[k], k
  assert {batch for _, batch in gpu_plan.GPU.blend_train} == {b.train.batch_size, 64}


def test_chunked_torch_drct2_equals_torch_reference():
  torch = pytest.importorskip("torch")
  from benchmarks import gpu_torch
  from tests.support.torch_models import TorchDrCT2
  s = gpu_plan.SMOKE.drct
  spec = gpu_torch.drct_spec(s)
  torch.manual_seed(0)
  ref = TorchDrCT2(spec).eval()
  ours = gpu_torch.ChunkedTorchDrCT2(spec, chunk=3).eval()
  ours.load_state_dict(ref.state_dict())
  hu = torch.from_numpy(gpu_plan.drct_batch(s, 2, seed=1)["hu"])
  with torch.no_grad():
    want, got = ref(hu), ours(hu)
    b, m = hu.shape[:2]
    pooled, fmap = ours.encode_primary(hu.reshape(b * m, *hu.shape[2:]))
    aps_all = ours.encode_aps(hu.reshape(b * m, *hu.shape[2:])).view(b, m, -1)
    stored = ours.forward_store(pooled.view(b, m, -1), fmap.view(b, m, *fmap.shape[1:]),
                                aps_all)
  for k in want:
    torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(stored[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_prepare_for_cuda_keeps_the_function():
  torch = pytest.importorskip("torch")
  from tests.support.torch_models import TorchBlendNet, prepare_for_cuda
  flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
           torch.backends.cudnn.allow_tf32)
  try:
    torch.manual_seed(0)
    net = TorchBlendNet("resnet50", 1 / 32, det_hidden=8).eval()
    hu = torch.from_numpy(gpu_plan.random_hu((2, 32, 32)))
    with torch.no_grad():
      want = net(hu)
      net = prepare_for_cuda(net)
      got = net(hu)
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    conv = net.backbone.model.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    for k in want:
      torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
  finally:
    (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
     torch.backends.cudnn.allow_tf32) = flags


# --------------------------------------------------------------------------------------------
# The roofline model and the pipelined peak
# --------------------------------------------------------------------------------------------

def test_walker_counts_convs_forward_backward_and_loops():
  torch = pytest.importorskip("torch")
  from tests.support import torch_models
  from ctjax.models.vgg import VGG16
  # Forward: the textbook count (2 × MACs of every conv, padding taps included; torch hooks).
  net = torch_models.build("vgg16", width=1 / 8, classifier=False).eval()
  macs = [0]
  for mod in net.modules():
    if isinstance(mod, torch.nn.Conv2d):
      mod.register_forward_hook(lambda m, _, o: macs.__setitem__(
          0, macs[0] + o.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1]))
  with torch.no_grad():
    net.features(torch.zeros(2, 3, 64, 64))
  vgg = VGG16(width=1 / 8)
  v = jax.eval_shape(lambda: vgg.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  ls = roofline.layers(lambda v, x: vgg.apply(v, x)["pooled"], v, x)
  convs = [l for l in ls if l.kind == "conv"]
  assert len(convs) == 13 and sum(l.kind == "pool" for l in ls) == 5
  assert roofline.total_flops(convs) == pytest.approx(2 * macs[0])
  # Chunked over a lax.map: the same totals, counted per chunk × chunks.
  chunked = roofline.layers(lambda v, x: gpu_models.chunked_map(
      lambda c: vgg.apply(v, c)["pooled"], x, 1), v, jax.ShapeDtypeStruct((3, 64, 64, 3),
                                                                          jnp.float32))
  assert roofline.total_flops(chunked) == pytest.approx(1.5 * roofline.total_flops(convs))
  assert chunked[0].count == 3
  # Backward of a strided conv: forward + data gradient + weight gradient, each the same work.
  w = jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.float32)
  img = jax.ShapeDtypeStruct((2, 16, 16, 4), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(   # noqa: E731
      x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fwd = 2.0 * (2 * 8 * 8 * 8) * (3 * 3 * 4)
  grads = roofline.layers(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)),
                          img, w)
  assert [l.kind for l in grads] == ["conv"] * 3
  assert [l.flops for l in grads] == pytest.approx([fwd, fwd, fwd], rel=0.15)   # dilated taps
  # bytes: operands read once, result written once.
  assert grads[0].bytes == 4 * (2 * 16 * 16 * 4 + 3 * 3 * 4 * 8 + 2 * 8 * 8 * 8)


def test_floor_is_the_larger_of_compute_and_memory_per_layer():
  ls = [roofline.Layer("dot", 1e12, 1e9, "bfloat16", 2),      # compute-bound: 1 s each
        roofline.Layer("pool", 0.0, 4e12, "bfloat16", 1)]     # memory-bound: 2 s
  peaks, bw = {"bfloat16": 1e12, "float32": 5e11}, 2e12
  assert roofline.floor_seconds(ls, peaks, bw) == pytest.approx(2 * 1.0 + 2.0)
  s = roofline.summary(ls, peaks, bw)
  assert s["floor_memory_bound_s"] == pytest.approx(2.0) and s["floor_compute_s"] == \
      pytest.approx(2.0)
  assert roofline.floor_seconds(ls, {}, bw) is None            # no measured peak: no floor
  assert roofline.floor_seconds([roofline.Layer("dot", 1e12, 0, "float32")], peaks, bw) == \
      pytest.approx(2.0)                                       # float32 at the TF32 peak


def test_matmul_chain_and_peak_are_pipelined():
  a, b = common.matmul_operands(32, jnp.float32)
  got = np.asarray(common.matmul_chain(3)(a, b), np.float64)
  an, bn = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(got, an @ bn @ bn @ bn, rtol=1e-4, atol=1e-5)
  peak = common.matmul_peak(jnp.float32, 64, repeats=2, iters=4)
  assert peak["iters"] == 4 and peak["n"] == 64 and peak["peak"] >= peak["xla"] > 0


def test_aot_compile_times_compilation_apart():
  c = common.aot_compile(lambda x, y: x @ y, jnp.ones((16, 8)), jnp.ones((8, 4)))
  assert c.lower_s > 0 and c.compile_s > 0 and c.total_s == c.lower_s + c.compile_s
  assert c.flops == pytest.approx(2 * 16 * 8 * 4)
  assert np.asarray(c.executable(jnp.ones((16, 8)), jnp.ones((8, 4))))[0, 0] == 8.0
