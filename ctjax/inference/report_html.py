"""The per-scan diagnostic-support report (DrCT2 paper, Figure 2 and section IV) as one HTML file.

Two halves, kept apart so the page can be tested without a trained model:

* `render_report_html(images, attention, highlight, predictions, provenance, scale=…)` is a
  pure function of arrays and small records → one self-contained HTML string (images inline as
  base64 PNG, the attention histogram as inline SVG, a few lines of plain JS; no external
  asset, no network).
* `ctjax.inference.scan_reports` glues it to the rest of ctjax: read the DICOM folder, sample and resize as
  the run's config says, predict with the restored run (`ctjax.inference.runs`), render, write.

The five key slices are the five most attended sampled slices, ranked exactly as the key-slice
tasks rank them (`ctjax.eval.keyslice.top_k_indices`: ties → lower slice first).

The highlighted area is drawn on the run's fixed scale (`ctjax.eval.highlight.HighlightScale`,
stored with the run): the raw map divided by the run's reference, as iso-lines at `LEVELS`
(the floor, two steps between, the reference), each line opaque in its level's colour
(`LEVEL_COLOURS`), and a colour bar of the same bands on the page: every colour the overlay
shows is on the bar, whatever the anatomy under it, and the anatomy between the lines stays as
read. Every page of a run, and every caller that renders through here
(`ctjax.inference.scan_reports`, predictions with reports, the reader study's assisted arm),
draws the same value in the same colour. Without a scale the map is not drawn and the page says
why.

Images are in the canonical orientation of `ctjax.data.dicom.read_series`, drawn in
radiological convention: the patient's right on the viewer's left (marked R), anterior at the
top (A); a series without ImageOrientationPatient (QA flag `orientation_unknown`) is drawn as
stored, without markers. The header names the patient ID, the study date and the series
description; the series' QA flags (`ctjax.data.qa`) are listed under it.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import logging
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from ctjax.eval import keyslice
from ctjax.eval.highlight import HighlightScale, upsample

log = logging.getLogger(__name__)

DISCLAIMER = ("Research tool — not a diagnosis. This report is the output of an experimental "
              "machine-learning model and has not been validated for clinical use. It must not "
              "be used to diagnose, treat or rule out any condition; a qualified radiologist "
              "must read the original images.")
THUMB_PX = 96         # strip thumbnails (longest side)
KEY_PX = 384          # enlarged key slices (longest side)
# Iso-lines of the highlight at these fractions of the way from the floor to the reference
# (1.0: at the reference and above), each in its colour: turbo at 0.25/0.5/0.75/0.95, bright on
# a grey CT and told apart without red-green vision (cyan, green-yellow, orange, dark red).
LEVELS = (0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0)
LEVEL_CMAP, LEVEL_CMAP_AT = "turbo", (0.25, 0.5, 0.75, 0.95)
LINE_PX = 2           # iso-line width on the key slices (KEY_PX wide)
OVERLAY_OPACITY = 100   # the opacity slider's default (%): thin opaque lines hide no anatomy
COLORBAR_PX = (360, 16)   # colour bar (width, height): 0 … 1.0 × the reference, then "≥ 1.0"
COLORBAR_GREY = 0.3       # below the floor nothing is drawn: the bar shows a grey CT there
EVIDENCE_NOTE = ("The highlighted area is the model's label-agnostic evidence: the last "
                 "convolutional block's activation weighted by the slice's feature attention "
                 "(DrCT2 paper, section V.A and Figure 2). It is one map for all labels, not a "
                 "map of any single label.")


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One label's output: probability, decision threshold."""
  name: str
  probability: float
  threshold: float = 0.5

  @property
  def above(self) -> bool:
    return self.probability >= self.threshold


