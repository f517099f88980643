"""benchmarks.common's torch timing: CUDA synchronisation and the device choice (simulated: the
test machine has no GPU; torch.cuda and jax.default_backend are patched)."""

import pathlib
import time

import jax
import torch

from benchmarks import common


def _ctx(tmp_path):
  return common.Context(preset="tiny", settings={}, workdir=pathlib.Path(tmp_path), warmup=1,
                        repeats=3, torch_threads=1)


def _fake_cuda(monkeypatch, *, available: bool, backend: str, kernel_s: float = 0.0):
  """torch.cuda with `available` devices whose queued work takes `kernel_s` to finish."""
  calls = []

  def synchronize():
    calls.append(1)
    time.sleep(kernel_s)

  monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
  monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  return calls


def test_torch_device_follows_jax_backend(monkeypatch):
  _fake_cuda(monkeypatch, available=True, backend="gpu")
  assert common.torch_device().type == "cuda"
  _fake_cuda(monkeypatch, available=True, backend="cpu")
  assert common.torch_device().type == "cpu"
  _fake_cuda(monkeypatch, available=False, backend="gpu")
  assert common.torch_device().type == "cpu"


def test_time_torch_waits_for_the_gpu(tmp_path, monkeypatch):
  # Launch returns at once; the "kernels" finish 30 ms later, at synchronize().
  calls = _fake_cuda(monkeypatch, available=True, backend="gpu", kernel_s=0.03)
  t = _ctx(tmp_path).time_torch(lambda: None)
  assert len(calls) == 1 + 3   # warm-up + each timed call
  assert t.median >= 0.03


def test_time_torch_on_cpu_never_synchronises(tmp_path, monkeypatch):
  calls = _fake_cuda(monkeypatch, available=False, backend="cpu", kernel_s=0.03)
  x = torch.ones(8, 8)
  t = _ctx(tmp_path).time_torch(lambda: x @ x)
  assert calls == [] and t.n == 3 and t.median < 0.03
  # CUDA present but JAX (hence torch) on the CPU, CPU outputs: still no synchronisation.
  calls = _fake_cuda(monkeypatch, available=True, backend="cpu")
  _ctx(tmp_path).time_torch(lambda: x @ x)
  assert calls == []


def test_torch_sync_on_cuda_outputs(monkeypatch):
  calls = _fake_cuda(monkeypatch, available=True, backend="cpu")

  class FakeCuda(torch.Tensor):
    is_cuda = True

  out = {"a": [torch.ones(1), torch.ones(2).as_subclass(FakeCuda)]}
  assert common.torch_sync(out) is out and len(calls) == 1
  common.torch_sync({"a": torch.ones(1)})
  assert len(calls) == 1


def test_pick_torch_threads_waits_for_the_gpu(tmp_path, monkeypatch):
  calls = _fake_cuda(monkeypatch, available=True, backend="gpu")
  n = _ctx(tmp_path).pick_torch_threads(lambda: None)
  assert n in common.torch_thread_options()
  assert len(calls) == 2 * len(common.torch_thread_options())


def test_run_reporting_errors_one_line_and_exit_1(capsys):
  from ctjax.errors import CTDataError

  def bad():
    raise CTDataError("no slices here", "/data/scan")

  assert common.run_reporting_errors(lambda a, b=0: a + b, 1, b=2) == (3, 0)
  assert common.run_reporting_errors(bad) == (None, 1)
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "/data/scan" in err[0]
