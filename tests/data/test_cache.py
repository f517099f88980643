"""ctjax.data.cache: resize, prepare (manifest, provenance, resume, processes), CacheSource."""

import json
import os

import numpy as np
import pytest

from ctjax import errors
from ctjax.data import cache, datasets, dicom
from tests.support.ctdicom_helpers import write_blend_tree, write_rsna_tree


def test_resize_hu_identity_area_and_clip():
  hu = np.random.default_rng(0).uniform(-2000, 4000, (2, 8, 8))
  np.testing.assert_array_equal(cache.resize_hu(hu, 8), np.clip(np.rint(hu), -1024, 3071))
  blocks = np.kron(np.arange(16, dtype=np.float32).reshape(1, 4, 4) * 10, np.ones((1, 4, 4)))
  out = cache.resize_hu(blocks, 4)                        # 16 → 4: each 4×4 block's value
  np.testing.assert_array_equal(out[0], np.arange(16).reshape(4, 4) * 10)
  assert out.dtype == np.int16
  const = cache.resize_hu(np.full((1, 30, 30), 55.0), 7)
  assert np.all(const == 55)


@pytest.fixture(scope="module")
def rsna_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("rsna")
  truth = write_rsna_tree(root, num_scans=5, slices=4, size=32)
  return root, truth


def test_prepare_manifest_provenance_and_values(rsna_tree, tmp_path):
  root, truth = rsna_tree
  ds = datasets.load("rsna", root)
  manifest_path = cache.prepare(ds, tmp_path / "c", image_size=16, scans_per_shard=2,
                                progress=False)
  m = json.loads(manifest_path.read_text())
  assert m["complete"] and m["num_scans"] == 5 and m["num_slices"] == 20
  assert len(m["shards"]) == 3 and m["image_size"] == 16
  scans = cache.CachedScans(tmp_path / "c")
  sdh = datasets.RSNA_LABELS.index("subdural")
  for i, meta in enumerate(scans.scans):
    rec = next(r for r in ds.scans if r.scan_id == meta.scan_id)
    vol = dicom.read_series(rec.files)
    np.testing.assert_array_equal(scans.scan_hu(i), cache.resize_hu(vol.hu, 16))
    assert meta.info["files"] == vol.files                   # provenance in slice order
    assert meta.info["sop_uids"] == [s for s, _ in truth[meta.scan_id]]
    np.testing.assert_array_equal(meta.slice_labels[:, sdh], [x for _, x in truth[meta.scan_id]])
    np.testing.assert_array_equal(scans.scan_hu(i, [2, 0]), scans.scan_hu(i)[[2, 0]])


def test_prepare_resumes_and_processes_agree(rsna_tree, tmp_path):
  root, _ = rsna_tree
  ds = datasets.load("rsna", root)
  cache.prepare(ds, tmp_path / "a", image_size=16, scans_per_shard=2, progress=False)
  first = tmp_path / "a" / "shard_00000.hu.npy"
  stamp = os.stat(first).st_mtime_ns
  os.remove(tmp_path / "a" / "shard_00001.hu.npy")
  (tmp_path / "a" / "manifest.json").unlink()
  cache.prepare(ds, tmp_path / "a", image_size=16, scans_per_shard=2, progress=False)
  assert os.stat(first).st_mtime_ns == stamp                 # finished shard skipped
  assert cache.is_complete(tmp_path / "a")
  cache.prepare(ds, tmp_path / "b", image_size=16, scans_per_shard=2, num_workers=2,
                progress=False)
  for i in range(3):
    a = np.load(tmp_path / "a" / f"shard_{i:05d}.hu.npy")
    b = np.load(tmp_path / "b" / f"shard_{i:05d}.hu.npy")
    np.testing.assert_array_equal(a, b)