@dataclasses.dataclass
class Provenance:
  """Where the scan and the model came from; rendered verbatim (escaped) in the report."""
  scan_path: str = ""
  series_uid: str = ""
  study_uid: str = ""
  series_description: str = ""             # which reconstruction was read (DICOM header)
  kernel: str = ""                         # ConvolutionKernel
  slice_thickness: str = ""                # SliceThickness, mm
  study_date: str = ""                     # StudyDate (YYYYMMDD)
  num_source_slices: int = 0
  slice_index: Sequence[int] = ()          # sampled → source slice map, [m]
  spacing_mm: Sequence[float] = ()         # (z, y, x)
  source_shape: Sequence[int] = ()         # (S, H, W)
  model_windows: str = ""                  # e.g. "rsna3: brain 40/80, subdural 80/200, soft_tissue 40/380"
  display_window: str = "brain 40/80"
  model_input: str = ""                    # e.g. "28 × 224 × 224 × 3"
  config_name: str = ""
  model_name: str = ""
  patient_id: str = ""                     # PatientID (DICOM header)
  qa_flags: Sequence[str] = ()             # ctjax.data.qa flags of the series
  head: str = ""                           # the head-CT verdict in words ("" = not checked)
  checkpoint_step: Optional[int] = None
  workdir: str = ""
  report_seconds: Optional[float] = None
  created: str = ""
  extra: Mapping[str, str] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Pure rendering.

