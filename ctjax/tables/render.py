"""A table's rows from its cells, with their uncertainty, next to the paper's numbers; written
as Markdown + CSV (+ the PNG figures, matplotlib).

Each figure of ours is, over k >= 2 folds, "mean ± sd [lo, hi]": the mean over the folds'
test splits, the sample sd, and the t-based 95 % CI of the mean (`ctjax.eval.stats.
fold_interval`), clipped to the metric's range [0, 1] and marked ‡ where it passed it; with
one fold, "value [lo, hi]": that fold's seeded scan-level bootstrap 95 % CI, or "value [too
few positives]" where too many resamples lost a label's positives (`stats.MAX_DEGENERATE_SHARE`).
Every cell's own figure and bootstrap CI is in `<table>_cells.csv`. Comparisons of two rows
(`compare`) give the plain paired t-test over folds (`stats.paired_t_test`, the DrCT2 paper's
section VII test), Nadeau & Bengio's corrected resampled t-test beside it
(`stats.corrected_t_test`: the folds' training sets overlap), and the paired bootstrap of the
difference on the folds' pooled test scans (`stats.paired_multilabel_bootstrap` /
`paired_multiclass_bootstrap`). A difference is "resolved" when the corrected test's 95 % CI
excludes 0 (one fold: the bootstrap CI).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import pathlib
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ctjax.eval import stats
from ctjax.eval.uncertainty import ci_status
from ctjax.tables.grid import CellResult

CLIPPED = "‡"
CLIPPED_NOTE = (f"{CLIPPED} The t-interval over the folds passed the metric's range [0, 1] and "
                "is clipped at the bound.")
TOO_FEW_NOTE = (f"[{stats.TOO_FEW_POSITIVES}]: more than "
                f"{100 * stats.MAX_DEGENERATE_SHARE:.0f} % of the bootstrap resamples lost every "
                "positive (or negative) scan of some label; an interval from the remaining "
                "resamples would rest on that label's only scan (it can even be a single "
                "value), so none is given.")


def num(x: Optional[float], digits: int = 3) -> str:
  return "—" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"


@dataclasses.dataclass
class Figure:
  """One of our figures over a row's cells (a metric over folds)."""
  values: list[float]
  fold: stats.FoldInterval
  boot: tuple[float, float]          # the bootstrap CI when there is one fold
  boot_status: str = "ok"            # its status (stats.TOO_FEW_POSITIVES: no interval)

  def text(self, digits: int = 3) -> str:
    f = self.fold
    if f.n == 0:
      return "—"
    if f.n == 1:
      return stats.ci_text(f.mean, *self.boot, self.boot_status, digits=digits)
    mark = CLIPPED if f.clipped else ""
    return (f"{f.mean:.{digits}f} ± {f.sd:.{digits}f} [{f.lo:.{digits}f}, "
            f"{f.hi:.{digits}f}]{mark}")

  def note(self) -> str:
    """"clipped", the bootstrap's status, or "" (the CSV's `<prefix>_ci_note`)."""
    if self.fold.n > 1:
      return "clipped" if self.fold.clipped else ""
    return "" if self.boot_status == "ok" else self.boot_status


def figure(results: Sequence[CellResult], key: str,
           value_fn: Optional[Callable[[CellResult], float]] = None,
           bounds: Optional[tuple[float, float]] = stats.UNIT_RANGE) -> Figure:
  """`key` of each cell (or `value_fn(cell)`), aggregated over the cells (folds); `bounds` the
  metric's range (the t-interval is clipped to it; None: unbounded)."""
  values = [value_fn(r) if value_fn else r.scalar(key) for r in results]
  boot, status = (math.nan, math.nan), "ok"
  if len(results) == 1 and value_fn is None:
    got = (results[0].report.get("ci95") or {}).get(key)
    if got:
      status = ci_status(got)
      if status == "ok":
        boot = (_float(got.get("lo")), _float(got.get("hi")))
  return Figure(values, stats.fold_interval(values, bounds=bounds), boot, status)


def _float(x) -> float:
  """A stored bound (JSON writes NaN as null) as a float."""
  return math.nan if x is None else float(x)


def test_train_ratio(config) -> float:
  """n_test / n_train of a fold under the config's fold protocol (nominal shares, patients
  dealt evenly): the corrected t-test's ratio (`ctjax.data.datasets.split_shares`)."""
  from ctjax.data import cache, datasets
  shares = datasets.split_shares(str(cache.data_option(config, "fold_protocol")),
                                 int(cache.data_option(config, "num_folds")),
                                 float(cache.data_option(config, "val_fraction")))
  return shares["test"] / shares["train"]


