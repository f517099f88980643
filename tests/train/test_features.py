"""ctjax.train.features: the sharded frozen-backbone store — exact against the end-to-end model,
read through the real pipeline (no HU on that path), keyed, resumable after a kill, and the same
rows and losses from 2 processes × 2 devices as from 1 process × 4."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import stand_ins
from configs import drct2_rsna
from ctjax.data import cache, fake, pipeline
from ctjax.errors import ConfigError
from ctjax.models import pretrained
from ctjax.train import features as F
from ctjax.train.tasks.drct import TASK, check_config

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "features_worker.py")
SIZE = stand_ins.DRCT_SIZE


small_config = stand_ins.small_drct_config


def random_cache(config, num_scans=11, seed=0):
  """A random-HU cache where `config` looks for it (3 scans a shard)."""
  manifest = fake.write_random_cache_for(config, num_scans=num_scans, slices=(5, 9),
                                         scans_per_shard=3, seed=seed)
  return cache.CachedScans(manifest.parent)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  config = small_config(tmp_path_factory.mktemp("cache"), **{"features.store_maps": True})
  scans = random_cache(config)
  model = TASK.build_model(config)
  from ctjax.train.tasks import drct
  variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config))
  store = F.build_store(config, scans, model, variables)
  return config, scans, model, variables, store


def test_store_rows_give_the_full_model_outputs_and_loss(built):
  config, scans, model, variables, store = built
  assert store.names == ("pooled", "feature_map", "aps_pooled")
  assert len(store.manifest["shards"]) == 4   # one per HU shard (11 scans, 3 per shard)
  rng = np.random.default_rng(3)
  m = config.data.num_slices
  picks = [(2, np.sort(rng.choice(scans.scans[2].num_slices, m, replace=False))),
           (7, np.sort(rng.choice(scans.scans[7].num_slices, m, replace=False))),
           (10, np.arange(m))]
  batch = {"hu": np.stack([scans.scan_hu(i, idx) for i, idx in picks]),
           "labels": (rng.random((3, 6)) < 0.5).astype(np.float32),
           "valid": np.array([True, True, False])}
  rows = [store.rows(i, idx) for i, idx in picks]
  fbatch = {k: v for k, v in batch.items() if k != "hu"}
  fbatch.update({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  want = TASK.predict(model, variables, batch, config)
  got = TASK.predict(model, variables, fbatch, config)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-4, atol=1e-5,
                               err_msg=k)
  params = variables["params"]
  extra = {k: v for k, v in variables.items() if k != "params"}
  l1, _ = TASK.loss_fn(model, params, extra, batch, jax.random.key(1), config, True)
  l2, _ = TASK.loss_fn(model, params, extra, fbatch, jax.random.key(1), config, True)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)


def test_pipeline_reads_store_rows_and_no_hu(built, monkeypatch):
  config, scans, model, variables, store = built
  splits = pipeline.build_splits(config)
  data = F.FeatureData(pipeline, store)

  def no_hu(*args, **kwargs):
    raise AssertionError("HU read on the feature-store path")

  monkeypatch.setattr(cache.CachedScans, "scan_hu", no_hu)
  batch = next(data.train_iterator(config, splits, seed=0))
  assert "hu" not in batch
  assert batch["feat_pooled"].shape == (4, config.data.num_slices, 64)
  scan = splits["train"].indices[batch["example_index"][0]]
  np.testing.assert_array_equal(
      batch["feat_aps"][0], store.rows(int(scan), batch["slice_index"][0])["feat_aps"])
  evals = list(data.eval_batches(config, splits, "test"))
  assert evals and all("feat_map" in b and "hu" not in b for b in evals)


def test_store_is_reused_keyed_and_resumes_missing_shards(built, monkeypatch):
  config, scans, model, variables, store = built
  calls = []
  real = F._write_shard
  monkeypatch.setattr(F, "_write_shard", lambda *a, **k: (calls.append(a[1]), real(*a, **k)))
  again = F.build_store(config, scans, model, variables)
  assert again.path == store.path and calls == []          # complete: nothing computed
  # A killed build: the manifest and shard 2's marker missing → only shard 2 is rebuilt.
  first = np.array(store.array(2, "aps_pooled"))
  (store.path / "manifest.json").unlink()
  (store.path / "shard_00002.done.json").unlink()
  resumed = F.build_store(config, scans, model, variables)
  assert calls == [2]
  np.testing.assert_array_equal(resumed.array(2, "aps_pooled"), first)
  # Another APS zoom is another key: a new store beside the first.
  other = config.copy_and_resolve_references()
  other.model.aps_size = 32
  mapped = []
  real_release = scans.release
  monkeypatch.setattr(scans, "release", lambda j: (mapped.append(j), real_release(j)))
  moved = F.build_store(other, scans, model.clone(aps_size=32), variables)
  assert moved.path != store.path and moved.path.parent == store.path.parent
  # Each HU shard is unmapped once its rows are done (resident memory O(shard)).
  assert sorted(mapped) == list(range(len(scans.manifest["shards"]))) and not scans._mmaps
  np.testing.assert_array_equal(moved.array(0, "pooled"), store.array(0, "pooled"))


def test_store_key_follows_inputs(built, monkeypatch):
  config, scans, model, variables, store = built
  backbone = variables["params"]["backbone"]
  key = F.store_key(config, scans, model, backbone)[0]
  assert store.path.name == key
  bumped = jax.tree.map(lambda a: a, backbone)
  first = sorted(bumped)[0]
  bumped[first] = dict(bumped[first], kernel=np.asarray(bumped[first]["kernel"]) + 1e-3)
  assert key != F.store_key(config, scans, model, bumped)[0]
  for field, value in (("model.primary_size", 48), ("model.aps_source", "native"),
                       ("features.dtype", "bfloat16"), ("features.store_maps", False)):
    other = config.copy_and_resolve_references()
    section, name = field.split(".")
    other[section][name] = value
    assert key != F.store_key(other, scans, model, backbone)[0], field
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert key != F.store_key(config, scans, model, backbone)[0]


def test_bfloat16_rows_round_trip(tmp_path):
  rows = np.linspace(-3, 3, 24, dtype=np.float32).reshape(4, 6)
  F._write_shard(tmp_path, 0, {"pooled": rows}, "bfloat16")
  (tmp_path / "manifest.json").write_text(json.dumps({"dtype": "bfloat16",
                                                      "arrays": ["pooled"]}))
  got = F.FeatureStore(tmp_path, None).array(0, "pooled")
  assert got.dtype == jnp.bfloat16 and (tmp_path / "shard_00000.pooled.npy").stat().st_size < 200
  np.testing.assert_allclose(np.asarray(got, np.float32), rows, rtol=1e-2)


def test_interrupted_shard_write_leaves_no_marker(tmp_path, monkeypatch):
  def dies(path, value):
    raise KeyboardInterrupt

  monkeypatch.setattr(F.np, "save", dies)
  with pytest.raises(KeyboardInterrupt):
    F._write_shard(tmp_path, 0, {"pooled": np.ones((2, 3), np.float32)}, "float32")
  assert not F._shard_done(tmp_path, 0)


def test_store_needs_frozen_unflipped_backbone():
  config = drct2_rsna.get_config("runlocal")
  config.features.enabled = True
  config.model.freeze_backbone = False
  with pytest.raises(ConfigError, match="features.enabled"):
    check_config(config)
  config.model.freeze_backbone = True
  config.data.augment.hflip = 0.5
  with pytest.raises(ConfigError, match="hflip"):
    check_config(config)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _workers(args_list, timeout=300):
  env = {k: v for k, v in os.environ.items() if not k.startswith("CTJAX_")}
  procs = [subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for args in args_list]
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(o[-3000:] for o in outs)
  return outs


def _store_arrays(path):
  store = F.FeatureStore(path, None)
  return {(j, n): np.asarray(store.array(j, n)) for j in range(len(store.manifest["shards"]))
          for n in store.names}


def test_two_processes_build_the_same_store_and_train_to_the_same_losses(tmp_path):
  """1 process × 4 devices (here) vs 2 processes × 2 devices (jax.distributed on localhost):
  the same stored rows, then the same training losses on them through the real pipeline."""
  from ctjax.train import loop
  one, two = tmp_path / "one", tmp_path / "two"
  overrides = {"train.batch_size": 4, "train.num_epochs": 3, "train.max_steps": 3,
               "train.log_every_steps": 1,
               "evals.val.every_epochs": 0,
               "checkpoint.every_steps": -1, "checkpoint.best_metric": "",
               "checkpoint.async_save": False}
  for d in (one, two):   # the same random data in two places (separate stores)
    random_cache(small_config(d / "cache"), num_scans=11, seed=4)
  config = small_config(one / "cache", **overrides)
  loop.train_and_evaluate(config, one / "run")
  address = f"127.0.0.1:{_free_port()}"
  spec = json.dumps({"cache": str(two / "cache"), "overrides": overrides})
  _workers([[address, "2", str(i), str(two / "run"), spec] for i in range(2)])
  stores = [p for d in (one, two) for p in (d / "cache").rglob("features/*")]
  a, b = (_store_arrays(p) for p in stores)
  assert a.keys() == b.keys() and len(a) == 2 * 4
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
  got, want = stand_ins.read_losses(two / "run"), stand_ins.read_losses(one / "run")
  assert sorted(got) == sorted(want) == [1, 2, 3]
  np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [want[s] for s in (1, 2, 3)],
                             rtol=1e-5)


def test_sigkill_during_the_build_then_rerun_equals_an_uninterrupted_build(tmp_path, built):
  config, _, _, _, reference = built
  spec = json.dumps({"cache": str(tmp_path / "cache"), "delay": 1.0, "signal_file":
                     str(tmp_path / "first_shard_written")})
  random_cache(small_config(tmp_path / "cache"))   # the same seed as the fixture's cache
  env = {k: v for k, v in os.environ.items() if not k.startswith("CTJAX_")}
  proc = subprocess.Popen([sys.executable, WORKER, "build", spec], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 240
    while not (tmp_path / "first_shard_written").exists():
      assert proc.poll() is None, proc.communicate()[0][-3000:]
      assert time.time() < deadline
      time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  store_dir = next((tmp_path / "cache").rglob("features/*"))
  assert not (store_dir / "manifest.json").exists()
  done = sorted(p.name for p in store_dir.glob("*.done.json"))
  assert 1 <= len(done) < 4, done
  _workers([["build", json.dumps({"cache": str(tmp_path / "cache")})]])
  got, want = _store_arrays(store_dir), _store_arrays(reference.path)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))


def test_a_shard_cut_under_its_done_marker_is_rebuilt(built, monkeypatch, caplog):
  """The marker records each array's byte count; a file of another size is not taken as done:
  neither when the finished store is reused nor when a killed build resumes."""
  import logging
  config, scans, model, variables, store = built
  calls = []
  real = F._write_shard
  monkeypatch.setattr(F, "_write_shard", lambda *a, **k: (calls.append(a[1]), real(*a, **k)))
  want = {n: np.array(store.array(1, n)) for n in store.names}
  cut = store.path / "shard_00001.aps_pooled.npy"
  full = cut.stat().st_size
  cut.write_bytes(cut.read_bytes()[:full // 2])
  assert (store.path / "shard_00001.done.json").is_file()
  with caplog.at_level(logging.WARNING, logger="ctjax.train.features"):
    again = F.build_store(config, scans, model, variables)   # the finished store
  assert calls == [1]
  assert (f"rebuilding 1 damaged shard(s): shard 1: shard_00001.aps_pooled.npy: {full // 2} "
          f"bytes, {full} expected (truncated or replaced)") in caplog.text
  for n in store.names:
    np.testing.assert_array_equal(again.array(1, n), want[n])
  # A killed build (no manifest) resuming over a shard whose file was since replaced.
  (store.path / "manifest.json").unlink()
  (store.path / "shard_00003.pooled.npy").write_bytes(b"\0" * 10)
  F.build_store(config, scans, model, variables)
  assert calls == [1, 3] and F.damaged_shards(store.path, 4) == []
  assert (store.path / "manifest.json").is_file()