def test_prepare_strict_and_lenient(tmp_path):
  root = tmp_path / "rsna"
  write_rsna_tree(root, num_scans=2, slices=3, size=16)
  bad = sorted((root / "stage_2_train").iterdir())[0]
  data = bad.read_bytes()
  bad.write_bytes(data[:-100])                               # truncate pixel data
  ds = datasets.load("rsna", root)
  with pytest.raises(errors.TruncatedDicomError):
    cache.prepare(ds, tmp_path / "strict", image_size=16, progress=False)
  m = json.loads(cache.prepare(ds, tmp_path / "len", image_size=16, lenient=True,
                               progress=False).read_text())
  assert m["num_scans"] == 2 and m["num_slices"] == 5
  scans = cache.CachedScans(tmp_path / "len")
  skipped = [s for sc in json.loads((tmp_path / "len" / "shard_00000.json").read_text())["scans"]
             for s in sc["skipped"]]
  assert len(skipped) == 1 and skipped[0]["error"] == "TruncatedDicomError"
  assert sum(s.num_slices for s in scans.scans) == 5


def test_blend_boxes_scaled_to_cache_size(tmp_path):
  write_blend_tree(tmp_path / "b", num_scans=2, slices=3, size=16)
  ds = datasets.load("blend", tmp_path / "b")
  cache.prepare(ds, tmp_path / "c", image_size=32, progress=False)
  scans = cache.CachedScans(tmp_path / "c")
  s1 = scans.scans[1]
  np.testing.assert_array_equal(s1.slice_class, [1, 2, 0])
  np.testing.assert_allclose(s1.boxes[1], [[2, 4, 10, 12], [2, 0, 8, 8]])   # ×2
  assert s1.boxes[2] == []


def test_cache_source_records(rsna_tree, tmp_path):
  root, _ = rsna_tree
  cache.prepare(datasets.load("rsna", root), tmp_path / "c", image_size=16, progress=False)
  scans = cache.CachedScans(tmp_path / "c")
  src = cache.CacheSource(scans, [3, 1], "scan")
  assert len(src) == 2 and src[1] == {"scan": 1, "example_index": 1}
  assert src.example_info(0)["scan_id"] == scans.scans[3].scan_id
  sl = cache.CacheSource(scans, [3, 1], "slice")
  assert len(sl) == 8 and sl[5] == {"scan": 1, "slice": 1, "example_index": 5}
  with pytest.raises(errors.CTDataError, match="ctjax.prepare"):
    cache.CachedScans(tmp_path / "nothing")


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_phantom_tree_order_and_truth_survive_prepare(tmp_path, layout):
  """B's phantom writer → adapter → prepare: slices in true order, truth attached to them."""
  phantom = pytest.importorskip("ctjax.data.phantom")
  root = tmp_path / layout
  manifest = json.loads(phantom.write_dataset(root, layout=layout, num_scans=2, seed=1,
                                              size=32).read_text())
  ds = datasets.load("phantom", root)
  assert ds.has_slice_labels
  cache.prepare(ds, tmp_path / "c", image_size=32, progress=False)
  scans = cache.CachedScans(tmp_path / "c")
  by_id = {s.scan_id: s for s in scans.scans}
  for truth in manifest["scans"]:
    meta = by_id[truth["scan_id"]] if layout == "rsna" else next(
        s for s in scans.scans if s.info["series_uid"] == truth["series_uid"])
    want = [str((root / f).resolve()) for f in truth["files"]]
    assert [str(os.path.realpath(f)) for f in meta.info["files"]] == want
    np.testing.assert_array_equal(meta.slice_labels, np.asarray(truth["slice_labels"]))
    if layout == "rsna":   # CQ500 labels are the readers' majority, which may differ from truth
      np.testing.assert_array_equal(meta.labels, [truth["labels"][n] for n in ds.labels])