def protocol_text(config) -> str:
  """How fold k's splits were made, for a table's text."""
  from ctjax.data import cache, datasets
  return datasets.protocol_text(str(cache.data_option(config, "fold_protocol")),
                                int(cache.data_option(config, "num_folds")),
                                float(cache.data_option(config, "val_fraction")))


@dataclasses.dataclass
class Table:
  """What one `python -m ctjax.tables NAME` writes."""
  name: str
  title: str
  command: str
  preset: str
  columns: list[str]
  rows: list[list[str]] = dataclasses.field(default_factory=list)
  csv_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  figures: list[str] = dataclasses.field(default_factory=list)
  cells: list[CellResult] = dataclasses.field(default_factory=list)
  wall_seconds: Optional[float] = None
  cell_keys: Sequence[str] = ()
  about: str = ""

  def markdown(self) -> str:
    out = [f"## {self.title}", "", "```", self.command, "```", ""]
    if self.about:
      out += [self.about, ""]
    out += [self.timing_line(), ""]
    if self.columns and self.rows:
      out.append("| " + " | ".join(self.columns) + " |")
      out.append("|" + "|".join("---" for _ in self.columns) + "|")
      out += ["| " + " | ".join(r) + " |" for r in self.rows]
      out.append("")
    notes = list(self.notes)
    text = "\n".join(" ".join(r) for r in self.rows) + "\n".join(notes)
    if CLIPPED in text:
      notes.append(CLIPPED_NOTE)
    if f"[{stats.TOO_FEW_POSITIVES}]" in text:
      notes.append(TOO_FEW_NOTE)
    for note in notes:
      out += [note, ""]
    for fig in self.figures:
      out += [f"![{fig}]({fig})", ""]
    return "\n".join(out).rstrip() + "\n"

  def timing_line(self) -> str:
    cell_s = sum(float(r.meta.get("wall_seconds", 0.0)) for r in self.cells)
    n = len({r.cell.key for r in self.cells})
    plural = "s" if n != 1 else ""
    text = (f"Preset `{self.preset}`: {n} cell{plural} ({_duration(cell_s)} of training and "
            "evaluation when they were made; cells shared with other tables are made once)")
    if self.wall_seconds is not None:
      text += f"; this command's wall time {_duration(self.wall_seconds)}"
    return text + "."

  def write(self, out_dir: pathlib.Path) -> list[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{self.name}.md"
    md.write_text(self.markdown())
    paths = [md]
    if self.csv_rows:
      paths.append(_write_csv(out_dir / f"{self.name}.csv", self.csv_rows))
    if self.cells:
      paths.append(_write_csv(out_dir / f"{self.name}_cells.csv", cell_rows(self.cells)))
    return paths + [out_dir / f for f in self.figures]


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def _write_csv(path: pathlib.Path, rows: Sequence[Mapping[str, Any]]) -> pathlib.Path:
  fields = list(dict.fromkeys(k for r in rows for k in r))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow({k: _csv_value(r.get(k)) for k in fields})
  path.write_text(buf.getvalue())
  return path


def _csv_value(v: Any) -> Any:
  if isinstance(v, float):
    return "" if not math.isfinite(v) else f"{v:.6g}"
  return "" if v is None else v


def cell_rows(cells: Sequence[CellResult]) -> list[dict[str, Any]]:
  """One row per cell: its key, command, wall time, and each CI'd figure with its bounds."""
  rows = []
  for r in sorted({c.cell.key: c for c in cells}.values(), key=lambda c: c.cell.key):
    row: dict[str, Any] = {"cell": r.cell.key, "config": r.cell.config_spec(),
                           "overrides": " ".join(f"{k}={v}" for k, v in r.cell.overrides),
                           "test_examples": r.report.get("num_examples"),
                           "step": r.meta.get("step"),
                           "wall_seconds": r.meta.get("wall_seconds")}
    for key, ci in (r.report.get("ci95") or {}).items():
      ok = ci_status(ci) == "ok"
      row[key] = ci["value"]
      row[f"{key}_lo"] = ci["lo"] if ok else None
      row[f"{key}_hi"] = ci["hi"] if ok else None
      row[f"{key}_status"] = ci_status(ci)
    cal = r.report.get("calibration") or {}
    if cal:
      row["ece_macro"] = cal["ece"]["macro"]
      if "rsna_weighted_log_loss" in cal:
        row["rsna_weighted_log_loss"] = cal["rsna_weighted_log_loss"]
    rows.append(row)
  return rows


def csv_figure(prefix: str, fig: Figure) -> dict[str, Any]:
  f = fig.fold
  return {f"{prefix}_mean": f.mean, f"{prefix}_sd": f.sd, f"{prefix}_lo": f.lo if f.n > 1
          else fig.boot[0], f"{prefix}_hi": f.hi if f.n > 1 else fig.boot[1],
          f"{prefix}_folds": f.n, f"{prefix}_ci_note": fig.note()}


# ------------------------------------------------------------------------------- comparisons


def pooled(results: Sequence[CellResult], keys: Sequence[str]) -> dict[str, np.ndarray]:
  """The cells' test predictions concatenated in fold order (the k test folds together are
  the whole data set, each scan once)."""
  order = sorted(results, key=lambda r: r.cell.fold)
  return {k: np.concatenate([r.predictions[k] for r in order]) for k in keys
          if all(k in r.predictions for r in order)}


def _same_scans(a: Sequence[CellResult], b: Sequence[CellResult]) -> bool:
  if sorted(r.cell.fold for r in a) != sorted(r.cell.fold for r in b):
    return False
  pa, pb = pooled(a, ["example_index"]), pooled(b, ["example_index"])
  return ("example_index" in pa and "example_index" in pb
          and np.array_equal(pa["example_index"], pb["example_index"]))


@dataclasses.dataclass
class Comparison:
  """Row a − row b on one metric: the plain paired t-test over the folds, Nadeau & Bengio's
  corrected one, and the paired bootstrap on the pooled test scans."""
  metric: str
  t_test: Optional[stats.PairedTTest]
  boot: Optional[stats.PairedBootstrapCI]
  corrected: Optional[stats.PairedTTest] = None

  def sign(self) -> int:
    """+1 / -1 when the difference is resolved — the corrected t-test's CI excludes 0 (over
    folds), or with one fold the bootstrap CI (unless too few positives) — else 0."""
    if self.corrected is not None:
      lo, hi = self.corrected.ci_low, self.corrected.ci_high
    elif self.t_test is None and self.boot is not None and self.boot.status == "ok":
      lo, hi = self.boot.lo, self.boot.hi
    else:
      return 0
    if not (math.isfinite(lo) and math.isfinite(hi)):
      return 0
    return 1 if lo > 0 else (-1 if hi < 0 else 0)

  def mean_diff(self) -> float:
    if self.t_test is not None:
      return self.t_test.mean_diff
    return self.boot.value if self.boot is not None else math.nan

  def basis(self) -> str:
    """What `sign` read: for the sentences that call a difference resolved or not."""
    if self.corrected is not None:
      return "corrected t-test CI"
    if self.t_test is None and self.boot is not None:
      return ("bootstrap CI" if self.boot.status == "ok"
              else f"bootstrap: {self.boot.status}")
    return "no test"


def compare(a: Sequence[CellResult], b: Sequence[CellResult], metrics: Sequence[str], *,
            kind: str, names: Sequence[str], test_train_ratio: float, threshold: float = 0.5,
            n_boot: int = 1000, seed: int = 0) -> list[Comparison]:
  """Plain and corrected paired t-tests over the folds both rows have (>= 2; `test_train_ratio`
  = n_test / n_train of a fold, `test_train_ratio(config)`) and the paired bootstrap on their
  pooled test scans (same scans on both sides), for each metric."""
  by_fold_a = {r.cell.fold: r for r in a}
  by_fold_b = {r.cell.fold: r for r in b}
  common = sorted(set(by_fold_a) & set(by_fold_b))
  ra, rb = [by_fold_a[f] for f in common], [by_fold_b[f] for f in common]
  boots: dict[str, stats.PairedBootstrapCI] = {}
  if common and _same_scans(ra, rb) and n_boot > 0:
    label_key = "labels" if kind == "drct" else "label"
    pa, pb = pooled(ra, [label_key, "probs"]), pooled(rb, ["probs"])
    if kind == "drct":
      boots = stats.paired_multilabel_bootstrap(pa[label_key], pa["probs"], pb["probs"], names,
                                                keys=tuple(metrics), threshold=threshold,
                                                n_boot=n_boot, seed=seed)
    else:
      boots = stats.paired_multiclass_bootstrap(pa[label_key], pa["probs"], pb["probs"], names,
                                                keys=tuple(metrics), n_boot=n_boot, seed=seed)
  out = []
  for m in metrics:
    t = corrected = None
    if len(common) >= 2:
      va = [r.scalar(m) for r in ra]
      vb = [r.scalar(m) for r in rb]
      if all(math.isfinite(x) for x in va + vb):
        t = stats.paired_t_test(va, vb)
        corrected = stats.corrected_t_test(va, vb, test_train_ratio=test_train_ratio)
    out.append(Comparison(m, t, boots.get(m), corrected))
  return out


def t_text(t: stats.PairedTTest, *, with_ci: bool = True) -> str:
  """"+0.074 [+0.040, +0.108], P = 0.0038" of one t-test."""
  ci = f" [{t.ci_low:+.3f}, {t.ci_high:+.3f}]" if with_ci else ""
  return f"{t.mean_diff:+.3f}{ci}, P {p_text(t.p)}"


def boot_text(b: stats.PairedBootstrapCI) -> str:
  if b.status != "ok":
    return f"{b.value:+.3f} [{b.status}]"
  return f"{b.value:+.3f} [{b.lo:+.3f}, {b.hi:+.3f}], bootstrap P {p_text(b.p_value)}"


def comparison_text(label_a: str, label_b: str, comps: Sequence[Comparison],
                    metric_names: Mapping[str, str], *, paper: Optional[Mapping[str, float]] = None,
                    paper_p: Optional[Mapping[str, float]] = None, paper_source: str = "",
                    unit: str = "scans") -> str:
  """A Markdown paragraph: Δ = a − b per metric with the plain and corrected t-tests over the
  folds, the pooled bootstrap, the paper's Δ (and P), and whether the order agrees with it."""
  parts = []
  for c in comps:
    name = metric_names.get(c.metric, c.metric)
    bits = []
    if c.t_test is not None:
      bits.append(f"{c.t_test.mean_diff:+.3f} over {c.t_test.n} folds: paired t-test "
                  f"[{c.t_test.ci_low:+.3f}, {c.t_test.ci_high:+.3f}], P {p_text(c.t_test.p)}")
    if c.corrected is not None:
      bits.append(f"corrected t-test [{c.corrected.ci_low:+.3f}, {c.corrected.ci_high:+.3f}], "
                  f"P {p_text(c.corrected.p)}")
    if c.boot is not None:
      bits.append(f"pooled test {unit} {boot_text(c.boot)}")
    text = f"Δ{name}: " + ("; ".join(bits) if bits else "n/a")
    if paper and c.metric in paper:
      text += f"; paper {paper[c.metric]:+.4f}"
      if paper_p and c.metric in paper_p:
        text += f" (P = {paper_p[c.metric]:.5f}{', ' + paper_source if paper_source else ''})"
      text += " — " + ordering(c, paper[c.metric], label_a, label_b)
    parts.append(text)
  return f"**{label_a} − {label_b}.** " + " · ".join(parts) + "."


def ordering(c: Comparison, paper_diff: float, label_a: str, label_b: str) -> str:
  paper_sign = 1 if paper_diff > 0 else (-1 if paper_diff < 0 else 0)
  ours = c.sign()
  basis = c.basis()
  if ours == 0:
    d = c.mean_diff()
    lean = (f"{label_a} ≥ {label_b}" if d >= 0 else f"{label_a} < {label_b}") if math.isfinite(
        d) else "no figure"
    if basis.startswith("bootstrap:"):
      return f"not resolved here ({basis}; point estimate {lean})"
    return f"not resolved here ({basis} includes 0; point estimate {lean})"
  if ours == paper_sign:
    return f"same order as the paper ({basis} excludes 0)"
  return (f"**order differs from the paper**: {label_b} > {label_a} here ({basis} excludes 0)"
          if ours < 0 else f"**order differs from the paper**: {label_a} > {label_b} here "
          f"({basis} excludes 0)")


def p_text(p: float) -> str:
  """"= 0.28", "= 0.0499", "< 0.001" (after a "P"): three significant digits below 0.1, so
  that a P near 0.05 is not rounded onto it."""
  if not math.isfinite(p):
    return "n/a"
  if p < 1e-3:
    return "< 0.001"
  return f"= {p:.2g}" if p >= 0.1 else f"= {p:.3g}"


# -------------------------------------------------------------------------------- matplotlib


def new_figure(width: float = 5.0, height: float = 3.6, ncols: int = 1):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure as MplFigure
  fig = MplFigure(figsize=(width, height))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, ncols)
  return fig, axes


def save(fig, path: pathlib.Path) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path.name
