"""ctjax.data.pipeline: determinism, per-epoch shuffle, process shards, iterator state, eval."""

import json

import ml_collections
import numpy as np
import pytest

from ctjax.data import labels
from ctjax.configs.common import base_config
from ctjax import errors
from ctjax.data import pipeline, sampling
from tests.support.ctdicom_helpers import write_blend_tree, write_rsna_tree


def _config(root, task="drct", batch=2, layout="rsna"):
  c = base_config()
  c.task = task
  c.data.layout = layout
  c.data.root = str(root)
  c.data.image_size = 16
  c.data.num_slices = 3
  c.data.num_folds = 3
  c.data.augment = ml_collections.ConfigDict({"resample_slices": True, "hflip": 0.0})
  c.train.batch_size = batch
  return c


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
  root = tmp_path_factory.mktemp("rsna_pipe")
  write_rsna_tree(root, num_scans=12, slices=7, size=16)
  config = _config(root)
  return config, pipeline.build_splits(config)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batch_fields_shapes_and_contents(rsna):
  config, splits = rsna
  assert splits.labels[0] == "any" and set(splits) == {"train", "val", "test"}
  assert sum(splits.info["sizes"].values()) == 12
  b = next(pipeline.train_iterator(config, splits, seed=0))
  want = {"hu": (np.int16, (2, 3, 16, 16)), "labels": (np.float32, (2, 6)),
          "slice_labels": (np.uint8, (2, 3, 6)), "slice_index": (np.int32, (2, 3)),
          "num_source_slices": (np.int32, (2,)), "valid": (np.bool_, (2,)),
          "example_index": (np.int32, (2,))}
  assert {k: (v.dtype.type, v.shape) for k, v in b.items()} == want
  src = splits["train"]
  scans = src.scans
  for j in range(2):
    scan = src[int(b["example_index"][j])]["scan"]
    np.testing.assert_array_equal(b["hu"][j], scans.scan_hu(scan)[b["slice_index"][j]])
    meta = scans.scans[scan]
    np.testing.assert_array_equal(b["slice_labels"][j], meta.slice_labels[b["slice_index"][j]])
    np.testing.assert_array_equal(b["labels"][j], meta.labels)
    assert b["num_source_slices"][j] == 7
    # training draws away from the uniform (eval) sample
    assert not np.any(b["slice_index"][j] == sampling.uniform_indices(7, 3))