def test_balanced_repeats_rare_positive_slices():
  import types
  labels = ("any", "rare")
  def meta(i, sl):
    sl = np.asarray(sl, np.uint8)
    return cache.ScanMeta(f"s{i}", f"p{i}", 0, 0, len(sl), sl.max(0).astype(np.float32), sl,
                          None, None, {})
  # 3 scans, 10 slices: "any" on 4 slices, "rare" on 1 (which is also "any").
  scans = types.SimpleNamespace(labels=labels, scans=[
      meta(0, [[0, 0], [1, 0], [1, 1], [0, 0]]),
      meta(1, [[0, 0], [0, 0], [0, 0]]),
      meta(2, [[1, 0], [1, 0], [0, 0]])])
  src = cache.CacheSource(scans, [0, 1, 2], "slice")
  np.testing.assert_array_equal(src.slice_positives().sum(0), [4, 1])
  bal = src.balanced(0.3)   # any: round(3/4) → 1 copy; rare: round(3/1) = 3 copies
  rows = [(bal[i]["scan"], bal[i]["slice"]) for i in range(len(bal))]
  assert len(bal) == 12 and rows.count((0, 2)) == 3 and rows.count((0, 1)) == 1
  assert sorted(set(rows)) == sorted((src[i]["scan"], src[i]["slice"]) for i in range(10))
  assert len(src) == 10                      # the source itself is unchanged
  assert len(src.balanced(10.0, max_repeat=5)) == 10 + 4 * 4   # every positive capped at 5


def test_blend_slice_positives_are_the_non_zero_classes():
  import types
  m = cache.ScanMeta("s0", "p0", 0, 0, 4, np.zeros(1, np.float32), np.zeros((4, 1), np.uint8),
                     np.asarray([0, 1, 2, -1], np.int32), None, {})
  src = cache.CacheSource(types.SimpleNamespace(labels=("ich",), scans=[m]), [0], "slice")
  np.testing.assert_array_equal(src.slice_positives(),
                                [[False, False], [True, False], [False, True], [False, False]])
  assert len(src.balanced(0.5)) == 4 + 1 + 1   # each class: round(0.5·4/1) = 2 copies
  m4 = cache.ScanMeta("s1", "p1", 0, 0, 2, np.zeros(1, np.float32), np.zeros((2, 1), np.uint8),
                      np.asarray([3, 0], np.int32), None, {})   # a 4-class slice set
  src4 = cache.CacheSource(types.SimpleNamespace(labels=("ich",), scans=[m, m4]), [0, 1], "slice")
  assert src4.slice_positives().shape == (6, 3)
  np.testing.assert_array_equal(src4.slice_positives().sum(0), [1, 1, 1])


# ------------------------------------------------------------------ freshness and damage


def _config(root, cache_dir, **data):
  from ctjax.configs.common import base_config
  c = base_config()
  c.task = "drct"
  c.data.layout = "rsna"
  c.data.root = str(root)
  c.data.cache_dir = str(cache_dir)
  c.data.image_size = 8
  c.log.progress_bar = False
  for k, v in data.items():
    c.data[k] = v
  return c


def _first_positive_label(path) -> float:
  scans = cache.CachedScans(path)
  return max(float(s.labels[0]) for s in scans.scans)


def test_stale_labels_are_rebuilt_or_refused(tmp_path):
  root = tmp_path / "rsna"
  write_rsna_tree(root, num_scans=2, slices=2, size=8)
  cfg = _config(root, tmp_path / "cache")
  path = cache.ensure_cache(cfg)
  assert _first_positive_label(path) == 1.0            # scan 1 slice 1 is subdural
  csv = root / "stage_2_train.csv"
  csv.write_text(csv.read_text().replace(",1\n", ",0\n"))   # every positive cell edited away
  refuse = _config(root, tmp_path / "cache", stale_cache="error")
  with pytest.raises(errors.StaleCacheError) as e:
    cache.ensure_cache(refuse)
  assert "\n" not in str(e.value) and "stage_2_train.csv changed" in str(e.value)
  assert "python -m ctjax.prepare" in str(e.value)
  assert cache.ensure_cache(cfg) == path                # same key, rebuilt from the new labels
  assert _first_positive_label(path) == 0.0


def test_replaced_dicom_makes_the_cache_stale(tmp_path):
  root = tmp_path / "rsna"
  write_rsna_tree(root, num_scans=2, slices=2, size=8)
  cfg = _config(root, tmp_path / "cache")
  path = cache.ensure_cache(cfg)
  before = cache.CachedScans(path).scan_hu(0).copy()
  f = sorted((root / "stage_2_train").iterdir())[0]
  ds = dicom.pydicom.dcmread(f)
  ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
  ds.save_as(f)
  with pytest.raises(errors.StaleCacheError, match="files replaced or touched"):
    cache.ensure_cache(_config(root, tmp_path / "cache", stale_cache="error"))
  after = cache.CachedScans(cache.ensure_cache(cfg)).scan_hu(0)
  assert (after != before).any()
  m = json.loads((path / "manifest.json").read_text())
  assert m["source"]["files"]["count"] == 4 and "stage_2_train.csv" in m["source"]["labels"]


