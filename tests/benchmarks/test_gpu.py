"""`python -m benchmarks.gpu`: the device run rehearsed on the CPU, and what its figures rest on.

- The `--smoke` run in a subprocess with grain, pydicom and tensorboardX unimportable and
  ml_collections importable only from a carried folder (as `pip install --target` of its wheel
  leaves it; a bare GPU host's python3 has none of them): every figure's line in the one Record
  schema, in the headline-first order, a forced out-of-memory recorded while the others still
  run, an out-of-memory fallback to a smaller batch, the budget guard, the HLO of every timed
  program saved, the rendered table.
- The library's programs (not copies): no Flax module under benchmarks/; the copy figure's input
  donated; JAX's memory share leaving the PyTorch peer room; the plan's sizes against the
  configs; the torch peer's chunked DrCT2 against `TorchDrCT2`; the roofline pieces.
"""

import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, gpu, gpu_plan

ROOT = pathlib.Path(__file__).resolve().parents[2]
BLOCKED = ("grain", "pydicom", "tensorboardX")
CARRIED = "ml_collections"
LINE_FIELDS = set(common.RECORD_FIELDS) | {"status", "error", "error_kind", "skipped", "peer",
                                           "details", "run_id", "elapsed_s"}
HEADLINE = ["environment", "matmul/bf16", "hbm/copy", "drct2/infer/bf16", "blend/train/bf16/b2"]


def _blocked_env(tmp_path: pathlib.Path, carry: bool = True) -> dict:
  """PYTHONPATH with a sitecustomize that makes the device's missing modules unimportable
  (`sys.modules[name] = None`: `import name` raises ImportError) and finds ml_collections only
  in `<tmp>/site` (a copy of the installed package: what the carried wheel installs), for this
  process and the torch peer it starts."""
  shim = tmp_path / "shim"
  site = tmp_path / "site"
  shim.mkdir()
  site.mkdir()
  if carry:
    import ml_collections
    shutil.copytree(pathlib.Path(ml_collections.__file__).parent, site / CARRIED)
  (shim / "sitecustomize.py").write_text(textwrap.dedent(f"""
      import importlib.machinery
      import sys
      for name in {BLOCKED!r}:
        sys.modules[name] = None

      class _CarriedOnly:
        @staticmethod
        def find_spec(name, path=None, target=None):
          if name != {CARRIED!r}:
            return None
          spec = importlib.machinery.PathFinder.find_spec(name, [{str(site)!r}])
          if spec is None:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not carried)", name=name)
          return spec

      sys.meta_path.insert(0, _CarriedOnly)
      """))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(shim), str(ROOT), env.get("PYTHONPATH", "")])
  env.pop("OUT", None)
  env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _lines(path: pathlib.Path) -> dict:
  out = {}
  for raw in path.read_text().splitlines():
    line = json.loads(raw)
    assert line["name"] not in out, f"{line['name']} written twice"
    out[line["name"]] = line
  return out


def test_the_blocking_shim_blocks(tmp_path):
  env = _blocked_env(tmp_path, carry=False)
  for name in BLOCKED + (CARRIED,):
    probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env,
                           capture_output=True, text=True, cwd=ROOT)
    assert probe.returncode != 0, name
  probe = subprocess.run([sys.executable, "-c", "import ctjax.train.programs"], env=env,
                         capture_output=True, text=True, cwd=ROOT)
  assert "ml_collections" in probe.stderr and "not carried" in probe.stderr


