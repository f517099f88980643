"""Statistics and truth of the synthetic head-CT phantoms (ctjax/data/phantom*.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ctjax.data import phantom
from ctjax.data import phantom_lesions as pl
from ctjax.errors import ConfigError

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


@pytest.mark.parametrize("kind,lo,hi", [("iph", 50, 90), ("ivh", 45, 80), ("sdh", 50, 80),
                                        ("edh", 50, 90), ("sah", 50, 80)])
def test_lesion_hu_and_boxes(kind, lo, hi):
  for seed in range(3):
    hu, truth = _scan(seed, findings=[kind], noise_sigma=0.0)
    (e,) = [e for e in truth["lesions"] if e["type"] == kind]
    assert e["slices"], "lesion must be visible"
    assert lo <= e["hu"][0] <= e["hu"][1] <= hi
    in_range = 0
    for k in e["slices"]:
      x0, y0, x1, y1 = e["boxes"][str(k)]
      assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
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
  t = pl.truth_of(les)
  m = pl.mask_of(les)
  assert t["slices"]
  for j, k in enumerate(les.idx):
    ys, xs = np.nonzero(m[j])
    if k not in t["slices"]:
      assert ys.size == 0
      continue
    x0, y0, x1, y1 = t["boxes"][str(k)]
    assert xs.min() == x0 and xs.max() == x1 - 1 and ys.min() == y0 and ys.max() == y1 - 1


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