def test_cache_of_another_dicom_reader_is_stale(tmp_path, monkeypatch):
  """The fingerprint carries dicom.READER_VERSION: a cache decoded by an older reader (e.g. one
  without canonical orientation, whose manifests have no "reader" entry) is rebuilt, or refused
  in one line with stale_cache="error"."""
  root = tmp_path / "rsna"
  write_rsna_tree(root, num_scans=2, slices=2, size=8)
  cfg = _config(root, tmp_path / "cache")
  path = cache.ensure_cache(cfg)
  manifest = path / "manifest.json"
  m = json.loads(manifest.read_text())
  assert m["source"]["reader"] == dicom.READER_VERSION == 2
  del m["source"]["reader"]                              # as written before the reader version
  manifest.write_text(json.dumps(m))
  with pytest.raises(errors.StaleCacheError) as e:
    cache.ensure_cache(_config(root, tmp_path / "cache", stale_cache="error"))
  assert "\n" not in str(e.value)
  assert "built by DICOM reader version 1, now 2" in str(e.value)
  assert cache.ensure_cache(cfg) == path                # rebuilt in place
  assert json.loads(manifest.read_text())["source"]["reader"] == 2
  stamp = manifest.stat().st_mtime_ns
  assert cache.ensure_cache(cfg) == path and manifest.stat().st_mtime_ns == stamp   # fresh
  monkeypatch.setattr(dicom, "READER_VERSION", 3)
  cache.ensure_cache(cfg)
  assert json.loads(manifest.read_text())["source"]["reader"] == 3


def test_cache_key_has_no_new_absolute_paths(tmp_path):
  a = cache.cache_key("rsna", str(tmp_path / "r"), 8, False)
  b = cache.cache_key("rsna", str(tmp_path / "r"), 8, False, {"reader_rule": "any"})
  assert a != b and a.startswith("rsna_8_")


def test_truncated_shard_one_line_error_and_repair(tmp_path):
  root = tmp_path / "rsna"
  write_rsna_tree(root, num_scans=10, slices=2, size=8)    # 2 shards of 8 and 2 scans
  cfg = _config(root, tmp_path / "cache")
  path = cache.ensure_cache(cfg)
  want = [cache.CachedScans(path).scan_hu(i).copy() for i in range(10)]
  good, bad = path / "shard_00000.hu.npy", path / "shard_00001.hu.npy"
  stamp = good.stat().st_mtime_ns
  bad.write_bytes(bad.read_bytes()[:-10])
  with pytest.raises(errors.CacheCorruptError) as e:
    cache.CachedScans(path)
  assert "\n" not in str(e.value) and "shard_00001.hu.npy" in str(e.value)
  assert "python -m ctjax.prepare" in str(e.value)
  with pytest.raises(errors.CacheCorruptError, match="shard_00001.hu.npy"):
    cache.ensure_cache(cfg)                             # training: refused, with the hint
  cache.ensure_cache(cfg, repair=True)                  # what python -m ctjax.prepare does
  assert good.stat().st_mtime_ns == stamp               # only the damaged shard rebuilt
  scans = cache.CachedScans(path)
  for i in range(10):
    np.testing.assert_array_equal(scans.scan_hu(i), want[i])
  # Same size, other bytes: only the checksum sees it.
  data = bytearray(bad.read_bytes())
  data[-1] ^= 1
  bad.write_bytes(bytes(data))
  assert cache.ensure_cache(cfg) == path                # size check passes
  with pytest.raises(errors.CacheCorruptError, match="SHA-1"):
    cache.ensure_cache(cfg, checksum=True)
  cache.ensure_cache(cfg, repair=True, checksum=True)
  np.testing.assert_array_equal(cache.CachedScans(path).scan_hu(9), want[9])


