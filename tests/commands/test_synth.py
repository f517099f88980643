"""Phantom data sets on disk: layouts, label files, manifest, DICOM read-back (ctjax/synth.py)."""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
import pydicom
import pytest

from ctjax.data.labels import BLEND_CLASSES, CQ500_LABELS, RSNA_LABELS
from ctjax.commands import synth
from ctjax.data import phantom

SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
OPTS = dict(slice_range=(8, 12), prevalence=0.7)


def _regenerate(seed, i, layout, **options):
  """The in-memory scan write_dataset drew for index i (same rng sequence)."""
  opts = phantom._opts({**OPTS, **options})
  rng = np.random.default_rng([seed, i])
  case = phantom.sample_case(rng, layout, opts)
  return phantom.generate_scan(rng, size=SIZE, noise_sigma=opts["noise_sigma"], **case)


def _read_pydicom(root, files):
  out = []
  for f in files:
    ds = pydicom.dcmread(root / f)
    assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    out.append((float(ds.ImagePositionPatient[2]), ds.pixel_array.astype(np.float32)
                * float(ds.RescaleSlope) + float(ds.RescaleIntercept), ds))
  return out


@pytest.mark.parametrize("layout", ["rsna", "cq500", "blend"])
def test_layout_files_manifest_and_hu_roundtrip(tmp_path, layout):
  path = phantom.write_dataset(tmp_path, layout=layout, num_scans=3, seed=4, size=SIZE, **OPTS)
  assert path == tmp_path / "manifest.json"
  m = json.loads(path.read_text())
  assert m["layout"] == layout and m["seed"] == 4 and m["size"] == SIZE
  assert m["labels"] == list({"rsna": RSNA_LABELS, "cq500": CQ500_LABELS,
                              "blend": BLEND_CLASSES}[layout])
  for i, s in enumerate(m["scans"]):
    S = len(s["files"])
    assert 8 <= S <= 12 and len(s["slice_labels"]) == S and len(s["slice_class"]) == S
    assert set(s["labels"]) == set(m["labels"])
    read = _read_pydicom(tmp_path, s["files"])
    z = [r[0] for r in read]
    assert all(b > a for a, b in zip(z, z[1:])), "files must be listed inferior → superior"
    hu_ref, truth = _regenerate(4, i, layout)
    np.testing.assert_array_equal(np.stack([r[1] for r in read]), hu_ref.astype(np.float32))
    ds = read[0][2]
    assert ds.SeriesInstanceUID == s["series_uid"] and ds.PatientID == s["patient_id"]
    assert float(ds.PixelSpacing[0]) == pytest.approx(truth["pixel_spacing"], rel=1e-5)
    assert float(ds.SliceThickness) == pytest.approx(truth["thickness"], rel=1e-5)
    inst = [int(r[2].InstanceNumber) for r in read]
    assert sorted(inst) == list(range(1, S + 1)) and inst in (sorted(inst), sorted(inst)[::-1])
    for e in s["lesions"]:
      for k in e["slices"]:
        assert str(k) in e["boxes"] and str(k) in e["centers"]
    # Slice labels agree with the lesions' slices.
    for j, name in enumerate(m["labels"]):
      if layout != "blend" and name not in ("any", "ich"):
        pos = {k for k, row in enumerate(s["slice_labels"]) if row[j]}
        typ = {"epidural": "edh", "intraparenchymal": "iph", "intraventricular": "ivh",
               "subarachnoid": "sah", "subdural": "sdh"}.get(name, name)
        assert pos == {k for e in s["lesions"] if e["type"] == typ for k in e["slices"]}
  if layout == "rsna":
    rows = list(csv.reader(open(tmp_path / "stage_2_train.csv")))
    assert rows[0] == ["ID", "Label"]
    n = sum(len(s["files"]) for s in m["scans"])
    assert len(rows) == 1 + 6 * n
    s = m["scans"][0]
    f0 = s["files"][0]
    assert f0.startswith("stage_2_train/ID_") and f0.endswith(".dcm")
    sop = pathlib.Path(f0).stem
    got = {r[0][len(sop) + 1:]: int(r[1]) for r in rows[1:] if r[0].startswith(sop + "_")}
    assert got == {n: s["slice_labels"][0][RSNA_LABELS.index(n)] for n in RSNA_LABELS}
    assert pydicom.dcmread(tmp_path / f0).SOPInstanceUID == sop
  elif layout == "cq500":
    rows = list(csv.DictReader(open(tmp_path / "reads.csv")))
    assert list(rows[0])[:4] == ["name", "Category", "R1:ICH", "R1:IPH"]
    assert len(rows[0]) == 2 + 3 * 14
    assert [r["name"] for r in rows] == [s["scan_id"] for s in m["scans"]]
    for s in m["scans"]:       # the download's folders: `CQ500CT<n> CQ500CT<n>/Unknown Study/`
      n = s["scan_id"].rsplit("-", 1)[1]
      study = f"CQ500CT{n} CQ500CT{n}/Unknown Study"
      assert all(f.startswith(f"{study}/CT PLAIN THIN/CT") for f in s["files"])
      extra = {e["kind"]: e for e in s["extra_series"]}
      assert sorted(extra) == ["bone", "localizer", "thick"]
      assert [e["folder"] for e in s["extra_series"]] == ["CT Plain", "CT BONE", "CT SCOUT"]
      S = len(s["files"])
      assert extra["thick"]["num_slices"] == S // 2 and extra["bone"]["num_slices"] == S
      assert extra["localizer"]["num_slices"] == 1
      for e in s["extra_series"]:
        ds = pydicom.dcmread(tmp_path / e["files"][0])
        assert ds.StudyInstanceUID == s["study_uid"] and ds.ConvolutionKernel == e["kernel"]
        assert ds.SeriesDescription == e["description"]
        assert all(f.startswith(f"{study}/{e['folder']}/CT") for f in e["files"])
      assert "LOCALIZER" in pydicom.dcmread(tmp_path / extra["localizer"]["files"][0]).ImageType
      thin = np.stack([r[1] for r in _read_pydicom(tmp_path, s["files"])])
      thick = np.stack([r[1] for r in _read_pydicom(tmp_path, extra["thick"]["files"])])
      np.testing.assert_array_equal(thick, np.rint(thin[:2 * (S // 2)].reshape(
          S // 2, 2, *thin.shape[1:]).mean(1)))
      np.testing.assert_array_equal(
          np.stack([r[1] for r in _read_pydicom(tmp_path, extra["bone"]["files"])]), thin)
  else:
    rows = list(csv.DictReader(open(tmp_path / "blend_labels.csv")))
    assert list(rows[0]) == ["scan_id", "patient_id", "sop_uid", "file", "label", "boxes"]
    by_file = {r["file"]: r for r in rows}
    for s in m["scans"]:
      for k, f in enumerate(s["files"]):
        r = by_file[f]
        assert int(r["label"]) == s["slice_class"][k]
        assert (r["boxes"] == "") == (s["slice_class"][k] == 0)


def test_cq500_reader_disagreement_rate():
  rng = np.random.default_rng(0)
  labels = {n: 0 for n in CQ500_LABELS}
  truth = {"lesions": []}
  flips = [r["IPH"] for _ in range(400) for r in phantom.cq500_reads(rng, truth, labels, 0.2)]
  assert abs(np.mean(flips) - 0.2) < 0.04
  same = phantom.cq500_reads(rng, truth, dict(labels, iph=1, ich=1), 0.0)
  assert all(r["IPH"] == 1 and r["ICH"] == 1 and r["SDH"] == 0 for r in same)


def test_read_series_roundtrip(tmp_path):
  dicom = pytest.importorskip("ctjax.data.dicom")
  m = json.loads(phantom.write_dataset(tmp_path, layout="cq500", num_scans=1, seed=2, size=SIZE,
                                       **OPTS).read_text())
  s = m["scans"][0]
  vol = dicom.read_series(tmp_path / pathlib.Path(s["files"][0]).parent)
  hu_ref, truth = _regenerate(2, 0, "cq500")
  assert vol.sop_uids == s["sop_uids"]
  np.testing.assert_array_equal(vol.hu, hu_ref.astype(np.float32))
  assert vol.spacing[0] == pytest.approx(truth["thickness"], rel=1e-4)


def test_cli(tmp_path, capsys):
  assert synth.main(["--layout", "blend", "--scans", "2", "--seed", "1", "--size", "32",
                     "--slices", "8,9", "--out", str(tmp_path / "d")]) == 0
  assert "slices/s" in capsys.readouterr().out
  assert (tmp_path / "d" / "blend_labels.csv").exists()
  assert synth.main(["--layout", "rsna", "--scans", "0", "--out", str(tmp_path / "e")]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "num_scans" in err and err.count("\n") == 1


@pytest.mark.parametrize("encoding", [0, 1, 2])
def test_templated_writer_is_byte_identical_to_pydicom(tmp_path, encoding):
  """The spliced per-slice files equal pydicom's own dcmwrite of the same Dataset, byte for byte."""
  hu, truth = phantom.generate_scan(np.random.default_rng(encoding), size=SIZE, num_slices=5,
                                    findings=["iph"])
  prev = phantom._quiet_pydicom()
  try:
    for sop, series, desc in (("ID_0a1b2c3d4", "ID_9f8e7d6c5b", False),
                              ("2.25.1234567890123", "2.25.42", True),     # odd-length UIDs pad
                              ("2.25.12345678901234", "2.25.421", False)):
      w = phantom.SeriesWriter(size=SIZE, truth=truth, patient_id="ID_abc", study_uid="2.25.9",
                               series_uid=series, encoding=encoding, descending_instances=desc,
                               description="ctjax phantom test")
      for k in (0, 4):
        w.write(tmp_path / "fast.dcm", k, hu[k], sop)
        w.reference_write(tmp_path / "ref.dcm", k, hu[k], sop)
        assert (tmp_path / "fast.dcm").read_bytes() == (tmp_path / "ref.dcm").read_bytes()
        (tmp_path / "ref.dcm").unlink()
        ds = pydicom.dcmread(tmp_path / "fast.dcm")
        assert ds.SOPInstanceUID == sop and ds.file_meta.MediaStorageSOPInstanceUID == sop
        np.testing.assert_array_equal(ds.pixel_array * float(ds.RescaleSlope)
                                      + float(ds.RescaleIntercept), hu[k])
  finally:
    phantom._restore_pydicom(prev)


def test_worker_processes_write_the_same_data_set(tmp_path):
  """Scan i depends only on (seed, i): 2 spawned workers write exactly what 1 process writes."""
  kw = dict(layout="blend", num_scans=4, seed=3, size=SIZE, **OPTS)
  a = json.loads(phantom.write_dataset(tmp_path / "a", num_workers=0, **kw).read_text())
  b = json.loads(phantom.write_dataset(tmp_path / "b", num_workers=2, **kw).read_text())
  assert a["timing"]["num_workers"] == 0 and b["timing"]["num_workers"] == 2
  assert b["timing"]["slices_per_cpu_s"] > 0 and b["timing"]["cpu_seconds"] > 0
  ta, tb = a.pop("timing"), b.pop("timing")
  assert a == b and ta["slices"] == tb["slices"]
  files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                 if p.is_file() and p.name not in ("manifest.json", phantom.MARKER))
  assert len(files) == 1 + ta["slices"]
  for f in files:
    assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
  assert phantom.default_workers(3) == 0 and phantom.default_workers(400) in (0, 2, 3, 4)
