"""ctjax.fileio.open_npy: .npy memory maps opened from many threads, one header parse at a time
(CPython 3.11's AST construction is not safe across threads: python/cpython#106905), and the
stores that the input pipeline's reader threads read through it."""

import concurrent.futures
import threading
import time

import numpy as np

from ctjax import fileio


def test_open_npy_serialises_header_parsing_across_threads(tmp_path, monkeypatch):
  paths = []
  for i in range(8):
    paths.append(tmp_path / f"a{i}.npy")
    np.save(paths[-1], np.full((3, 4), i, np.int16))
  real_load, inside, most = np.load, [0], [0]
  lock = threading.Lock()

  def slow_load(path, mmap_mode=None):   # widens the window two parses could overlap in
    with lock:
      inside[0] += 1
      most[0] = max(most[0], inside[0])
    time.sleep(0.02)
    try:
      return real_load(path, mmap_mode=mmap_mode)
    finally:
      with lock:
        inside[0] -= 1

  monkeypatch.setattr(np, "load", slow_load)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    arrays = list(pool.map(fileio.open_npy, paths))
  assert most[0] == 1
  for i, a in enumerate(arrays):
    assert isinstance(a, np.memmap) and a.shape == (3, 4) and int(a[0, 0]) == i


def test_the_stores_map_their_shards_through_open_npy(tmp_path, monkeypatch):
  from ctjax.data import cache, fake
  from ctjax.train import features
  opened = []
  real = fileio.open_npy
  monkeypatch.setattr(fileio, "open_npy", lambda p, *a, **k: (opened.append(p.name),
                                                              real(p, *a, **k))[1])
  manifest = fake.write_random_cache(tmp_path / "cache", num_scans=4, slices=(3, 4), size=8,
                                     scans_per_shard=2, seed=0)
  scans = cache.CachedScans(manifest.parent)
  scans.hu(1)
  assert opened and opened[-1].startswith("shard_")
  store_dir = tmp_path / "store"
  store_dir.mkdir()
  features._write_shard(store_dir, 0, {"pooled": np.ones((7, 2), np.float32)}, "float32")
  (store_dir / "manifest.json").write_text(
      '{"dtype": "float32", "arrays": ["pooled"], "shards": [{"rows": 7}]}')
  store = features.FeatureStore(store_dir, scans)
  assert store.array(0, "pooled").shape == (7, 2)
  assert opened[-1] == "shard_00000.pooled.npy"
