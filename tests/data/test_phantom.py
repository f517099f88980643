"""Statistics and truth of the synthetic head-CT phantoms (ctjax/data/phantom*.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctjax.data import phantom
from ctjax.data import phantom_lesions as pl
from ctjax.errors import ConfigError, DatasetLayoutError

SIZE = 64


def _scan(seed, **kw):
  kw.setdefault("num_slices", 24)
  return phantom.generate_scan(np.random.default_rng(seed), size=SIZE, **kw)


def test_anatomy_tissue_values():
  hu, truth = _scan(0, noise_sigma=0.0)
  assert hu.dtype == np.int16 and hu.shape == (24, SIZE, SIZE)
  mid = hu[int(0.6 * 24)]
  assert mid.min() <= -990                              # air around the head
  assert mid.max() >= 1000                              # skull (bone tables)
  brain = mid[(mid > 15) & (mid < 50)]
  assert brain.size > 0.15 * SIZE * SIZE                # a brain fills the skull
  assert 20 <= np.median(brain) <= 45                   # grey/white matter range
  assert ((mid > -5) & (mid < 15)).sum() > 10           # CSF: ventricles and sulci
  assert truth["lesions"] == [] and max(truth["slice_class"]) == 0


# SAH lines (1.4–4 mm) are thinner than a 64-px pixel (~3.5 mm): no pixel is all blood there.
@pytest.mark.parametrize("kind,lo,hi,size", [("iph", 50, 90, 64), ("ivh", 45, 80, 64),
                                             ("sdh", 50, 80, 64), ("edh", 50, 90, 64),
                                             ("sah", 50, 80, 128)])
def test_lesion_hu_and_boxes(kind, lo, hi, size):
  for seed in range(3):
    hu, truth = phantom.generate_scan(np.random.default_rng(seed), size=size, num_slices=24,
                                      findings=[kind], noise_sigma=0.0)
    (e,) = [e for e in truth["lesions"] if e["type"] == kind]
    assert e["slices"], "lesion must be visible"
    assert lo <= e["hu"][0] <= e["hu"][1] <= hi
    in_range = 0
    for k in e["slices"]:
      x0, y0, x1, y1 = e["boxes"][str(k)]
      assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
      cx, cy = e["centers"][str(k)]
      assert x0 <= cx <= x1 and y0 <= cy <= y1
      box = hu[k, y0:y1, x0:x1].astype(float)
      # Mask pixels are >= half blood, so every box holds a pixel denser than brain/CSF mixes.
      assert box.max() >= 0.5 * (e["hu"][0] + 0.0)
      # Fully-occupied pixels carry exactly the lesion's HU (noise-free).
      in_range += ((box >= e["hu"][0] - 1) & (box <= e["hu"][1] + 1)).sum()
    assert in_range > 0


def test_truth_boxes_contain_every_mask_pixel():
  rng = np.random.default_rng(3)
  from ctjax.data import phantom_anatomy as pa
  g = pa.sample_geometry(rng, size=SIZE, num_slices=20)
  grid = pa.Grid(g)
  _, fields = pa.render_anatomy(grid, rng)
  les = pl.render_iph(grid, fields, pl.sample_iph(grid, rng, difficult=False), rng)
  t = pl.truth_of(les, offset=grid.offset)
  m = pl.mask_of(les)
  assert t["slices"] and grid.offset != (0, 0)            # rendered in the head's box only
  for j, k in enumerate(les.idx):
    ys, xs = np.nonzero(m[j])
    if k not in t["slices"]:
      assert ys.size == 0
      continue
    xs, ys = xs + grid.c0, ys + grid.r0                    # stored-image pixels
    x0, y0, x1, y1 = t["boxes"][str(k)]
    assert xs.min() == x0 and xs.max() == x1 - 1 and ys.min() == y0 and ys.max() == y1 - 1


def test_head_box_render_equals_full_image_render(monkeypatch):
  """Rendering only the head's box (speed) changes no truth and no pixel beyond float ulps."""
  from ctjax.data import phantom_anatomy as pa
  kw = dict(size=48, num_slices=16, noise_sigma=0.0, calcifications=["pineal"])
  cropped = [phantom.generate_scan(np.random.default_rng(s), findings=f, **kw)
             for s, f in ((0, ["sah", "iph"]), (1, ["edh", "fracture", "midline_shift"]))]
  orig = pa.Grid.__init__

  def full(self, g):
    orig(self, g)
    n = g.size
    self.r0 = self.c0 = 0
    self.r1 = self.c1 = n
    self.offset = (0, 0)
    save = g.size, g.center_xy
    idx = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * g.pixel_spacing
    x, y = idx[None, :] - g.center_xy[0], idx[:, None] - g.center_xy[1]
    ca, sa = np.cos(g.angle), np.sin(g.angle)
    self.u = np.broadcast_to((ca * x - sa * (-y)).astype(np.float32), (n, n)).copy()
    self.v = np.broadcast_to((sa * x + ca * (-y)).astype(np.float32), (n, n)).copy()
    assert (g.size, g.center_xy) == save

  monkeypatch.setattr(pa.Grid, "__init__", full)
  for (hu, truth), (s, f) in zip(cropped, ((0, ["sah", "iph"]),
                                           (1, ["edh", "fracture", "midline_shift"]))):
    hu_full, truth_full = phantom.generate_scan(np.random.default_rng(s), findings=f, **kw)
    # numpy's SIMD float32 sin/arctan/sqrt may differ by an ulp between vector body and tail,
    # which the crop shifts: a rare pixel rounds to the neighbouring integer HU.
    diff = np.abs(hu.astype(np.int32) - hu_full)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert truth == truth_full


