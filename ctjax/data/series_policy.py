"""Which series of a study become scans, decided from DICOM headers only (no pixel is read).

A CQ500 study folder holds several reconstructions of one acquisition (thin and thick
soft-tissue series, bone-kernel series, sometimes a localizer, post-contrast series or
reformats). `describe_series` reads the header fields below from every file of a folder
(`ctjax.data.headers`, `stop_before_pixels`), groups the files by SeriesInstanceUID and returns
one `SeriesInfo` each; `exclusions` lists why a series is not a soft-tissue axial stack;
`select` applies a policy and records, for every series, whether it was kept and why.

Policies (`config.data.series.policy`):
- `soft_tissue_axial` (default): every series with no exclusion below, each one scan record
  carrying its study's labels.
- `one_per_study`: of those, the thinnest per study (SliceThickness, then most slices, then the
  UID).
- `all`: every series found, unfiltered (for inspection; localizers and bone series included).

Exclusions, in the order they are tested (the first that applies is recorded):
- not CT: Modality other than CT;
- localizer: ImageType contains LOCALIZER, or SeriesDescription matches `LOCALIZER_DESCRIPTIONS`;
- derived / secondary: ImageType value 1 DERIVED or value 2 SECONDARY (DICOM PS3.3 C.7.6.1.1.2:
  pixels computed from other images — MPRs, MIPs, thick slabs, screen captures), or a
  SeriesDescription matching `REFORMAT_DESCRIPTIONS`;
- non-axial: the slice normal (row × column of ImageOrientationPatient) more than 45° from the
  patient's z axis, i.e. the plane is nearer coronal or sagittal than axial (gantry tilts of head
  CT, up to about 30°, stay axial);
- bone reconstruction: ConvolutionKernel matching `BONE_KERNELS`, or SeriesDescription matching
  `BONE_DESCRIPTIONS` (many exports leave the kernel empty but name the series "BONE");
- post-contrast (with `exclude_contrast`): ContrastBolusAgent present, or a SeriesDescription
  matching `CONTRAST_DESCRIPTIONS` and not "PRE CONTRAST" — CQ500's reads are of non-contrast
  head CT (Chilamkurthy et al., Lancet 2018: "non-contrast head CT scans");
- too few slices: fewer than `min_slices` image files (DrCT2 paper, Table 1: CQ500 scans have
  32–396 slices, so the CQ500 configs use 32).

The DrCT2 paper (Table 1) trains on 1,181 CQ500 scans of 490 patients but does not state which
series it kept: `soft_tissue_axial` is the closest reading (the download has 491 studies with
2–5 series each, of which the thin and thick soft-tissue reconstructions make about 2.4 per
study); `python -m ctjax.prepare` prints how many series each policy keeps on the data at hand.

Kernel names follow vendor conventions: GE names its sharp kernels BONE, BONEPLUS, EDGE and
LUNG; Siemens names a kernel by a letter (H head, J, B body, Q; `r` for the newer
reconstructions) and a sharpness number, 60 and above for bone and lung work (H60s, H70h,
Hr64, J70h). Other vendors' bone reconstructions are caught by their description; both
patterns can be replaced (`config.data.series.bone_kernels`, `.bone_descriptions`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ctjax import errors
from ctjax.data import dicom

POLICIES = ("soft_tissue_axial", "one_per_study", "all")
FIELDS = ("SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality", "SeriesDescription",
          "ConvolutionKernel", "ImageType", "SliceThickness", "ImageOrientationPatient",
          "ContrastBolusAgent", "StudyDate", "SeriesDate", "Manufacturer")
BONE_KERNELS = r"BONE|EDGE|LUNG|SHARP|^(H|J|B|Q|Hr|Jr|Br|Qr)[6-9]\d"
BONE_DESCRIPTIONS = r"\bBONE"
LOCALIZER_DESCRIPTIONS = r"SCOUT|TOPO|LOCALI[SZ]|SURVIEW|SCANOGRAM|\bPILOT\b"
REFORMAT_DESCRIPTIONS = (r"\bMPR\b|\bMIP\b|\bMINIP\b|\b3D\b|\bVRT?\b|VOLUME REND|REFORMAT|"
                         r"\bCOR(ONAL)?\b|\bSAG(ITTAL)?\b")
CONTRAST_DESCRIPTIONS = r"POST[\s_-]*CONTRAST|\bCECT\b|\bC\+|CONTRAST"
PRE_CONTRAST_DESCRIPTIONS = r"PRE[\s_-]*CONTRAST|NON[\s_-]*CONTRAST|\bNCCT\b"
DEFAULTS = {"policy": "soft_tissue_axial", "min_slices": 0, "exclude_contrast": True,
            "bone_kernels": BONE_KERNELS, "bone_descriptions": BONE_DESCRIPTIONS}


@dataclasses.dataclass
class SeriesInfo:
  """One series of a folder, from its headers."""
  folder: str
  series_uid: str
  study_uid: str = ""
  patient_id: str = ""
  modality: str = ""
  description: str = ""
  kernel: str = ""
  image_type: str = ""
  thickness: Optional[float] = None
  plane: str = "unknown"          # axial | coronal | sagittal | unknown
  normal_deg: Optional[float] = None   # angle of the slice normal from the z axis
  contrast_agent: str = ""
  study_date: str = ""
  manufacturer: str = ""
  files: list[str] = dataclasses.field(default_factory=list)   # image files (localizers out)
  localizer_files: int = 0
  unreadable: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)

  @property
  def num_slices(self) -> int:
    return len(self.files)

  def identity(self) -> dict[str, Any]:
    """What a reader needs to recognise the series (QA table, report provenance)."""
    return {"folder": self.folder, "series_uid": self.series_uid, "study_uid": self.study_uid,
            "description": self.description, "kernel": self.kernel,
            "image_type": self.image_type, "thickness_mm": self.thickness, "plane": self.plane,
            "study_date": self.study_date, "num_files": self.num_slices + self.localizer_files,
            "num_slices": self.num_slices}


def options(section: Optional[Mapping[str, Any]]) -> dict[str, Any]:
  """`config.data.series` (or None) → every policy option, defaults filled in and checked."""
  out = dict(DEFAULTS)
  if section is not None:
    unknown = set(section) - set(DEFAULTS)
    if unknown:
      raise errors.ConfigError(f"config.data.series has unknown fields {sorted(unknown)}; "
                               f"known: {sorted(DEFAULTS)}")
    out.update({k: section[k] for k in section})
  if out["policy"] not in POLICIES:
    raise errors.ConfigError(f"config.data.series.policy={out['policy']!r}; known: {POLICIES}")
  out["min_slices"] = int(out["min_slices"])
  out["exclude_contrast"] = bool(out["exclude_contrast"])
  for key in ("bone_kernels", "bone_descriptions"):
    try:
      re.compile(out[key])
    except re.error as e:
      raise errors.ConfigError(f"config.data.series.{key}={out[key]!r} is not a regex ({e})") \
          from e
  return out


def _plane(iop_text: str) -> tuple[str, Optional[float]]:
  """`ctjax.data.dicom.slice_plane` of ImageOrientationPatient as header text ("unknown" when
  it is not six numbers of two directions)."""
  try:
    v = np.asarray([float(x) for x in iop_text.split("\\")], np.float64)
  except ValueError:
    return "unknown", None
  if v.shape != (6,) or not np.all(np.isfinite(v)):
    return "unknown", None
  try:
    return dicom.slice_plane(v)
  except ValueError:
    return "unknown", None


def _thickness(text: str) -> Optional[float]:
  try:
    t = float(text)
  except ValueError:
    return None
  return t if math.isfinite(t) and t > 0 else None


def describe_series(files: Iterable[str], headers: Iterable[tuple[str, Optional[dict],
                                                                   Optional[Exception]]],
                    folder: str) -> list[SeriesInfo]:
  """Groups one folder's header scan (`ctjax.data.headers.scan(files, FIELDS)`) by series.

  Files whose header cannot be read are attached to the folder's series when it has exactly one
  (the volume reader then raises on them, or skips them in lenient mode); otherwise they are
  listed in the first series' `unreadable`."""
  groups: dict[str, SeriesInfo] = {}
  votes: dict[str, dict[str, dict[str, int]]] = {}
  bad: list[tuple[str, str]] = []
  for path, got, err in headers:
    if got is None:
      bad.append((path, str(err)))
      continue
    uid = got["SeriesInstanceUID"]
    info = groups.get(uid)
    if info is None:
      info = groups[uid] = SeriesInfo(folder, uid)
      votes[uid] = {}
    localizer = "LOCALIZER" in got["ImageType"].upper()
    if localizer:
      info.localizer_files += 1
    else:
      info.files.append(path)
    # Image files outvote localizers (a series of localizers only is described by them).
    for key in FIELDS[1:]:
      counts = votes[uid].setdefault(key, {})
      counts[got[key]] = counts.get(got[key], 0) + (1 if localizer else 1 << 20)
  for uid, info in groups.items():
    top = {k: max(c.items(), key=lambda kv: kv[1])[0] for k, c in votes[uid].items()}
    info.study_uid, info.patient_id = top.get("StudyInstanceUID", ""), top.get("PatientID", "")
    info.modality, info.description = top.get("Modality", ""), top.get("SeriesDescription", "")
    info.kernel, info.image_type = top.get("ConvolutionKernel", ""), top.get("ImageType", "")
    info.thickness = _thickness(top.get("SliceThickness", ""))
    info.plane, info.normal_deg = _plane(top.get("ImageOrientationPatient", ""))
    info.contrast_agent = top.get("ContrastBolusAgent", "")
    info.study_date = top.get("StudyDate", "") or top.get("SeriesDate", "")
    info.manufacturer = top.get("Manufacturer", "")
    info.files.sort()
  out = sorted(groups.values(), key=lambda s: s.series_uid)
  if bad:
    if len(out) == 1:
      out[0].files.extend(p for p, _ in bad)
      out[0].files.sort()
    elif out:
      out[0].unreadable.extend(bad)
    else:
      out.append(SeriesInfo(folder, "", unreadable=bad))
  return out