def test_library_programs_import_without_grain_pydicom_tensorboardx(tmp_path):
  """The programs of both papers build (abstractly) with only ml_collections carried."""
  code = textwrap.dedent("""
      import sys
      from benchmarks import gpu, gpu_plan
      for cfg, kind, batch in ((gpu.drct2_config(gpu_plan.SMOKE, "bfloat16"), "eval", 1),
                               (gpu.drct2_config(gpu_plan.SMOKE, "bfloat16",
                                                 features__enabled=True), "train", None),
                               (gpu.drct2_config(gpu_plan.SMOKE, "bfloat16"), "store", None),
                               (gpu.blend_config(gpu_plan.SMOKE, "bfloat16", 2), "train", None)):
        gpu.build(cfg, kind, batch)
      bad = [m for m in ("grain", "pydicom", "tensorboardX") if sys.modules.get(m) is not None]
      assert not bad, bad
      import ml_collections
      print(ml_collections.__file__)
      """)
  proc = subprocess.run([sys.executable, "-c", code], env=_blocked_env(tmp_path),
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().startswith(str(tmp_path / "site"))


def test_smoke_run_without_the_modules_the_device_lacks(tmp_path):
  """The whole run at tiny sizes (~3 min on 2 cores, dominated by XLA compiling a ResNet-50
  step and the DrCT2 programs): the reason this test is slow."""
  env = _blocked_env(tmp_path)
  out = tmp_path / "run" / "gpu.jsonl"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(out),
       "--inject-failure", "drct2/infer/bf16=oom-once",
       "--inject-failure", "blend/infer/bf16/b4=oom"],
      env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "# wrote" in proc.stdout and "PyTorch eager" in proc.stdout
  lines = _lines(out)
  names = [f.name for f in gpu.figures(gpu_plan.SMOKE)]
  assert list(lines) == names                          # every figure, in order
  assert names[:len(HEADLINE)] == HEADLINE             # the headline first
  env_line = lines["environment"]
  assert env_line["details"]["absent_here"] == {m: True for m in BLOCKED}
  assert env_line["details"]["carried"][CARRIED].startswith(str(tmp_path / "site"))
  assert env_line["details"]["torch_peer"]["torch"]    # the peer started without them too
  timed = ("matmul", "hbm", "drct2/infer", "blend/train", "featstore", "drct2/train")
  for name, line in lines.items():
    assert set(line) == LINE_FIELDS, name
    assert line["device"].startswith("cpu") and line["peer"] == "torch-eager", name
    if name in ("blend/infer/bf16/b4", "drct2/latency/dicom"):
      continue
    assert line["status"] == "ok", (name, line["error"], line["details"].get("torch_error"))
    if not name.startswith(timed + ("input/h2d",)):
      continue
    for key in ("value", "torch_value", "ratio_vs_torch"):
      assert isinstance(line[key], float) and math.isfinite(line[key]) and line[key] > 0, (
          name, key, line["details"].get("torch_error"))
    assert line["ratio_vs_torch"] == pytest.approx(line["value"] / line["torch_value"])
    if name.startswith(timed):   # programs: compiled apart from their (timed) executions
      assert line["compile_s"] > 0 and line["details"]["first_call_s"] > 0, name
      assert line["roofline_fraction"] > 0, name
      hlo = out.parent / "hlo" / f"{gpu.hlo_name(name)}.hlo.txt"
      assert hlo.read_text().startswith("HloModule"), name
    if name.startswith(("drct2", "featstore", "blend")):
      assert 0 < line["flop_fraction"] < 1, name
      assert line["details"]["hlo_flops"] > 0 and line["details"]["floor_s"] > 0, name
      assert line["details"]["flops_source"].startswith("optimized HLO"), name
  assert lines["hbm/copy"]["details"]["donated"] and lines["hbm/copy"]["details"]["exact"]
  # The GRU check: on a CPU both are the XLA form, and they agree.
  gru_d = lines["gru/pallas_vs_xla"]["details"]
  assert gru_d["both_xla"] and not gru_d["auto_is_pallas"]
  assert gru_d["by_dtype"]["fp32"]["max_abs_d_out"] == 0.0
  # Latency: p50/p90 over the plan's calls; DICOM skipped with its reason (no pydicom).
  lat = lines["drct2/latency/b1"]["details"]
  assert lat["calls"] == gpu_plan.SMOKE.latency_calls and lat["p90_s"] >= lat["p50_s"] > 0
  assert lines["drct2/latency/b1"]["value"] == lat["p50_s"]
  dicom = lines["drct2/latency/dicom"]
  assert dicom["status"] == "skipped" and "pydicom" in dicom["skipped"]
  acc = lines["drct2/accuracy/bf16_vs_fp32"]
  assert 0 <= acc["value"] < 0.1 and acc["unit"] == "max|Δp|"
  # The forced out-of-memory: recorded as such, the figures after it still measured.
  failed = lines["blend/infer/bf16/b4"]
  assert failed["status"] == "error" and failed["error_kind"] == "oom"
  assert "RESOURCE_EXHAUSTED" in failed["error"] and failed["value"] is None
  assert lines["input/h2d"]["status"] == "ok"
  # Out of memory at the first batch: the next one tried, and kept ("batch as fits").
  fell_back = lines["drct2/infer/bf16"]["details"]
  assert fell_back["batch"] == gpu_plan.SMOKE.infer_batches[1]
  assert [o["batch"] for o in fell_back["ooms"]] == [gpu_plan.SMOKE.infer_batches[0]]
  table = gpu.markdown(out)   # the README table of this run
  assert "| PyTorch eager |" in table.splitlines()[2]
  rows = [r.split(" | ")[0][2:] for r in table.splitlines()[4:] if r.startswith("| ")]
  assert rows == names[1:]
  assert "error: JaxRuntimeError: RESOURCE_EXHAUSTED" in table
  assert "paper (Table 8) 0.82 s/scan" in table and f"p50 {lat['p50_s']:.4g}" in table
  render = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--render", str(out)],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert render.returncode == 0 and render.stdout.strip() == table


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
    return gpu.empty_record("fine", run.device, "x/s", value=1.0)

  def cannot(run, det):
    raise gpu.SkipFigure("no such module here")

  for fig in (gpu.Figure("boom", boom, 1, 1), gpu.Figure("oom", oom, 1, 1),
              gpu.Figure("fine", fine, 1, 1), gpu.Figure("cannot", cannot, 1, 1)):
    gpu.run_figure(run, fig)
  run.close()
  lines = _lines(tmp_path / "g.jsonl")
  assert lines["boom"]["status"] == "error" and lines["boom"]["error_kind"] == "error"
  assert lines["boom"]["error"] == "ValueError: no such thing"
  assert lines["boom"]["details"]["reached"] is True      # what the figure knew is kept
  assert lines["oom"]["error_kind"] == "oom"
  assert lines["fine"]["status"] == "ok" and lines["fine"]["value"] == 1.0
  assert lines["cannot"]["status"] == "skipped" and lines["cannot"]["skipped"] == \
      "no such module here"
  for line in lines.values():
    assert set(line) == LINE_FIELDS and line["peer"] == "torch-eager"