def _interior_fraction(m):
  """Share of mask pixels whose 4 neighbours are all in the mask (lines ~0, patches ~1)."""
  e = m.copy()
  e[..., :, 1:] &= m[..., :, :-1]
  e[..., :, :-1] &= m[..., :, 1:]
  e[..., 1:, :] &= m[..., :-1, :]
  e[..., :-1, :] &= m[..., 1:, :]
  return e.sum() / max(1, m.sum())


def test_sah_is_thin_lines_in_the_subarachnoid_space():
  from ctjax.data import phantom_anatomy as pa
  for seed in range(4):
    rng = np.random.default_rng(seed)
    g = pa.sample_geometry(rng, size=128, num_slices=24, noise_sigma=0.0)
    grid = pa.Grid(g)
    _, fields = pa.render_anatomy(grid, rng)
    les = pl.render_sah(grid, fields, rng, difficult=False)
    m = pl.mask_of(les)
    assert m.sum() > 50
    assert _interior_fraction(m) < 0.5, seed               # 1–3 px lines, not a patch
    # Outside the cisterns every blood pixel lies within ~1 mm + a pixel of a sulcus.
    conv = m & (fields["cisterns"][les.idx] < 0.05) & (fields["sulcal"][les.idx] < 1e3)
    assert conv.sum() > 0.3 * m.sum()
    assert fields["sulcal"][les.idx][conv].max() <= 1.1 + g.pixel_spacing


def test_difficult_lesions_span_few_slices_and_easy_many():
  small = [len(phantom.bleed_slices(_scan(s, findings=["iph"], difficult=True)[1])) for s in range(6)]
  large = [len(phantom.bleed_slices(_scan(s, findings=["iph"], num_slices=40)[1])) for s in range(4)]
  assert all(1 <= n <= 3 for n in small), small
  assert all(n >= 6 for n in large), large


def test_blend_sign_has_two_attenuations_and_mimics_are_not_blend():
  hu, truth = _scan(5, findings=["blend"], noise_sigma=0.0)
  (e,) = truth["lesions"]
  assert e["blend"] and e["blend_slices"]
  lo, hi = e["components"]
  assert hi - lo >= 18                                   # clearly different attenuation
  assert 2 in truth["slice_class"]
  for mimic in pl.MIMICS:
    _, t = _scan(6, findings=["iph"], mimic=mimic)
    assert not any(x["blend"] for x in t["lesions"]) and 2 not in t["slice_class"]
    assert 1 in t["slice_class"]