def exclusions(s: SeriesInfo, opts: Mapping[str, Any]) -> list[str]:
  """Why `s` is not a soft-tissue axial stack (empty: it is one); see the module docstring."""
  why = []
  desc = s.description or os.path.basename(s.folder)
  itype = [v.strip().upper() for v in s.image_type.split("\\")]
  if not s.series_uid:
    why.append("no readable DICOM header")
  if s.modality and s.modality != "CT":
    why.append(f"not CT (Modality {s.modality})")
  if not s.files and s.localizer_files:
    why.append("localizer (ImageType LOCALIZER)")
  elif re.search(LOCALIZER_DESCRIPTIONS, desc, re.IGNORECASE):
    why.append(f"localizer (SeriesDescription {desc!r})")
  if itype[:1] == ["DERIVED"] or itype[1:2] == ["SECONDARY"]:
    why.append(f"derived/secondary image (ImageType {s.image_type})")
  elif re.search(REFORMAT_DESCRIPTIONS, desc, re.IGNORECASE):
    why.append(f"reformat (SeriesDescription {desc!r})")
  if s.plane in ("coronal", "sagittal"):
    why.append(f"non-axial ({s.plane}: slice normal {s.normal_deg:.0f}° from the z axis)")
  if s.kernel and re.search(opts["bone_kernels"], s.kernel, re.IGNORECASE):
    why.append(f"bone kernel (ConvolutionKernel {s.kernel!r})")
  elif re.search(opts["bone_descriptions"], desc, re.IGNORECASE):
    why.append(f"bone reconstruction (SeriesDescription {desc!r})")
  if opts["exclude_contrast"]:
    if s.contrast_agent:
      why.append(f"post-contrast (ContrastBolusAgent {s.contrast_agent!r})")
    elif re.search(CONTRAST_DESCRIPTIONS, desc, re.IGNORECASE) and \
        not re.search(PRE_CONTRAST_DESCRIPTIONS, desc, re.IGNORECASE):
      why.append(f"post-contrast (SeriesDescription {desc!r})")
  if s.num_slices < opts["min_slices"]:
    why.append(f"{s.num_slices} slices < min_slices {opts['min_slices']}")
  return why