def test_mmap_of_a_shard_cut_after_opening_is_a_one_line_error(tmp_path):
  root = tmp_path / "rsna"
  write_rsna_tree(root, num_scans=2, slices=2, size=8)
  path = cache.ensure_cache(_config(root, tmp_path / "cache"))
  scans = cache.CachedScans(path)
  shard = path / scans.manifest["shards"][0]["file"]
  shard.write_bytes(shard.read_bytes()[:200])
  with pytest.raises(errors.CacheCorruptError) as e:
    scans.hu(0)
  assert "re-prepare" in str(e.value) and "\n" not in str(e.value)


def test_a_damaged_shard_record_is_repaired_by_prepare(tmp_path):
  """A shard's JSON (its done-marker and its scans' records) cut or deleted under a complete
  manifest: loading refuses in one line naming it, and prepare (repair) rebuilds that shard."""
  root = tmp_path / "rsna"
  write_rsna_tree(root, num_scans=10, slices=2, size=8)    # 2 shards of 8 and 2 scans
  cfg = _config(root, tmp_path / "cache")
  path = cache.ensure_cache(cfg)
  want = [cache.CachedScans(path).scan_hu(i).copy() for i in range(10)]
  good, record = path / "shard_00000.hu.npy", path / "shard_00001.json"
  stamp = good.stat().st_mtime_ns
  for damage in (lambda: record.write_text(record.read_text()[:50]), record.unlink):
    damage()
    with pytest.raises(errors.CacheCorruptError) as e:
      cache.CachedScans(path)
    assert "shard_00001.json" in str(e.value) and "\n" not in str(e.value)
    assert "python -m ctjax.prepare" in str(e.value)
    cache.ensure_cache(cfg, repair=True)                # what python -m ctjax.prepare does
    assert good.stat().st_mtime_ns == stamp             # only the damaged shard rebuilt
    scans = cache.CachedScans(path)
    for i in range(10):
      np.testing.assert_array_equal(scans.scan_hu(i), want[i])


# ------------------------------------------------------------------ phantom data roots


def _phantom_config(root, tmp_path):
  c = _config(root, tmp_path / "cache", layout="phantom")
  c.data.synth = {"layout": "rsna", "num_scans": 2, "seed": 0, "size": 32}
  return c


def test_phantom_config_refuses_a_root_holding_other_files(tmp_path):
  root = tmp_path / "rsna"
  write_rsna_tree(root, num_scans=1, slices=2, size=8)
  before = sorted(p.relative_to(root) for p in root.rglob("*"))
  with pytest.raises(errors.DatasetLayoutError) as e:
    cache.ensure_cache(_phantom_config(root, tmp_path), str(tmp_path / "w"))
  msg = str(e.value)
  assert msg.startswith(f"{root}: config.data.root holds other files") and "\n" not in msg
  assert "stage_2_train" in msg and 'README section "Real data"' in msg
  assert "--config.data.layout=rsna" in msg
  assert sorted(p.relative_to(root) for p in root.rglob("*")) == before   # nothing written


def test_phantom_config_says_what_it_writes_before_writing(tmp_path, caplog, monkeypatch):
  from ctjax.data import phantom
  root = tmp_path / "empty"
  root.mkdir()
  said = []
  write = phantom.write_dataset

  def recording(*a, **k):   # what had been logged when the first file is written
    said.extend(r.getMessage() for r in caplog.records)
    return write(*a, **k)

  monkeypatch.setattr(phantom, "write_dataset", recording)
  with caplog.at_level("INFO", logger="ctjax.data.cache"):
    path = cache.ensure_cache(_phantom_config(root, tmp_path), str(tmp_path / "w"))
  assert cache.is_complete(path)
  line = [m for m in said if m.startswith("generating")]
  assert line == [f"generating 2 phantom head-CT scans (rsna layout, 32 px, seed 0) into {root}: "
                  f"about {phantom.estimate_bytes('rsna', 2, 32) / 1e6:.0f} MB of DICOM"]
  # A second run finds the set and writes nothing more.
  said.clear()
  caplog.clear()
  cache.ensure_cache(_phantom_config(root, tmp_path), str(tmp_path / "w"))
  assert not any(r.getMessage().startswith("generating") for r in caplog.records)