def test_blend_sign_parts_both_visible_with_thin_rim():
  """Both parts read against brain (hypodense part still denser than grey matter), >= 18 HU
  apart, and a perihaematomal rim never outweighs the clot."""
  n_blend = 0
  for seed in range(6):
    rng = np.random.default_rng([seed, 5])
    from ctjax.data import phantom_anatomy as pa
    g = pa.sample_geometry(rng, size=128, num_slices=24, noise_sigma=0.0)
    grid = pa.Grid(g)
    _, fields = pa.render_anatomy(grid, rng)
    p = pl.sample_iph(grid, rng, difficult=False, blend=True)
    assert p["oedema_mm"] <= 3.5
    les = pl.render_iph(grid, fields, p, rng, blend=True)
    lo, hi = les.extra["components"]
    assert hi - lo >= 18 and lo >= g.hu_grey + 1 and hi <= 90
    clot = pl.mask_of(les)
    if les.halo is not None:
      assert (les.halo[0] >= 0.5).sum() < clot.sum()
    hypo = (les.hypo >= 0.5) & clot
    full = les.occ >= 0.99
    if (hypo & full).any() and (~hypo & full).any():
      n_blend += 1
      assert np.median(les.hu[hypo & full]) == pytest.approx(lo, abs=1)
      assert np.median(les.hu[~hypo & full]) == pytest.approx(hi, abs=1)
  assert n_blend >= 4


def test_calcifications_are_bright_small_and_unlabelled():
  hu, truth = _scan(7, calcifications=["pineal", "choroid"], noise_sigma=0.0)
  assert truth["lesions"] == [] and max(truth["slice_class"]) == 0
  c = [e for e in truth["calcifications"] if e["slices"]]
  assert c and all(e["hu"][0] > 100 for e in c)
  assert all(len(e["slices"]) <= 4 for e in c)


def test_cq500_extras_fracture_mass_effect_midline_shift():
  hu, truth = _scan(8, findings=["edh", "fracture", "mass_effect", "midline_shift"])
  types = {e["type"] for e in truth["lesions"] if e["slices"]}
  assert {"edh", "fracture", "mass_effect", "midline_shift"} <= types
  assert 4 <= abs(truth["midline_shift_mm"]) <= 11


def test_generation_is_deterministic_and_rejects_unknown():
  a, ta = _scan(11, findings=["sdh"])
  b, tb = _scan(11, findings=["sdh"])
  assert np.array_equal(a, b) and ta == tb
  with pytest.raises(ConfigError):
    _scan(0, findings=["tumour"])


def test_layout_statistics_prevalence_slices_difficult():
  rng = np.random.default_rng(0)
  opts = phantom._opts({})
  cases = [phantom.sample_case(rng, "rsna", opts) for _ in range(2000)]
  pos = [c for c in cases if c["findings"]]
  assert abs(len(pos) / len(cases) - 0.35) < 0.04
  assert abs(np.mean([c["difficult"] for c in pos]) - 0.3) < 0.05
  assert all(21 <= c["num_slices"] <= 60 for c in cases)
  cq = [phantom.sample_case(rng, "cq500", opts)["num_slices"] for _ in range(500)]
  assert min(cq) >= 32 and max(cq) <= 300 and max(cq) > 150
  # Rendered: difficult positives really are <= 5 slices, the others mostly more.
  diff, n_pos = 0, 0
  for i in range(16):
    r = np.random.default_rng([1, i])
    case = phantom.sample_case(r, "rsna", phantom._opts({"prevalence": 1.0,
                                                         "slice_range": (21, 30)}))
    _, t = phantom.generate_scan(r, size=32, **case)
    n_pos += 1
    diff += phantom.is_difficult(t)
    if case["difficult"]:
      assert phantom.is_difficult(t)
  assert 0.1 <= diff / n_pos <= 0.6