@dataclasses.dataclass
class Decision:
  series: SeriesInfo
  kept: bool
  reason: str
  study: str


def _describe_kept(s: SeriesInfo) -> str:
  thick = f"{s.thickness:.3g} mm" if s.thickness is not None else "thickness ?"
  return f"{s.plane}, kernel {s.kernel or '?'}, {thick}, {s.num_slices} slices"


def select(studies: Mapping[str, Sequence[SeriesInfo]], opts: Mapping[str, Any]
           ) -> list[Decision]:
  """A decision for every series of every study (`studies`: study key → its series)."""
  policy = opts["policy"]
  out: list[Decision] = []
  for study in studies:
    series = list(studies[study])
    why = {id(s): exclusions(s, opts) for s in series}
    if policy == "all":
      out += [Decision(s, True, "policy all: every series"
                       + (f" (would be excluded: {why[id(s)][0]})" if why[id(s)] else ""), study)
              for s in series]
      continue
    good = [s for s in series if not why[id(s)]]
    chosen = {id(s) for s in good}
    if policy == "one_per_study" and good:
      best = min(good, key=lambda s: (s.thickness if s.thickness is not None else math.inf,
                                      -s.num_slices, s.series_uid))
      chosen = {id(best)}
    for s in series:
      if id(s) in chosen:
        reason = ("thinnest soft-tissue axial series of the study: " if policy == "one_per_study"
                  else "soft-tissue axial: ") + _describe_kept(s)
        out.append(Decision(s, True, reason, study))
      elif why[id(s)]:
        out.append(Decision(s, False, "; ".join(why[id(s)]), study))
      else:
        out.append(Decision(s, False, "soft-tissue axial but not the thinnest of the study "
                                      f"(one_per_study; {_describe_kept(s)})", study))
  return out


def policy_counts(studies: Mapping[str, Sequence[SeriesInfo]], opts: Mapping[str, Any]
                  ) -> dict[str, int]:
  """How many series each policy keeps on `studies` (the other options unchanged)."""
  return {p: sum(d.kept for d in select(studies, {**opts, "policy": p})) for p in POLICIES}


def describe_folder(folder: str, *, workers: int = 0) -> list[SeriesInfo]:
  """The series of one folder (non-recursive; hidden files ignored), from headers only."""
  from ctjax.data import headers
  files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                 if not f.startswith(".") and os.path.isfile(os.path.join(folder, f)))
  return describe_series(files, headers.scan(files, FIELDS, workers=workers), folder)
