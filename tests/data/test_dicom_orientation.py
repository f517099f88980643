"""One head stored five ways gives one model input, one prediction and the same key slices.

A phantom head CT (known in patient space) is written as DICOM in DICOM's default layout, with
rows flipped, with columns flipped, transposed, and transposed with rows flipped and the slices
in reverse order (write_oriented_series looks every stored pixel up from its patient position).
Each is read by `ctjax.data.dicom.read_series` and turned into a model batch the way reports and
predictions do (the cache's `resize_hu`, the pipeline's `drct_example`): the batches must be
equal bit for bit, and a small random-weight DrCT2 must give equal outputs and name the same
key slices by SOP Instance UID.
"""

import numpy as np
import pydicom
import pytest

from ctjax.data import dicom, phantom
from ctjax.data.cache import resize_hu
from ctjax.data.pipeline import drct_example, stack
from tests.support.ctdicom_helpers import write_oriented_series

# (columns along, rows along, slices reversed)
STORAGES = {
    "default": ("+x", "+y", False),
    "rows_flipped": ("+x", "-y", False),
    "columns_flipped": ("-x", "+y", False),
    "transposed": ("+y", "+x", False),
    "transposed_rows_flipped_reversed": ("+y", "-x", True),
}
SIZE, SLICES, M = 48, 10, 6


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
  hu, truth = phantom.generate_scan(np.random.default_rng(4), size=SIZE, num_slices=SLICES,
                                    findings=("iph",))
  d, dz = truth["pixel_spacing"], truth["thickness"]
  root = tmp_path_factory.mktemp("orient")
  uids = [f"1.2.826.0.1.3680043.9.{k}" for k in range(SLICES)]
  vols, stored = {}, {}
  for j, (name, (cols, rows, reverse)) in enumerate(STORAGES.items()):
    paths = write_oriented_series(root / name, hu, columns_along=cols, rows_along=rows,
                                  reverse=reverse, spacing=(dz, d, d), sop_uids=uids,
                                  series_uid=f"1.2.826.0.1.3680043.9.100.{j}", seed=j)
    vols[name] = dicom.read_series(root / name)
    first = min(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    stored[name] = pydicom.dcmread(first).pixel_array
  return hu, uids, vols, stored


def _batch(vol, size=32):
  example = drct_example(lambda idx: resize_hu(vol.hu[idx], size), vol.num_slices,
                         np.zeros(6, np.float32), np.zeros((vol.num_slices, 6), np.uint8), m=M)
  return stack([example])


def test_the_stored_pixels_differ(volumes):
  """The five storages really are different files (else the test below proves nothing)."""
  _, _, _, stored = volumes
  arrays = list(stored.values())
  for i in range(len(arrays)):
    for j in range(i + 1, len(arrays)):
      assert not np.array_equal(arrays[i], arrays[j]), (list(stored)[i], list(stored)[j])


def test_every_storage_reads_the_same_volume(volumes):
  hu, uids, vols, _ = volumes
  ref = vols["default"]
  np.testing.assert_array_equal(ref.hu, hu.astype(np.float32))
  for name, vol in vols.items():
    np.testing.assert_array_equal(vol.hu, ref.hu, err_msg=name)
    assert vol.sop_uids == uids and vol.spacing == ref.spacing, name
    np.testing.assert_allclose(vol.positions, ref.positions, atol=1e-6, err_msg=name)


def test_every_storage_gives_the_same_model_input(volumes):
  _, _, vols, _ = volumes
  ref = _batch(vols["default"])
  for name, vol in vols.items():
    batch = _batch(vol)
    assert batch.keys() == ref.keys()
    for key in ref:
      np.testing.assert_array_equal(batch[key], ref[key], err_msg=f"{name}: {key}")
      assert batch[key].dtype == ref[key].dtype


def test_every_storage_gives_the_same_predictions_and_key_slices(volumes):
  from ctjax.inference import runs
  from ctjax.configs.drct import drct_config, runlocal_overrides
  from ctjax.eval import keyslice
  from ctjax.models import pretrained
  from ctjax.train.tasks import drct
  config = runlocal_overrides(drct_config(dataset="phantom", variant="drct2"))
  config.data.num_slices, config.data.image_size = M, 32
  config.model.primary_size, config.model.aps_size, config.model.mkey = 32, 48, 3
  task = drct.TASK
  model = task.build_model(config)
  variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config))
  run = runs.make_run(config, variables, task=task, model=model)
  _, uids, vols, _ = volumes
  outs, keys = {}, {}
  for name, vol in vols.items():
    batch = _batch(vol)
    out = runs.predict_batch(run, batch)
    outs[name] = out
    top = keyslice.top_k_indices(out["slice_attention"][0], k=3)
    keys[name] = [vol.sop_uids[int(batch["slice_index"][0][k])] for k in top]
  ref = outs["default"]
  assert set(ref) >= {"probs", "slice_attention"}
  for name, out in outs.items():
    for key in ref:
      np.testing.assert_array_equal(out[key], ref[key], err_msg=f"{name}: {key}")
    assert keys[name] == keys["default"], name
  assert all(k in uids for k in keys["default"])