def test_rsna_slice_ids_are_unique_by_construction():
  """9-hex `ID_…` names drawn independently per scan collided in a 1,280-scan set (two files,
  one name); the scan and slice indices now fill most of the bits."""
  import re
  rng = np.random.default_rng(0)
  ids = [phantom._rsna_sop_id(rng, i, k) for i in (0, 1, 7, 131071) for k in range(512)]
  assert len(set(ids)) == len(ids)
  assert all(re.fullmatch(r"ID_[0-9a-f]{9}", s) for s in ids)


# ------------------------------------------------------------------ writing a data set


def _dicom_bytes(folder) -> tuple[int, int]:
  files = [p for p in folder.rglob("*.dcm")]
  return len(files), sum(p.stat().st_size for p in files)


@pytest.mark.parametrize("layout, images_per_scan", [("rsna", 10), ("cq500", 10 + 5 + 10 + 1)])
def test_estimate_bytes_matches_what_is_written(tmp_path, layout, images_per_scan):
  opts = dict(slice_range=(10, 10))
  phantom.write_dataset(tmp_path / "p", layout=layout, num_scans=2, seed=3, size=32,
                        num_workers=0, **opts)
  count, size = _dicom_bytes(tmp_path / "p")
  assert count == 2 * images_per_scan
  estimate = phantom.estimate_bytes(layout, 2, 32, **opts)
  assert abs(estimate - size) / size < 0.03, (estimate, size)
  # The README job's set: 1,280 scans of 21-60 slices at 128 px, 1.75 GB as written (52,051
  # slices of 33,646 bytes).
  assert 1.6e9 < phantom.estimate_bytes("rsna", 1280, 128) < 1.9e9


def test_write_dataset_shows_a_bar_over_the_scans(tmp_path, capsys):
  phantom.write_dataset(tmp_path / "p", layout="rsna", num_scans=3, seed=1, size=32,
                        num_workers=0, slice_range=(4, 4), progress=True)
  err = capsys.readouterr().err
  assert "phantom scans" in err and "3/3" in err and "scan/s" in err
  phantom.write_dataset(tmp_path / "q", layout="rsna", num_scans=3, seed=1, size=32,
                        num_workers=0, slice_range=(4, 4))
  assert "phantom scans" not in capsys.readouterr().err


def test_write_dataset_writes_only_into_an_empty_folder_or_a_phantom_set(tmp_path):
  own = tmp_path / "rsna"
  own.mkdir()
  (own / "stage_2_train.csv").write_text("ID,Label\n")
  with pytest.raises(DatasetLayoutError, match="not empty.*stage_2_train.csv.*not a ctjax "
                     "phantom set") as e:
    phantom.write_dataset(own, layout="rsna", num_scans=1, seed=0, size=32, num_workers=0)
  assert str(own) in str(e.value) and len(str(e.value).splitlines()) == 1
  assert sorted(p.name for p in own.iterdir()) == ["stage_2_train.csv"]   # nothing written
  assert (own / "stage_2_train.csv").read_text() == "ID,Label\n"
  # Asked for explicitly, any folder.
  phantom.write_dataset(own, layout="rsna", num_scans=1, seed=0, size=32, num_workers=0,
                        slice_range=(4, 4), allow_nonempty=True)
  # Hidden entries do not count; an interrupted set (marker only) and a finished one are ours.
  hidden = tmp_path / "hidden"
  hidden.mkdir()
  (hidden / ".DS_Store").write_text("")
  assert phantom.foreign_entries(hidden) == []
  done = tmp_path / "done"
  phantom.write_dataset(done, layout="rsna", num_scans=1, seed=0, size=32, num_workers=0,
                        slice_range=(4, 4))
  assert phantom.is_phantom_set(done) and phantom.foreign_entries(done) == []
  (done / "manifest.json").unlink()            # as if cut short before its manifest
  assert phantom.is_phantom_set(done)          # the marker is written before the first scan
  phantom.write_dataset(done, layout="rsna", num_scans=2, seed=0, size=32, num_workers=0,
                        slice_range=(4, 4))
  assert len(json.loads((done / "manifest.json").read_text())["scans"]) == 2