def test_same_seed_same_batches_and_epochs_reshuffle(rsna):
  config, splits = rsna
  n = len(splits["train"])
  a = _take(pipeline.train_iterator(config, splits, seed=3), 2 * n // 2)
  b = _take(pipeline.train_iterator(config, splits, seed=3), 2 * n // 2)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c = _take(pipeline.train_iterator(config, splits, seed=4), n // 2)
  order = lambda bs: np.concatenate([x["example_index"] for x in bs]).tolist()  # noqa: E731
  assert order(c) != order(a[:n // 2])
  epoch0, epoch1 = order(a[:n // 2]), order(a[n // 2:])
  assert sorted(epoch0) == sorted(epoch1) == list(range(n))   # each epoch covers the split
  assert epoch0 != epoch1                                     # and is reshuffled


def test_two_processes_disjoint_and_covering(rsna):
  config, splits = rsna
  n = len(splits["train"])
  config = config.copy_and_resolve_references()
  config.train.batch_size = 2
  steps = pipeline.steps_per_epoch(config, splits, process_count=2)
  assert steps == n // 2
  single = _take(pipeline.train_iterator(config, splits, seed=0), steps)
  per_process = []
  for p in range(2):
    it = pipeline.train_iterator(config, splits, seed=0, process_index=p, process_count=2)
    batches = _take(it, steps)
    assert all(x["hu"].shape[0] == 1 for x in batches)        # local batch = 2 // 2
    per_process.append(batches)
  seen = [{int(i) for x in b for i in x["example_index"]} for b in per_process]
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == steps * 2                 # one epoch, no repeats
  assert seen[0] | seen[1] <= set(range(n))
  # Rows of the two processes, concatenated in process order, are the one-process batches.
  for g in range(steps):
    for k in single[g]:
      np.testing.assert_array_equal(
          np.concatenate([per_process[0][g][k], per_process[1][g][k]]), single[g][k])


def test_iterator_state_restores_next_batch(rsna):
  config, splits = rsna
  it = pipeline.train_iterator(config, splits, seed=1)
  _take(it, 5)                                               # crosses an epoch boundary
  state = it.get_state()
  json.dumps(state)                                          # checkpointable as JSON
  want = _take(it, 2)
  it2 = pipeline.train_iterator(config, splits, seed=1)
  it2.set_state(state)
  got = _take(it2, 2)
  for x, y in zip(want, got):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_covers_split_once_with_padding(rsna, processes):
  config, splits = rsna
  config = config.copy_and_resolve_references()
  config.train.batch_size = 4
  n = len(splits["test"])
  per_process = [list(pipeline.eval_batches(config, splits, "test", process_index=p,
                                            process_count=processes))
                 for p in range(processes)]
  glob = [np.concatenate([pp[g]["example_index"] for pp in per_process])
          for g in range(len(per_process[0]))]
  valid = [np.concatenate([pp[g]["valid"] for pp in per_process])
           for g in range(len(per_process[0]))]
  idx, ok = np.concatenate(glob), np.concatenate(valid)
  assert idx[ok].tolist() == list(range(n))                  # in order, once
  assert np.all(idx[~ok] == -1) and len(idx) % 4 == 0
  b = per_process[0][0]
  np.testing.assert_array_equal(b["slice_index"][0], sampling.uniform_indices(7, 3))


def test_blend_and_pretrain_records(tmp_path):
  write_blend_tree(tmp_path / "b", num_scans=6, slices=3, size=16)
  config = _config(tmp_path / "b", task="blend", layout="blend")
  config.data.max_boxes = 3
  splits = pipeline.build_splits(config)
  assert splits.info["record"] == "slice"
  assert sum(splits.info["sizes"].values()) == 18
  batches = list(pipeline.eval_batches(config, splits, "train"))
  b = batches[0]
  assert b["hu"].shape == (2, 16, 16) and b["boxes"].shape == (2, 3, 4)
  src = splits["train"]
  for bb in batches:
    for j, i in enumerate(bb["example_index"]):
      if i < 0:
        continue
      el = src[int(i)]
      meta = src.scans.scans[el["scan"]]
      assert bb["label"][j] == meta.slice_class[el["slice"]]
      k = len(meta.boxes[el["slice"]])
      assert bb["num_boxes"][j] == k and np.all(bb["boxes"][j, k:] == -1)
      np.testing.assert_allclose(bb["boxes"][j, :k],
                                 np.reshape(meta.boxes[el["slice"]], (-1, 4)))
  config.task = "pretrain"
  splits = pipeline.build_splits(config)
  b = next(pipeline.train_iterator(config, splits, seed=0))
  assert b["labels"].shape == (2, 3) and b["labels"].dtype == np.float32
  assert b["slice_index"].shape == (2,)


def test_hflip_flips_boxes(tmp_path):
  write_blend_tree(tmp_path / "b", num_scans=6, slices=3, size=16)
  config = _config(tmp_path / "b", task="blend", layout="blend")
  config.data.augment.hflip = 1.0
  splits = pipeline.build_splits(config)
  src = splits["train"]
  b = next(pipeline.train_iterator(config, splits, seed=0))
  for j, i in enumerate(b["example_index"]):
    el = src[int(i)]
    np.testing.assert_array_equal(b["hu"][j], src.scans.scan_hu(el["scan"], [el["slice"]])[0,
                                                                                        :, ::-1])
    boxes = np.asarray(src.scans.scans[el["scan"]].boxes[el["slice"]]).reshape(-1, 4)
    k = len(boxes)
    np.testing.assert_allclose(b["boxes"][j, :k, 0], 16 - boxes[:, 2])


def test_phantom_layout_generates_once(tmp_path, monkeypatch):
  calls = []

  def write_dataset(out_dir, *, layout, num_scans, seed, size=512, **options):
    calls.append((layout, num_scans, seed, size))
    write_rsna_tree(out_dir, num_scans=num_scans, slices=4, size=size)
    path = out_dir / "manifest.json" if hasattr(out_dir, "joinpath") else None
    import pathlib
    path = pathlib.Path(out_dir) / "manifest.json"
    path.write_text(json.dumps({"layout": layout, "seed": seed, "size": size, "scans": []}))
    return path

  from ctjax.data import phantom
  monkeypatch.setattr(phantom, "write_dataset", write_dataset)   # the real module, faster writer
  config = _config("", layout="phantom")
  config.data.synth = ml_collections.ConfigDict({"layout": "rsna", "num_scans": 6, "seed": 2,
                                                 "size": 16})
  splits = pipeline.build_splits(config, str(tmp_path))
  assert calls == [("rsna", 6, 2, 16)] and splits.info["layout"] == "phantom:rsna"
  assert (tmp_path / "data" / "manifest.json").is_file()
  pipeline.build_splits(config, str(tmp_path))
  assert len(calls) == 1                                     # manifest present: no regeneration


def test_config_errors(rsna):
  config, splits = rsna
  config = config.copy_and_resolve_references()
  config.train.batch_size = 3
  with pytest.raises(errors.ConfigError, match="divisible"):
    pipeline.train_iterator(config, splits, seed=0, process_count=2)
  config.train.batch_size = 64
  with pytest.raises(errors.ConfigError, match="fewer than one local batch"):
    pipeline.train_iterator(config, splits, seed=0)
  config.train.batch_size = 2
  config.data.labels = ("any", "subdural")
  with pytest.raises(errors.ConfigError, match="labels"):
    pipeline.build_splits(config)
  config.data.labels = labels.RSNA_LABELS
  assert pipeline.build_splits(config).labels == labels.RSNA_LABELS
  config.data.balance_share = 0.1   # repeats positive slices: meaningless for scan records
  with pytest.raises(errors.ConfigError, match=r"balance_share=0.1 needs slice records"):
    pipeline.build_splits(config)
  config.data.balance_share = 0.0
  config.task = "nope"
  with pytest.raises(errors.ConfigError):
    pipeline.build_splits(config)


@pytest.mark.slow   # ~25 s on 2 CPU cores: Grain starts worker processes
def test_worker_processes_give_the_same_batches(rsna):
  """Grain mp_prefetch workers: same batches as in-process, and the state still restores."""
  config, splits = rsna
  config = config.copy_and_resolve_references()
  want = _take(pipeline.train_iterator(config, splits, seed=5), 4)
  config.data.num_workers = 2
  it = pipeline.train_iterator(config, splits, seed=5)
  got = _take(it, 2)
  state = it.get_state()
  it2 = pipeline.train_iterator(config, splits, seed=5)
  it2.set_state(state)
  got += _take(it2, 2)
  for x, y in zip(want, got):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