def _to_uint8(img: np.ndarray) -> np.ndarray:
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img
  return (np.clip(np.nan_to_num(img.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _png_data_uri(pixels: np.ndarray) -> str:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _resize(pixels: np.ndarray, longest: int) -> np.ndarray:
  """Resize so the longest side is `longest` (up or down), keeping the aspect ratio."""
  h, w = pixels.shape[:2]
  scale = longest / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  if size == (w, h):
    return pixels
  return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def level_colours() -> np.ndarray:
  """float RGB [len(LEVELS), 3]: the colour of each iso-line (and of its band on the bar)."""
  import matplotlib  # local: the renderer's only matplotlib use
  return np.asarray(matplotlib.colormaps[LEVEL_CMAP](np.asarray(LEVEL_CMAP_AT)))[:, :3]


def level_values(scale: HighlightScale) -> np.ndarray:
  """The iso-line levels in units of the run's reference: floor … 1.0."""
  return scale.floor + np.asarray(LEVELS) * (1.0 - scale.floor)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
  """The inner border of `mask`, `width` pixels wide (the image edge counts as outside)."""
  inner = np.pad(mask, width)
  for _ in range(width):
    inner = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) \
        & np.roll(inner, -1, 1)
  return mask & ~inner[width:-width, width:-width]


def heat_overlay(highlight: np.ndarray, size_hw: tuple[int, int],
                 scale: HighlightScale, line_px: int = LINE_PX) -> np.ndarray:
  """Raw highlight map [h, w] → RGBA uint8 [H, W, 4] on the run's fixed scale: upsampled
  bilinearly, an opaque iso-line at each level (`level_values`) in its colour, higher levels
  drawn over lower ones; transparent elsewhere (nothing at or below the floor)."""
  rel = scale.relative(upsample(highlight, size_hw))
  rgba = np.zeros(tuple(size_hw) + (4,), np.float32)
  for level, colour in zip(level_values(scale), level_colours()):
    line = _outline(rel >= level if level > scale.floor else rel > level, line_px)
    rgba[line, :3] = colour
    rgba[line, 3] = 1.0
  return (rgba * 255.0 + 0.5).astype(np.uint8)


def colorbar_png(scale: HighlightScale, size: tuple[int, int] = COLORBAR_PX) -> np.ndarray:
  """The colour bar, RGB uint8 [height, width, 3]: 0 … 1.0 × the reference over the first
  `1 / (1 + band)` of the width, then one more band for "≥ 1.0"; grey below the floor (nothing
  drawn), then each level's colour from its level up: exactly the colours of the lines."""
  w, h = size
  levels = level_values(scale)
  band = (1.0 - scale.floor) / (len(LEVELS) - 1)
  v = (np.arange(w, dtype=np.float64) + 0.5) / w * (1.0 + band)
  rgb = np.full((w, 3), COLORBAR_GREY)
  for level, colour in zip(levels, level_colours()):
    rgb[v >= level] = colour
  return np.repeat((rgb[None] * 255.0 + 0.5).astype(np.uint8), h, axis=0)


def colorbar_position(value: float, scale: HighlightScale) -> float:
  """Where `value` (reference units) sits on the colour bar, as a fraction of its width."""
  band = (1.0 - scale.floor) / (len(LEVELS) - 1)
  return float(value) / (1.0 + band)


def _scale_html(scale: Optional[HighlightScale]) -> str:
  esc = html.escape
  if scale is None:
    return ('<p class="hl-missing" id="highlight-scale">This run stores no highlight scale '
            '(<code>highlight_scale.json</code> in its workdir, written when training ends), '
            'so the highlighted area is not drawn: a map without the run\'s fixed scale would '
            'look the same on every scan. <code>python -m ctjax.evaluate --workdir RUN --split val '
            '--fit_highlight_scale</code> fits it on the validation split.</p>')
  levels = level_values(scale)
  ticks = [(0.0, "0"), (colorbar_position(scale.floor, scale), f"{scale.floor:.2f} floor")]
  ticks += [(colorbar_position(v, scale), f"{v:.2f}") for v in levels[1:-1]]
  ticks += [(colorbar_position(1.0, scale), "1.0"), (1.0, "≥ 1.0")]
  kept = [ticks[0]]
  for i, (x, t) in enumerate(ticks[1:], 1):   # labels that would overlap are left out
    if x - kept[-1][0] >= 0.09 and (i == len(ticks) - 1 or ticks[-1][0] - x >= 0.09):
      kept.append((x, t))
    elif i == len(ticks) - 1:
      kept[-1] = (x, t)
  ticks = kept
  spans = "".join(f'<span style="left:{100 * x:.1f}%">{esc(t)}</span>' for x, t in ticks)
  return (f'<div class="hl-scale" id="highlight-scale"><div class="cb-title">highlight, '
          f'in units of the run\'s reference (the same scale on every scan): a line of a '
          f'colour encloses where the highlight reaches that colour\'s band</div>'
          f'<img class="colorbar" alt="highlight colour scale" '
          f'src="{_png_data_uri(colorbar_png(scale))}"><div class="cb-ticks">{spans}</div>'
          f'<div class="cb-basis">{esc(scale.basis)}.</div></div>')


def _evidence_html(predictions: Sequence[Prediction]) -> str:
  esc = html.escape
  parts = [esc(EVIDENCE_NOTE)]
  if predictions:
    top = max(predictions, key=lambda p: float(p.probability))
    parts.append(f"Highest-probability label: <b>{esc(top.name)}</b> "
                 f"({float(top.probability):.3f}, {'above' if top.above else 'below'} its "
                 f"threshold {float(top.threshold):.2f}).")
  if not any(p.above for p in predictions):
    parts.append('<b class="no-call">No label is above its threshold</b>: the model does not '
                 "call this scan positive. The map is drawn on the same fixed scale as on every "
                 "scan, so weak evidence is faint or absent.")
  return f'<p class="hl-note" id="highlight-meaning">{" ".join(parts)}</p>'


def _histogram_svg(attention: np.ndarray, top: Sequence[int]) -> str:
  """Bars aligned with the strip's columns (one unit-wide column per slice, stretched)."""
  m = len(attention)
  peak = float(attention.max()) if m and attention.max() > 0 else 1.0
  rank = {int(i): r for r, i in enumerate(top)}
  bars = []
  for i, a in enumerate(attention):
    hgt = 100.0 * float(a) / peak
    cls = "bar key" if i in rank else "bar"
    title = f"slice {i + 1}: attention {float(a):.4f}" + (
        f" (key slice #{rank[i] + 1})" if i in rank else "")
    bars.append(f'<rect class="{cls}" data-slice="{i}" x="{i + 0.12:.2f}" y="{100 - hgt:.3f}" '
                f'width="0.76" height="{hgt:.3f}"><title>{html.escape(title)}</title></rect>')
  uniform = 100.0 * (1.0 / m) / peak if m else 0.0
  return (f'<svg id="attention-histogram" class="histogram" viewBox="0 0 {m} 100" '
          f'preserveAspectRatio="none" role="img" aria-label="slice attention histogram">'
          f'<line class="uniform" x1="0" x2="{m}" y1="{100 - uniform:.3f}" '
          f'y2="{100 - uniform:.3f}"/>{"".join(bars)}</svg>')


# What each QA flag (`ctjax.data.qa.FLAGS`) means, as the report says it.
QA_MEANINGS = {
    "not_head": "the pixels do not show a head CT (ctjax.data.headcheck)",
    "few_slices": "fewer slices than a head CT has",
    "small_matrix": "a matrix below 256 pixels",
    "gap": "a slice or more missing (a step longer than 1.5 × the median)",
    "uneven_spacing": "uneven slice steps",
    "gantry_tilt": "gantry tilt (sheared slices)",
    "oblique": "the slice plane is tilted from axial",
    "orientation_unknown": "no ImageOrientationPatient: orientation unknown",
    "lossy": "lossy-compressed pixels",
    "pixel_range": "many voxels at the top of the HU range (wrong rescale?)",
    "duplicate_position": "duplicate slices dropped",
    "bad_intercept": "rescale intercept fixed or slices with an invalid rescale",
    "missing_rescale": "slices without RescaleSlope/Intercept",
    "skipped_slices": "slices skipped",
    "failed": "the series could not be read",
}


def _qa_html(pv: Provenance) -> str:
  """The series' QA flags under the header (each with its meaning), and a warning when the
  head-CT check failed (a report made with --norequire_head)."""
  esc = html.escape
  items = "; ".join(f'<span class="qa-flag"><code>{esc(f)}</code> '
                   f'({esc(QA_MEANINGS.get(f, "see ctjax.data.qa"))})</span>'
                   for f in pv.qa_flags)
  warn = ""
  if pv.head.startswith("not a head CT"):
    warn = (f'<p class="qa-warn"><b>{esc(pv.head)}.</b> The model was trained on head CT; its '
            "outputs for this series mean nothing.</p>")
  if not items:
    return (f'<div class="qa ok" id="qa-flags">{warn}Series QA: no flags '
            f'(ctjax.data.qa).</div>')
  return f'<div class="qa" id="qa-flags">{warn}Series QA flags: {items}.</div>'


def _fmt_num(x: Any, digits: int = 3) -> str:
  try:
    return f"{float(x):.{digits}g}"
  except (TypeError, ValueError):
    return str(x)


def render_report_html(images: np.ndarray, attention: np.ndarray, highlight: np.ndarray,
                       predictions: Sequence[Prediction], provenance: Provenance, *,
                       scale: Optional[HighlightScale] = None,
                       num_key: int = keyslice.TOP_K,
                       title: str = "Head CT — key-slice report") -> str:
  """One self-contained HTML page (pure: same inputs → same bytes).

  Args:
    images: display images of the m sampled slices, `[m, H, W]` (grayscale) or `[m, H, W, 3]`,
      uint8 or float in [0, 1] (already windowed for display).
    attention: slice attention `[m]` (softmax over slices).
    highlight: raw highlight maps `[m, h, w]` (the model's `highlight` output, its own units)
      at any resolution (upsampled to the image).
    predictions: one `Prediction` per label.
    provenance: scan and model provenance.
    scale: the run's fixed highlight scale (`ctjax.inference.scan_reports.highlight_scale(run)`); None: the
      highlighted area is not drawn and the page says so.
    num_key: how many key slices to enlarge (the paper's 5).
  """
  images = np.asarray(images)
  attention = np.asarray(attention, np.float64).reshape(-1)
  highlight = np.asarray(highlight)
  m = images.shape[0]
  if images.ndim not in (3, 4) or attention.shape != (m,) or highlight.ndim != 3 \
      or highlight.shape[0] != m:
    raise ValueError(f"images {images.shape}, attention {attention.shape} and highlight "
                     f"{highlight.shape} must be [m,H,W(,3)], [m] and [m,h,w] with one m")
  pix = _to_uint8(images)
  top = [int(i) for i in keyslice.top_k_indices(attention, num_key)]
  src = list(provenance.slice_index) or list(range(m))
  esc = html.escape

  # Strip of all sampled slices.
  thumbs = []
  for i in range(m):
    key = top.index(i) + 1 if i in top else 0
    badge = f'<span class="badge">{key}</span>' if key else ""
    thumbs.append(
        f'<figure class="thumb{" key" if key else ""}" data-slice="{i}" '
        f'title="sampled slice {i + 1} (source slice {int(src[i]) + 1}), attention '
        f'{attention[i]:.4f}"><img alt="slice {i + 1}" '
        f'src="{_png_data_uri(_resize(pix[i], THUMB_PX))}">'
        f'{badge}</figure>')
  ticks = "".join(f'<span>{i + 1}</span>' for i in range(m))

  # Enlarged key slices with toggleable overlay, and the patient's sides (radiological view).
  oriented = "orientation_unknown" not in provenance.qa_flags
  markers = ('<span class="mk mk-r" title="patient right">R</span><span class="mk mk-l" '
             'title="patient left">L</span><span class="mk mk-a" title="anterior">A</span>'
             '<span class="mk mk-p" title="posterior">P</span>') if oriented else ""
  cards = []
  for r, i in enumerate(top):
    big = _resize(pix[i], KEY_PX)
    overlay, peak = "", "peak highlight — (no scale)"
    if scale is not None:
      over = heat_overlay(highlight[i], big.shape[:2], scale)
      overlay = (f'<img class="overlay" alt="highlighted area, key slice {r + 1}" '
                 f'src="{_png_data_uri(over)}">')
      rel = float(np.nanmax(scale.relative(highlight[i]))) if highlight[i].size else 0.0
      peak = f"peak highlight {rel:.2f}" + (" (below the floor: none drawn)"
                                            if rel <= scale.floor else "")
    cards.append(
        f'<figure class="key-slice" data-slice="{i}">'
        f'<div class="stack"><img class="base" alt="key slice {r + 1}" src="{_png_data_uri(big)}">'
        f'{overlay}{markers}</div>'
        f'<figcaption><b>#{r + 1}</b> sampled slice {i + 1} · source slice {int(src[i]) + 1}'
        f'<br>attention {attention[i]:.4f} ({attention[i] * m:.2f}× uniform)'
        f' · {peak}</figcaption></figure>')

  # Predictions.
  rows = []
  for p in predictions:
    pct = 100.0 * float(p.probability)
    rows.append(
        f'<tr class="{"above" if p.above else "below"}"><td>{esc(p.name)}</td>'
        f'<td class="num">{float(p.probability):.3f}</td>'
        f'<td class="barcell"><div class="pbar"><div class="fill" style="width:{pct:.1f}%"></div>'
        f'<div class="thr" style="left:{100.0 * float(p.threshold):.1f}%"></div></div></td>'
        f'<td class="num">{float(p.threshold):.2f}</td>'
        f'<td>{"above threshold" if p.above else "below threshold"}</td></tr>')

  pv = provenance
  spacing = (" × ".join(f"{float(s):.3g}" for s in pv.spacing_mm) + " mm") if pv.spacing_mm \
      else "—"
  scan_rows = [
      ("Patient ID", pv.patient_id),
      ("Scan folder", pv.scan_path), ("Series instance UID", pv.series_uid),
      ("Study instance UID", pv.study_uid), ("Series description", pv.series_description),
      ("Reconstruction kernel", pv.kernel),
      ("Slice thickness", f"{pv.slice_thickness} mm" if pv.slice_thickness else ""),
      ("Study date", _date(pv.study_date)),
      ("Slices in series", str(pv.num_source_slices) if pv.num_source_slices else "—"),
      ("Sampled slices", f"{m} (source slices {', '.join(str(int(s) + 1) for s in src)})"),
      ("Voxel spacing (z × y × x)", spacing),
      ("Source volume", " × ".join(str(int(s)) for s in pv.source_shape) or "—"),
      ("Model windows (level/width HU)", pv.model_windows), ("Display window", pv.display_window),
      ("Orientation", "radiological: the patient's right on the viewer's left, anterior at the "
       "top" if oriented else "unknown (no ImageOrientationPatient): drawn as stored"),
      ("Head-CT check", pv.head), ("QA flags", ", ".join(pv.qa_flags) or "none"),
  ]
  step = "—" if pv.checkpoint_step is None else str(pv.checkpoint_step)
  model_rows = [
      ("Model", pv.model_name), ("Config", pv.config_name), ("Checkpoint step", step),
      ("Run directory", pv.workdir), ("Model input", pv.model_input),
      ("Analysis time (read, sample, model)",
       "—" if pv.report_seconds is None else f"{pv.report_seconds:.2f} s"),
      ("Created", pv.created),
      ("Highlight scale", "none stored (not drawn)" if scale is None else
       f"1.0 = {scale.reference:.4g} (model units), floor {scale.floor:.2f}; " + (
           f"fitted on {scale.num_positive + scale.num_negative} {scale.split} scans"
           + ("" if scale.step is None else f" at step {scale.step}")
           if scale.num_positive + scale.num_negative else scale.basis)),
  ] + [(str(k), str(v)) for k, v in pv.extra.items()]

  def kv(rows_):
    return "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v)) if v else '—'}</td></tr>"
                   for k, v in rows_)

  above = [p.name for p in predictions if p.above]
  summary = (f"{len(above)} of {len(predictions)} labels above threshold: "
             f"{', '.join(above)}" if above else
             f"No label above threshold ({len(predictions)} labels).")
  ident = [("Patient ID", pv.patient_id or "—"), ("Study date", _date(pv.study_date) or "—"),
           ("Series", pv.series_description or "—")]
  series = "".join(f'<span class="id-item"><span class="id-key">{esc(k)}</span> {esc(v)}</span>'
                   for k, v in ident)
  series += f'<div class="uid">Series UID {esc(pv.series_uid or pv.scan_path or "—")}</div>'
  return _PAGE.format(
      title=esc(title), css=_CSS, js=_JS, disclaimer=esc(DISCLAIMER),
      series=series, qa=_qa_html(pv), summary=esc(summary), m=m,
      opacity=OVERLAY_OPACITY, orient_hint=esc(
          " Radiological view: R = the patient's right (on the viewer's left), A = anterior."
          if oriented else " Orientation unknown: drawn as stored, no R/L markers."),
      num_key=len(top), thumbs="".join(thumbs), ticks=ticks,
      histogram=_histogram_svg(attention, top), peak=f"{attention.max():.4f}" if m else "0",
      cards="".join(cards), scale=_scale_html(scale), evidence=_evidence_html(predictions),
      pred_rows="".join(rows), scan_rows=kv(scan_rows),
      model_rows=kv(model_rows))


_CSS = """
:root{--overlay-opacity:1;--accent:#0b5cad;--key:#d9480f;--ink:#1d2433;--muted:#5b6475;
--line:#dde2ea;--bg:#f4f6f9}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--ink);background:var(--bg)}
header{background:#16213a;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:20px;font-weight:600;letter-spacing:.2px}
header .sub{color:#b8c2d6;font-size:12.5px;margin-top:4px;overflow-wrap:anywhere}
header .id-item{display:inline-block;margin-right:22px;color:#fff;font-size:14px}
header .id-key{color:#b8c2d6;font-size:12px;margin-right:2px}
header .uid{margin-top:3px}
.qa{border:1px solid #e0b252;background:#fffaf0;color:#5c4300;border-radius:6px;
padding:6px 14px;margin-bottom:14px;font-size:12.5px}
.qa.ok{border-color:var(--line);background:#fff;color:var(--muted)}
.qa code{font-weight:600}
.qa-warn{color:#b02a1a;margin:0 0 6px}
.stack .mk{position:absolute;color:#fff;font:600 15px/1 Arial,sans-serif;
text-shadow:0 0 3px #000,0 0 2px #000;pointer-events:none}
.mk-r{left:6px;top:50%;transform:translateY(-50%)}.mk-l{right:6px;top:50%;
transform:translateY(-50%)}.mk-a{top:6px;left:50%;transform:translateX(-50%)}
.mk-p{bottom:6px;left:50%;transform:translateX(-50%)}
main{max-width:1240px;margin:0 auto;padding:20px 32px 40px}
.disclaimer{border:1px solid #e0b252;background:#fff7e3;color:#5c4300;border-radius:6px;
padding:10px 14px;margin-bottom:18px}
.disclaimer b{color:#8a5a00}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;
margin-bottom:18px}
h2{font-size:15px;margin:0 0 10px;font-weight:600}
h2 .hint{font-weight:400;color:var(--muted);font-size:12.5px;margin-left:8px}
.seq{max-width:calc(var(--m) * 112px)}
.strip,.ticks{display:grid;grid-template-columns:repeat(var(--m),1fr);gap:2px}
.thumb{margin:0;position:relative;background:#000;border:2px solid transparent;border-radius:3px;
overflow:hidden}
.thumb img{display:block;width:100%;height:auto}
.thumb.key{border-color:var(--key)}
.badge{position:absolute;top:1px;left:1px;background:var(--key);color:#fff;font-size:10px;
font-weight:700;padding:0 4px;border-radius:2px}
.histogram{display:block;width:100%;height:120px;margin-top:6px;background:
linear-gradient(#eef1f5 1px,transparent 1px) 0 0/100% 25%;border-bottom:1px solid #9aa3b2}
.histogram .bar{fill:#8aa7c9}.histogram .bar.key{fill:var(--key)}
.histogram .uniform{stroke:#5b6475;stroke-width:.6;stroke-dasharray:2 2;
vector-effect:non-scaling-stroke}
.ticks span{font-size:10px;color:var(--muted);text-align:center}
.legend{font-size:12px;color:var(--muted);margin-top:6px}
.legend i{display:inline-block;width:10px;height:10px;margin:0 4px -1px 10px;border-radius:2px}
.controls{display:flex;gap:22px;align-items:center;margin-bottom:12px;font-size:13px}
.keys{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:14px}
.key-slice{margin:0}
.stack{position:relative;background:#000;border-radius:4px;overflow:hidden;line-height:0}
.stack img{width:100%;height:auto;display:block}
.stack .overlay{position:absolute;inset:0;opacity:var(--overlay-opacity);
transition:opacity .15s}
body.hide-highlight .stack .overlay{display:none}
figcaption{font-size:12px;color:var(--muted);margin-top:6px}
figcaption b{color:var(--key)}
table{border-collapse:collapse;width:100%}
td,th{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
.preds th{font-size:12px;color:var(--muted);font-weight:600}
.preds td.num{text-align:right;font-variant-numeric:tabular-nums;width:70px}
.preds tr.above td:first-child{font-weight:600}
.preds tr.above td:last-child{color:#b02a1a;font-weight:600}
.preds tr.below td:last-child{color:var(--muted)}
.barcell{width:40%}
.pbar{position:relative;height:10px;background:#e9edf3;border-radius:5px;margin-top:5px}
.pbar .fill{height:100%;background:var(--accent);border-radius:5px}
tr.above .pbar .fill{background:#c92a2a}
.pbar .thr{position:absolute;top:-3px;width:2px;height:16px;background:var(--ink)}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.kv th{width:38%;color:var(--muted);font-weight:500;font-size:12.5px}
.kv td{overflow-wrap:anywhere;font-size:12.5px}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:8px}
.hl-scale{margin:0 0 10px;max-width:420px;font-size:12px;color:var(--muted)}
.hl-scale .colorbar{display:block;width:100%;height:16px;border:1px solid #9aa3b2;
image-rendering:pixelated}
.cb-ticks{position:relative;height:16px}
.cb-ticks span{position:absolute;transform:translateX(-50%);white-space:nowrap;font-size:11px}
.cb-ticks span:first-child{transform:none}.cb-ticks span:last-child{transform:translateX(-100%)}
.cb-basis{margin-top:2px}
.hl-note{font-size:12.5px;margin:0 0 12px;max-width:900px}
.hl-note .no-call{color:#0b5cad}
.hl-missing{font-size:12.5px;color:#8a5a00;background:#fff7e3;border:1px solid #e0b252;
border-radius:6px;padding:8px 12px}
@media (max-width:800px){.grid2{grid-template-columns:1fr}}
"""

_JS = """
(function(){
  var box=document.getElementById('toggle-highlight');
  var alpha=document.getElementById('highlight-opacity');
  function sync(){document.body.classList.toggle('hide-highlight',!box.checked);}
  box.addEventListener('change',sync);
  alpha.addEventListener('input',function(){
    document.documentElement.style.setProperty('--overlay-opacity',String(alpha.value/100));
  });
  sync();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title><style>{css}</style></head>
<body>
<header><h1>{title}</h1><div class="sub" id="identity">{series}</div></header>
<main>
<div class="disclaimer" id="disclaimer"><b>{disclaimer}</b></div>
{qa}
<section id="predictions"><h2>Model output per label<span class="hint">{summary}</span></h2>
<table class="preds"><thead><tr><th>label</th><th>probability</th><th></th><th>threshold</th>
<th>call</th></tr></thead><tbody>{pred_rows}</tbody></table></section>
<section id="sequence"><h2>All {m} sampled slices and their slice attention
<span class="hint">orange: the {num_key} most attended (key) slices; dashed line: uniform
attention 1/{m}; tallest bar = {peak}</span></h2>
<div class="seq" style="--m:{m}"><div class="strip">{thumbs}</div>
{histogram}
<div class="ticks">{ticks}</div></div></section>
<section id="key-slices"><h2>Key slices<span class="hint">the {num_key} most attended slices,
most attended first, with the model's highlighted area.{orient_hint}</span></h2>
<div class="controls"><label><input type="checkbox" id="toggle-highlight" checked> show
highlighted area</label><label>overlay opacity <input type="range" id="highlight-opacity"
min="0" max="100" value="{opacity}"></label></div>
{scale}{evidence}
<div class="keys">{cards}</div></section>
<div class="grid2"><section id="scan-provenance"><h2>Scan</h2><table class="kv">{scan_rows}
</table></section><section id="model-provenance"><h2>Model</h2><table class="kv">{model_rows}
</table></section></div>
<footer>Generated by ctjax.report · self-contained file, no external resources.</footer>
</main><script>{js}</script></body></html>
"""


def _date(text: str) -> str:
  """DICOM DA 'YYYYMMDD' → 'YYYY-MM-DD' (anything else as given)."""
  t = (text or "").strip()
  return f"{t[:4]}-{t[4:6]}-{t[6:]}" if len(t) == 8 and t.isdigit() else t


def describe_windows(spec: Any) -> str:
  """'rsna3: brain 40/80, subdural 80/200, soft_tissue 40/380' for a preset or (level, width) list."""
  from ctjax.data.windows import PRESETS, resolve_windows
  names = {v[0]: k for k, v in PRESETS.items() if len(v) == 1}
  parts = [f"{names.get(w, 'window')} {w[0]:g}/{w[1]:g}" for w in resolve_windows(spec)]
  if isinstance(spec, str) and spec in names.values():
    return ", ".join(parts)
  return (f"{spec}: " if isinstance(spec, str) else "") + ", ".join(parts)


def thresholds(config: Any, n: int) -> list[float]:
  thr = config.get("evals", {}).get("threshold", 0.5) if hasattr(config, "get") else 0.5
  if isinstance(thr, (int, float)):
    return [float(thr)] * n
  thr = [float(t) for t in thr]
  return thr if len(thr) == n else [thr[0]] * n


def render_index_html(results: Sequence[Any], out_dir: str | os.PathLike,
                      skipped: Sequence[Any] = ()) -> str:
  """The batch index: one row per scan with a link to its report, failures with their reason,
  and the series the series policy left out (`skipped`: objects with scan_path, series_uid,
  reason)."""
  esc = html.escape
  rows = []
  for r in results:
    if getattr(r, "message", None) is not None:   # ctjax.inference.scan_reports.ReportFailure
      rows.append(f'<tr class="failed"><td class="path">{esc(r.scan_path)}</td>'
                  f'<td class="uid">{esc(r.series_uid) or "—"}'
                  f'</td><td colspan="4">not reported: {esc(r.message)}</td></tr>')
      continue
    link = os.path.relpath(r.out_path, out_dir)
    above = [f"{p.name} {p.probability:.2f}" for p in r.predictions if p.above]
    rows.append(
        f'<tr><td><a href="{esc(link)}">{esc(pathlib.Path(r.out_path).stem)}</a>'
        f'<div class="path">{esc(r.scan_path)}</div></td><td class="uid">{esc(r.series_uid)}</td>'
        f'<td class="num">{r.num_source_slices}</td>'
        f'<td>{esc(", ".join(above)) or "none"}</td>'
        f'<td>{esc(", ".join(str(i + 1) for i in r.key_slices))}</td>'
        f'<td class="num">{r.seconds:.2f} s</td></tr>')
  for r in skipped:
    rows.append(f'<tr class="skipped"><td class="path">{esc(r.scan_path)}</td>'
                f'<td class="uid">{esc(r.series_uid) or "—"}</td>'
                f'<td colspan="4">not reported (series policy): {esc(r.reason)}</td></tr>')
  ok = sum(getattr(r, "message", None) is None for r in results)
  return _INDEX.format(css=_CSS, disclaimer=esc(DISCLAIMER), rows="".join(rows), ok=ok,
                       failed=len(results) - ok, skipped=len(skipped))


_INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>Head CT key-slice reports</title><style>{css}
.index td{{font-size:13px}} .index .uid,.index .path{{overflow-wrap:anywhere}}
.index .uid{{width:24%;font-size:12px;color:#5b6475}}
.index div.path{{font-size:11.5px;color:#5b6475}}
.index th{{font-size:12px;color:#5b6475;font-weight:600}} tr.failed td{{color:#b02a1a}}
td.num{{text-align:right;white-space:nowrap}} tr.skipped td{{color:#5b6475}}</style></head><body>
<header><h1>Head CT key-slice reports</h1><div class="sub">{ok} reported, {failed} failed,
{skipped} left out by the series policy</div>
</header><main><div class="disclaimer"><b>{disclaimer}</b></div>
<section><table class="index"><thead><tr><th>scan</th><th>series UID</th><th>slices</th>
<th>labels above threshold</th><th>key slices (sampled)</th><th>time</th></tr></thead>
<tbody>{rows}</tbody></table></section></main></body></html>
"""