def test_inject_failure_flag_is_checked(capsys):
  assert gpu.main(["--smoke", "--inject-failure", "matmul/bf16=crash"]) == 2
  assert "expected FIGURE=oom|oom-once|error" in capsys.readouterr().err
  bad = ROOT / "pyproject.toml"
  assert gpu.main(["--render", str(bad)]) == 1
  assert capsys.readouterr().err.startswith(f"benchmarks.gpu: {bad}: not a results file")


# --------------------------------------------------------------------------------------------
# What the figures rest on
# --------------------------------------------------------------------------------------------

def test_no_flax_module_is_defined_under_benchmarks():
  """Benchmarks time the library's programs: no model copies (a Flax module) in benchmarks/."""
  pattern = re.compile(r"^\s*class\s+\w+\s*\([^)]*\b(nn|linen)\.Module\b", re.M)
  found = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "benchmarks").rglob("*.py"))
           if pattern.search(p.read_text())]
  assert not found, found
  assert pattern.search("class VGG(nn.Module):\n") and pattern.search(
      "  class Head(linen.Module, Mixin):")   # the pattern sees what it guards against


def test_hbm_copy_donates_its_input():
  """The copy figure's executable aliases its input to its output: XLA does not copy the
  buffer before the passes (the figure read ~9 % low without)."""
  x = jnp.ones((1024,), jnp.float32)
  c = jnp.float32(-1.0)
  donated = gpu.hbm_chain(2).lower(x, c).compile().as_text()
  assert "input_output_alias" in donated
  plain = jax.jit(gpu.hbm_chain(2).__wrapped__).lower(x, c).compile().as_text()
  assert "input_output_alias" not in plain   # the check tells the two apart
  out = gpu.hbm_chain(3)(x, c)
  assert x.is_deleted() and float(out[0]) == -1.0


def test_jax_memory_share_leaves_room_for_the_torch_peer():
  h100, h200 = 80 * gpu.GIB, 141 * gpu.GIB
  for total in (h100, h200):
    frac = gpu.jax_memory_fraction(total)
    assert total * (1 - frac) >= 32 * gpu.GIB            # the blend peer at tf32 b64
    assert frac <= 0.75
  assert gpu.jax_memory_fraction(h200) > 0.7 > gpu.jax_memory_fraction(h100)
  assert gpu.jax_memory_fraction(None) is None
  assert gpu.jax_memory_fraction(16 * gpu.GIB) == gpu.MIN_JAX_FRACTION


def test_gpu_programs_are_built_from_the_configs():
  """The GPU plan's programs are the paper configs' own (sizes unchanged by drct2_config)."""
  from ctjax.configs import named
  d, g = named.get_config("drct2_rsna"), gpu.drct2_config(gpu_plan.GPU, "bfloat16")
  for key in ("data.num_slices", "data.image_size", "model.primary_size", "model.mkey",
              "model.aps_size", "model.backbone_width", "model.gru_hidden", "model.seq_dim",
              "model.aps_fc_dim", "model.backbone_chunk", "model.gru_kernel"):
    sec, leaf = key.split(".")
    assert g[sec][leaf] == d[sec][leaf], key
  assert tuple(g.model.fc_widths) == tuple(d.model.fc_widths)
  b = named.get_config("blend_resnet50", "variant=wce_at")
  gb = gpu.blend_config(gpu_plan.GPU, "bfloat16", 64)
  for key in ("data.image_size", "model.backbone_width", "model.det_hidden", "data.max_boxes"):
    sec, leaf = key.split(".")
    assert gb[sec][leaf] == b[sec][leaf], key


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
# The pipelined peak
# --------------------------------------------------------------------------------------------

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
