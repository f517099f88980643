"""The DrCT2 paper's tables and figures (section VI.A) as grids of cells.

  python -m ctjax.tables drct2 --preset cpu --workdir runs/tables      # every one below

| name | the paper's | cells |
|---|---|---|
| `drct2_per_label` | DrCT2 per label, its heads, key-slice tasks, calibration (RSNA; cpu: the README's main job) | Table 3's RSNA DrCT2 |
| `drct2_table1` | Table 1: the data sets (+ Fleiss' κ of CQ500's three readers per label) | none |
| `drct2_table2` | Table 2: MSE vs BCE for the primary and APS losses, both data sets | DrCT2 MSE / BCE |
| `drct2_table3` | Table 3: DrCT1 vs DrCT2 on both data sets (+ the section VII t-tests) | DrCT1 / DrCT1 BCE head / DrCT2 |
| `drct2_table4` | Table 4: DrCT1 original / high-resolution input / model fusion; DrCT2 APS 224 vs 512 (CQ500) | 5 variants |
| `drct2_table5_6` | Tables 5 and 6: key-slice tasks, per disease (RSNA) | Table 3's RSNA cells |
| `drct2_table7` | Table 7's DrCT rows (RSNA) | Table 3's RSNA cells |
| `drct2_figure5` | Figure 5: precision and recall over training (CQ500) | Table 3's CQ500 DrCT2 |
| `drct2_figure6` | Figure 6: mkey 4…28, attention vs random selection (CQ500) | 13 variants + DrCT2 |
| `drct2_figure7` | Figure 7: histogram of the top-5 attended slice positions (CQ500 diseased scans) | Table 3's CQ500 DrCT2 |

Presets (`DATASETS`): `paper` is the paper's setting (configs/drct2_rsna.py and
configs/drct2_cq500.py, 5 and 10 folds, on the user's data: `--rsna_root`, `--cq500_root`, and
`--override model.backbone_weights=…`); `cpu` is its analogue on generated phantoms in the RSNA
and CQ500 layouts (configs/drct2_phantom.py and its shipped phantom-pretrained backbone), fold 0
of each data set (`--folds` runs others; the measured wall times are in docs/tables.md and
`python -m ctjax.tables --list`); `smoke` runs the same grids with `runlocal` cells on tiny
phantoms (seconds a cell; figures meaningless) to check the machinery.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ctjax.errors import ConfigError, CTDataError
from ctjax.eval import keyslice, stats
from ctjax.tables import render
from ctjax.tables.grid import Cell, CellResult, Context, Spec, folds_of

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ the paper's numbers (once)
# DrCT2 paper ("A diagnostic model based on key slice…"), section VI.A. Precision and recall
# as fractions (the paper prints percentages), F1 as printed.
PAPER_TABLE1 = {   # Table 1: data distribution of CQ500 and RSNA (scans by label: sequence level)
    "cq500": {"patients": 490, "scans": 1181, "labels": 9, "slices": "32-396", "m": 32,
              "counts": {"ich": 701, "iph": 356, "ivh": 72, "sdh": 102, "edh": 20, "sah": 128,
                         "fracture": 181, "mass_effect": 248, "midline_shift": 173}},
    "rsna": {"patients": 18923, "scans": 21540, "labels": 6, "slices": "21-60", "m": 28,
             "counts": {"any": 7855, "intraparenchymal": 4688, "intraventricular": 3236,
                        "subdural": 3388, "epidural": 309, "subarachnoid": 3468}},
}
PRF = ("macro_precision", "macro_recall", "macro_f1")
PAPER_TABLE2 = {   # Table 2: loss of the primary and APS networks (fusion: BCE)
    ("cq500", "bce"): (0.9423, 0.9394, 0.9360), ("cq500", "drct2"): (0.9429, 0.9410, 0.9370),
    ("rsna", "bce"): (0.8793, 0.8810, 0.8682), ("rsna", "drct2"): (0.8805, 0.8823, 0.8700),
}
PAPER_TABLE3 = {   # Table 3: DrCT1 vs DrCT2
    ("cq500", "drct1"): (0.9310, 0.9314, 0.9262), ("cq500", "drct2"): (0.9429, 0.9410, 0.9370),
    ("rsna", "drct1"): (0.8751, 0.8783, 0.8650), ("rsna", "drct2"): (0.8805, 0.8823, 0.8700),
}
# Section VII: "t-test … The P-values for precision, recall, and F1 scores are 0.01940, 0.04971,
# and 0.02634" (DrCT2 vs DrCT1 "on the CQ500 and RSNA datasets").
PAPER_P_DRCT1_VS_DRCT2 = dict(zip(PRF, (0.01940, 0.04971, 0.02634)))
PAPER_TABLE4 = {   # Table 4 (CQ500): strategies for DrCT1 and DrCT2
    "drct1": (0.9310, 0.9314, 0.9262),     # original, primary 224
    "hires": (0.9170, 0.9139, 0.9105),     # high-resolution input, primary 512
    "fusion": (0.9257, 0.9227, 0.9179),    # model fusion: slices 16-22 at 512
    "aps_low": (0.9396, 0.9362, 0.9327),   # DrCT2, APS 224
    "drct2": (0.9429, 0.9410, 0.9370),     # DrCT2, APS 512
}
PAPER_TABLE7_RSNA1 = (0.9359, 0.9303, 0.9265)   # Table 7: RSNA-1, the challenge's winner
# Section VI.A.3 (Figure 6): mkey from 4 to 28; "the best results were achieved when 16 images
# were selected"; attention beats random selection "under a different number of slices".
FIGURE6_MKEYS = (4, 8, 12, 16, 20, 24, 28)
PAPER_FIGURE6_BEST_MKEY = 16
# Section VI.A.3 (Figure 7): top-5 attended slices of CQ500's 744 diseased scans "are often
# concentrated from the 16th to the 22nd slices" (1-based, of 32).
PAPER_FIGURE7_RANGE = (16, 22)
PAPER_FIGURE7_SCANS = 744

METRIC_NAMES = {"macro_precision": "precision", "macro_recall": "recall", "macro_f1": "F1",
                "macro_auc": "AUC"}


# ------------------------------------------------------------------------------- the presets


@dataclasses.dataclass(frozen=True)
class DataSet:
  """One data set of a preset: its base config (file + argument + overrides), the folds its
  tables run by default (`folds`; `--folds` picks others among the data set's `num_folds`), the
  `base` the Table 4 configs build on (configs/drct1_fusion.py), and a label for tables."""
  name: str
  label: str
  config_file: str
  config_arg: str
  folds: tuple[int, ...]
  fusion_base: str
  num_folds: int
  overrides: tuple[tuple[str, Any], ...] = ()


_SMOKE = (("data.synth.size", 64), ("evals.highlight_scale_split", ""),
          ("train.max_steps", 2), ("checkpoint.every_steps", 2))
DATASETS: dict[str, dict[str, DataSet]] = {
    "paper": {   # every fold of the paper (VI.A.1: 5-fold RSNA, 10-fold CQ500)
        "rsna": DataSet("rsna", "RSNA", "drct2_rsna.py", "", tuple(range(5)), "rsna", 5),
        "cq500": DataSet("cq500", "CQ500", "drct2_cq500.py", "", tuple(range(10)), "cq500", 10),
    },
    # One fold (0) of each phantom set: the folds of a data set share its generated scans, cache
    # and feature store, but each fold is a cell of its own (CPU_COST); --folds 0,1,2,3,4 runs
    # the paper's folds. RSNA layout: the README's main job (1,280 scans, 100 epochs).
    "cpu": {
        "rsna": DataSet("rsna", "RSNA-layout phantom", "drct2_phantom.py",
                        "num_scans=1280,epochs=100", (0,), "phantom", 5),
        "cq500": DataSet("cq500", "CQ500-layout phantom", "drct2_phantom.py",
                         "layout=cq500,num_scans=300,epochs=100", (0,), "phantom", 10),
    },
    "smoke": {
        "rsna": DataSet("rsna", "RSNA-layout phantom (smoke)", "drct2_phantom.py", "runlocal",
                        (0, 1), "phantom", 5, _SMOKE),
        "cq500": DataSet("cq500", "CQ500-layout phantom (smoke)", "drct2_phantom.py",
                         "layout=cq500,runlocal", (0, 1), "phantom", 10, _SMOKE),
    },
}
# The sizes behind Table 4's "APS: 224×224" row (= the primary size) per preset.
PRESETS = tuple(DATASETS)


def dataset(ctx: Context, name: str) -> DataSet:
  if ctx.preset not in DATASETS:
    raise ConfigError(f"--preset {ctx.preset!r}; expected one of {PRESETS}")
  return DATASETS[ctx.preset][name]


def _arg(*parts: str) -> str:
  return ",".join(p for p in parts if p)


def _base_config(ctx: Context, ds: DataSet):
  from ctjax.configs import named
  return named.get_config(ds.config_file, ds.config_arg or None)


def variant_cell(ctx: Context, ds: DataSet, variant: str, fold: int) -> Cell:
  """The cell of `variant` on `ds`, fold `fold`: drct2 | drct1 | drct1_bce (DrCT1 with its
  output head trained by BCE, as DrCT2's fusion head is: Table 3 without the loss confound) |
  bce | hires | fusion | aps_low | mkey<k>_<attention|random>."""
  fold_arg = f"fold={fold}"
  over = tuple(ds.overrides)
  if variant == "drct2":
    return Cell(ds.name, variant, fold, ds.config_file, _arg(ds.config_arg, fold_arg), over)
  if variant == "drct1":
    return Cell(ds.name, variant, fold, ds.config_file, _arg(ds.config_arg, "drct1", fold_arg),
                over)
  if variant == "drct1_bce":   # DrCT1's output is its primary head: trained by BCE here
    return Cell(ds.name, variant, fold, ds.config_file, _arg(ds.config_arg, "drct1", fold_arg),
                over + (("loss.primary", "bce"),))
  if variant == "bce":   # Table 2: BCE for the primary and APS losses (fusion is BCE anyway)
    return Cell(ds.name, variant, fold, ds.config_file, _arg(ds.config_arg, fold_arg),
                over + (("loss.primary", "bce"), ("loss.aps", "bce")))
  if variant in ("hires", "fusion"):
    file = "drct1_hires.py" if variant == "hires" else "drct1_fusion.py"
    return Cell(ds.name, variant, fold, file,
                _arg(f"base={ds.fusion_base}", ds.config_arg, fold_arg), over)
  if variant == "aps_low":   # Table 4: the APS network at the primary size (224 in the paper)
    size = int(_base_config(ctx, ds).model.primary_size)
    return Cell(ds.name, variant, fold, ds.config_file, _arg(ds.config_arg, fold_arg),
                over + (("model.aps_size", size),))
  if variant.startswith("mkey"):
    k, _, selection = variant[4:].partition("_")
    if int(k) == int(_base_config(ctx, ds).model.mkey) and selection == "attention":
      return variant_cell(ctx, ds, "drct2", fold)   # the config's own mkey: DrCT2 itself
    return Cell(ds.name, variant, fold, ds.config_file, _arg(ds.config_arg, fold_arg),
                over + (("model.mkey", int(k)), ("model.selection", selection)))
  raise ConfigError(f"unknown DrCT variant {variant!r}")


def cells_of(ctx: Context, ds: DataSet, variants: Sequence[str],
             folds: Optional[Sequence[int]] = None, chosen: Optional[Sequence[int]] = None
             ) -> dict[str, list[Cell]]:
  """{variant: [cell per fold]}; DrCT2 first so that its run builds the shared feature store
  (DrCT1 and the APS-224 variant read its primary rows, Table 4's DrCT1s its APS rows)."""
  fs = folds_of(folds if folds is not None else ds.folds, chosen, ds.num_folds)
  order = sorted(variants, key=lambda v: v != "drct2")
  return {v: [variant_cell(ctx, ds, v, f) for f in fs] for v in order}


def _flat(groups: Mapping[str, Sequence[Cell]]) -> list[Cell]:
  return [c for cells in groups.values() for c in cells]


def _results(results: Mapping[str, CellResult], cells: Sequence[Cell]) -> list[CellResult]:
  return [results[c.key] for c in cells]


def _labels(ctx: Context, ds: DataSet) -> list[str]:
  return list(_base_config(ctx, ds).data.labels)


# --------------------------------------------------------------------------------- the tables


def _prf_row(label: Sequence[str], res: Sequence[CellResult],
             paper: Optional[Sequence[float]], metrics=PRF + ("macro_auc",)
             ) -> tuple[list[str], dict[str, Any]]:
  figs = {m: render.figure(res, m) for m in metrics}
  row = list(label) + [figs[m].text() for m in metrics]
  row += [render.num(p, 4) for p in paper] if paper else ["—"] * len(PRF)
  csv_row: dict[str, Any] = {"row": " / ".join(label)}
  for m in metrics:
    csv_row.update(render.csv_figure(METRIC_NAMES[m], figs[m]))
  if paper:
    csv_row.update({f"paper_{METRIC_NAMES[m]}": p for m, p in zip(PRF, paper)})
  return row, csv_row


_PRF_COLUMNS = ["precision", "recall", "F1", "AUC", "paper precision", "paper recall",
                "paper F1"]
_UNCERTAINTY = ("Ours: mean ± sd over the folds' test splits [95 % t-CI of the mean]; one fold: "
                "value [95 % bootstrap CI over its test scans]. Macro averages over the labels, "
                "threshold 0.5, each fold's best checkpoint by validation macro-F1 (as "
                "`python -m ctjax.evaluate` scores it). Differences: the plain paired t-test "
                "over the folds (the paper's section VII test) and Nadeau & Bengio's corrected "
                "resampled t-test (variance × (1/k + n_test/n_train): the folds' training sets "
                "overlap), which decides \"resolved\"; the paired bootstrap on the pooled test "
                "scans beside them.")


def _split_config(ctx: Context, ds: DataSet):
  """The config of `ds`'s DrCT2 cell with every override (the folds it splits by)."""
  return _cell_config(ctx, variant_cell(ctx, ds, "drct2", ds.folds[0]))


def _about(ctx: Context, *names: str) -> str:
  """`_UNCERTAINTY` and the fold protocol of each named data set."""
  parts = [f"{dataset(ctx, n).label}: "
           f"{render.protocol_text(_split_config(ctx, dataset(ctx, n)))}" for n in names]
  return _UNCERTAINTY + " Folds — " + "; ".join(parts) + "."


def _ratio(ctx: Context, ds: DataSet) -> float:
  """n_test / n_train of a fold of `ds` (the corrected t-test's ratio)."""
  return render.test_train_ratio(_split_config(ctx, ds))


def _paper_diff(paper: Mapping[Any, Sequence[float]], a: Any, b: Any) -> dict[str, float]:
  return {m: pa - pb for m, pa, pb in zip(PRF, paper[a], paper[b])}


def table2(ctx: Context, command: str, chosen=None) -> Spec:
  """Table 2: MSE vs BCE losses of the primary and APS networks, both data sets."""
  groups = {name: cells_of(ctx, dataset(ctx, name), ["drct2", "bce"], chosen=chosen)
            for name in ("cq500", "rsna")}

  def make(results, out_dir):
    t = render.Table("drct2_table2", "DrCT2 paper, Table 2: MSE vs BCE losses of the primary "
                     "and APS networks", command, ctx.preset,
                     ["data set", "loss (primary, APS)"] + _PRF_COLUMNS,
                     about=_about(ctx, "cq500", "rsna"))
    for name, g in groups.items():
      ds = dataset(ctx, name)
      for v, loss in (("bce", "BCE"), ("drct2", "MSE")):
        res = _results(results, g[v])
        row, csv_row = _prf_row([ds.label, loss], res, PAPER_TABLE2[(name, v)])
        t.rows.append(row)
        t.csv_rows.append(csv_row)
        t.cells += res
      comps = render.compare(_results(results, g["drct2"]), _results(results, g["bce"]), PRF,
                             kind="drct", names=_labels(ctx, ds), n_boot=ctx.n_boot,
                             seed=ctx.seed, test_train_ratio=_ratio(ctx, ds))
      t.notes.append(f"{ds.label}: " + render.comparison_text(
          "MSE", "BCE", comps, METRIC_NAMES, paper=_paper_diff(PAPER_TABLE2, (name, "drct2"),
                                                               (name, "bce"))))
    return t

  return Spec("drct2_table2", "Table 2", _flat(groups["cq500"]) + _flat(groups["rsna"]), make)


_TABLE3_ROWS = (("drct1", "DrCT1"), ("drct1_bce", "DrCT1, BCE head"), ("drct2", "DrCT2"))


def table3(ctx: Context, command: str, chosen=None) -> Spec:
  """Table 3: DrCT1 vs DrCT2 on both data sets (+ section VII's t-tests, DrCT1 with a BCE head)."""
  # The BCE-head DrCT1 (`drct1_bce`) trains its output head with the loss of DrCT2's output.
  groups = {name: cells_of(ctx, dataset(ctx, name), [v for v, _ in _TABLE3_ROWS], chosen=chosen)
            for name in ("cq500", "rsna")}

  def make(results, out_dir):
    t = render.Table("drct2_table3", "DrCT2 paper, Table 3: DrCT1 vs DrCT2 on the two data "
                     "sets", command, ctx.preset, ["data set", "model"] + _PRF_COLUMNS,
                     about=_about(ctx, "cq500", "rsna") + " The paper trains DrCT1's output "
                     "(its primary network) with MSE and DrCT2's output (the fusion network) "
                     "with BCE (V.D), so its Table 3 compares two losses as well as two "
                     "models; the row \"DrCT1, BCE head\" (`loss.primary=bce`) is DrCT1 "
                     "trained with DrCT2's output loss.")
    all_a, all_b, groups_of, ratios = [], [], [], []
    for name, g in groups.items():
      ds = dataset(ctx, name)
      for v, label in _TABLE3_ROWS:
        res = _results(results, g[v])
        row, csv_row = _prf_row([ds.label, label], res, PAPER_TABLE3.get((name, v)))
        t.rows.append(row)
        t.csv_rows.append(csv_row)
        t.cells += res
      a, b = _results(results, g["drct2"]), _results(results, g["drct1"])
      t.notes.append(_calibration_note(ds.label, {"DrCT1": b, "DrCT2": a}))
      t.figures.append(_reliability_figure(out_dir / f"drct2_table3_reliability_{name}.png",
                                           ds.label, {"DrCT1": b, "DrCT2": a}))
      all_a += [r.scalar for r in a]
      all_b += [r.scalar for r in b]
      groups_of += [name] * len(a)
      ratios += [_ratio(ctx, ds)] * len(a)
      for other, label in (("drct1", "DrCT1"), ("drct1_bce", "DrCT1 (BCE head)")):
        comps = render.compare(a, _results(results, g[other]), PRF, kind="drct",
                               names=_labels(ctx, ds), n_boot=ctx.n_boot, seed=ctx.seed,
                               test_train_ratio=_ratio(ctx, ds))
        paper = (_paper_diff(PAPER_TABLE3, (name, "drct2"), (name, "drct1"))
                 if other == "drct1" else None)   # the paper has no BCE-head DrCT1
        t.notes.append(f"{ds.label}: " + render.comparison_text(
            "DrCT2", label, comps, METRIC_NAMES, paper=paper))
    # Section VII's test: one paired t-test per metric over the folds of both data sets, and
    # the corrected test beside it (folds correlate within a data set only).
    parts = []
    for m in PRF:
      va, vb = [f(m) for f in all_a], [f(m) for f in all_b]
      if len(va) >= 2 and all(math.isfinite(x) for x in va + vb):
        tt = stats.paired_t_test(va, vb)
        ct = stats.corrected_t_test(va, vb, test_train_ratio=ratios, groups=groups_of)
        parts.append(f"{METRIC_NAMES[m]} Δ {tt.mean_diff:+.3f}: paired t-test "
                     f"[{tt.ci_low:+.3f}, {tt.ci_high:+.3f}], P {render.p_text(tt.p)}; "
                     f"corrected [{ct.ci_low:+.3f}, {ct.ci_high:+.3f}], "
                     f"P {render.p_text(ct.p)} (the paper's P = "
                     f"{PAPER_P_DRCT1_VS_DRCT2[m]:.5f})")
    if parts:
      t.notes.append(f"**DrCT2 vs DrCT1 over the {len(all_a)} folds of both data sets (the "
                     "paper's section VII t-test; the paper does not say over which folds):** "
                     + "; ".join(parts) + ".")
    return t

  return Spec("drct2_table3", "Table 3", _flat(groups["cq500"]) + _flat(groups["rsna"]), make)


_TABLE4_ROWS = (("drct1", "DrCT1", "original", "primary {p}"),
                ("hires", "DrCT1", "high-resolution input", "primary {a}"),
                ("fusion", "DrCT1", "model fusion (slices {f})", "primary 1: {p}; primary 2: {a}"),
                ("aps_low", "DrCT2", "with APS", "primary {p}; APS {p}"),
                ("drct2", "DrCT2", "with APS", "primary {p}; APS {a}"))


def _calibration_note(label: str, rows: Mapping[str, Sequence[CellResult]]) -> str:
  """Macro ECE (and the RSNA challenge's weighted log loss) of each model, over the folds."""
  parts = []
  for name, res in rows.items():
    ece = render.figure(res, "", lambda r: r.report.get("calibration", {}).get(
        "ece", {}).get("macro", math.nan))
    text = f"{name} macro ECE {ece.text()}"
    if all("rsna_weighted_log_loss" in r.report.get("calibration", {}) for r in res):
      ll = render.figure(res, "", lambda r: r.report["calibration"]["rsna_weighted_log_loss"],
                         bounds=(0.0, math.inf))
      text += f", RSNA weighted log loss {ll.text()}"
    parts.append(text)
  return (f"Calibration, {label} (15 equal-width bins per label; the figure pools every label "
          "of the test folds): " + "; ".join(parts) + ".")


def _reliability_figure(path: pathlib.Path, label: str,
                        rows: Mapping[str, Sequence[CellResult]]) -> str:
  curves = {}
  for name, res in rows.items():
    p = render.pooled(res, ["labels", "probs"])
    curves[name] = stats.reliability_data(p["labels"].ravel(), p["probs"].ravel())
  stats.plot_reliability_diagram(curves, path, title=f"{label}: every label, test folds")
  return path.name


def table4(ctx: Context, command: str, chosen=None) -> Spec:
  """Table 4: DrCT1 original / high-resolution / model fusion; DrCT2 APS 224 vs 512 (CQ500)."""
  ds = dataset(ctx, "cq500")
  g = cells_of(ctx, ds, [v for v, *_ in _TABLE4_ROWS], chosen=chosen)

  def make(results, out_dir):
    base = _base_config(ctx, ds)
    p, a = int(base.model.primary_size), int(base.model.aps_size)
    fusion_cfg = _cell_config(ctx, g["fusion"][0]) if g["fusion"] else None
    lo, hi = (tuple(fusion_cfg.model.hires_slices) if fusion_cfg is not None else (15, 22))
    t = render.Table("drct2_table4", "DrCT2 paper, Table 4: strategies for DrCT1 and DrCT2 "
                     f"({ds.label})", command, ctx.preset,
                     ["model", "strategy", "input resolution"] + _PRF_COLUMNS,
                     about=_about(ctx, "cq500") + f" Resolutions here: primary {p} px, APS / "
                     f"high-resolution {a} px (the paper's 224 and 512).")
    for v, model, strategy, res_text in _TABLE4_ROWS:
      res = _results(results, g[v])
      label = [model, strategy.format(f=f"{lo + 1}–{hi}"),
               res_text.format(p=f"{p}×{p}", a=f"{a}×{a}")]
      row, csv_row = _prf_row(label, res, PAPER_TABLE4[v])
      t.rows.append(row)
      t.csv_rows.append(csv_row)
      t.cells += res
    names = _labels(ctx, ds)
    for a_v, b_v, la, lb in (("hires", "drct1", "high-resolution input", "original"),
                             ("fusion", "drct1", "model fusion", "original"),
                             ("aps_low", "drct1", f"DrCT2 (APS {p})", "DrCT1"),
                             ("drct2", "aps_low", f"DrCT2 (APS {a})", f"DrCT2 (APS {p})")):
      comps = render.compare(_results(results, g[a_v]), _results(results, g[b_v]),
                             ("macro_f1",), kind="drct", names=names, n_boot=ctx.n_boot,
                             seed=ctx.seed, test_train_ratio=_ratio(ctx, ds))
      t.notes.append(render.comparison_text(la, lb, comps, METRIC_NAMES, paper={
          "macro_f1": PAPER_TABLE4[a_v][2] - PAPER_TABLE4[b_v][2]}))
    return t

  return Spec("drct2_table4", "Table 4", _flat(g), make)


def _cell_config(ctx: Context, cell: Cell):
  from ctjax.tables.grid import build_config
  return build_config(cell, ctx)


# ----------------------------------------------------------------------- key slices (5 and 6)


def _keyslice_fn(names: Sequence[str]) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
  """slice_labels [N, m, L], attention [N, m] → Table 5's tasks and Table 6's accuracies."""
  def fn(slice_labels, attention):
    out = keyslice.key_slice_metrics(attention, slice_labels, names, prefix="")
    return {k: v for k, v in out.items() if k in keyslice.TASKS or k.endswith("/accuracy")}
  return fn


def _keyslice_boot(pool: Mapping[str, np.ndarray], names: Sequence[str], ctx: Context
                   ) -> dict[str, stats.BootstrapCI]:
  """Tables 5-6's figures of pooled test predictions, each with its bootstrap CI over scans."""
  return stats.bootstrap_ci(_keyslice_fn(names), pool["slice_labels"], pool["slice_attention"],
                            n_boot=ctx.n_boot, seed=ctx.seed, skip_degenerate=False)


def table5_6(ctx: Context, command: str, chosen=None) -> Spec:
  """Tables 5-6: key-slice tasks and per-disease key-slice accuracy (RSNA)."""
  ds = dataset(ctx, "rsna")
  g = cells_of(ctx, ds, ["drct2", "drct1"], chosen=chosen)

  def make(results, out_dir):
    names = _labels(ctx, ds)
    t = render.Table("drct2_table5_6", "DrCT2 paper, Tables 5 and 6: key-slice tasks and "
                     f"per-disease key-slice accuracy ({ds.label})", command, ctx.preset,
                     ["task / disease", "scans / slices (ours)", "DrCT1", "DrCT2",
                      "paper scans / slices", "paper DrCT1", "paper DrCT2"],
                     about="Algorithm 1 of the paper on the slice attention of each test scan "
                     "(ctjax.eval.keyslice), the test folds pooled (every scan once): value "
                     "[95 % bootstrap CI over scans]. Table 6 pools each disease's lesion "
                     "slices.")
    pooled, boots = {}, {}
    for v in ("drct1", "drct2"):
      res = _results(results, g[v])
      t.cells += res
      pooled[v] = render.pooled(res, ["slice_labels", "slice_attention", "example_index"])
      if "slice_labels" not in pooled[v]:
        t.notes.append("No per-slice labels in this data set: Tables 5 and 6 need them.")
        return t
      boots[v] = _keyslice_boot(pooled[v], names, ctx)
    tasks = keyslice.key_slice_tasks(pooled["drct2"]["slice_attention"],
                                     _lesion(pooled["drct2"]["slice_labels"], names))
    diseases = keyslice.per_disease_accuracy(pooled["drct2"]["slice_attention"],
                                             pooled["drct2"]["slice_labels"], names)
    for task in keyslice.TASKS:
      paper = keyslice.PAPER_TABLE5[task]
      row = [task, str(tasks[f"num_{task}"]), str(boots["drct1"][task]),
             str(boots["drct2"][task]), f"{paper['scans']:,}", render.num(paper["DrCT1"], 4),
             render.num(paper["DrCT2"], 4)]
      t.rows.append(row)
      t.csv_rows.append(_ks_csv(task, tasks[f"num_{task}"], boots, task, paper, "scans"))
    for d in names:
      key = f"{d}/accuracy"
      paper = keyslice.PAPER_TABLE6.get(d)
      t.rows.append([d, str(diseases[d]["slices"]), str(boots["drct1"][key]),
                     str(boots["drct2"][key]), f"{paper['slices']:,}" if paper else "—",
                     render.num(paper["DrCT1"], 4) if paper else "—",
                     render.num(paper["DrCT2"], 4) if paper else "—"])
      t.csv_rows.append(_ks_csv(d, diseases[d]["slices"], boots, key, paper, "slices"))
    same = np.array_equal(pooled["drct1"]["slice_labels"], pooled["drct2"]["slice_labels"])
    if same:
      diff = stats.paired_bootstrap(_keyslice_fn(names), pooled["drct2"]["slice_labels"],
                                    pooled["drct2"]["slice_attention"],
                                    pooled["drct1"]["slice_attention"], n_boot=ctx.n_boot,
                                    seed=ctx.seed, skip_degenerate=False)
      parts = []
      for key in list(keyslice.TASKS) + ["any/accuracy"]:
        if key not in diff or not math.isfinite(diff[key].value):
          continue
        c = render.Comparison(key, None, diff[key])
        pk = key.split("/")[0]
        pdiff = (keyslice.PAPER_TABLE5[pk]["DrCT2"] - keyslice.PAPER_TABLE5[pk]["DrCT1"]
                 if pk in keyslice.PAPER_TABLE5 else
                 keyslice.PAPER_TABLE6[pk]["DrCT2"] - keyslice.PAPER_TABLE6[pk]["DrCT1"])
        dk = diff[key]
        parts.append(f"{key} {stats.ci_text(dk.value, dk.lo, dk.hi, dk.status, signed=True)}"
                     f" (paper {pdiff:+.4f}; " + render.ordering(c, pdiff, "DrCT2", "DrCT1")
                     + ")")
      t.notes.append("**DrCT2 − DrCT1 (paired bootstrap on the same scans and sampled "
                     "slices):** " + "; ".join(parts) + ".")
    return t

  return Spec("drct2_table5_6", "Tables 5-6", _flat(g), make)


def _lesion(slice_labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
  names = list(names)
  if "any" in names:
    return slice_labels[..., names.index("any")] > 0
  return (slice_labels > 0).any(axis=-1)


def _ks_csv(row: str, count: int, boots, key: str, paper: Optional[Mapping[str, Any]],
            count_name: str) -> dict[str, Any]:
  out: dict[str, Any] = {"row": row, count_name: count}
  for v in ("drct1", "drct2"):
    ci = boots[v][key]
    out.update({f"{v}": ci.value, f"{v}_lo": ci.lo, f"{v}_hi": ci.hi})
  if paper:
    out.update({f"paper_{count_name}": paper[count_name], "paper_drct1": paper["DrCT1"],
                "paper_drct2": paper["DrCT2"]})
  return out


def table7(ctx: Context, command: str, chosen=None) -> Spec:
  """Table 7: DrCT1 and DrCT2 beside the image-level RSNA-1 (RSNA)."""
  ds = dataset(ctx, "rsna")
  g = cells_of(ctx, ds, ["drct2", "drct1"], chosen=chosen)

  def make(results, out_dir):
    t = render.Table("drct2_table7", "DrCT2 paper, Table 7: sequence-level DrCT1 and DrCT2 "
                     f"vs the image-level RSNA-1 ({ds.label})", command, ctx.preset,
                     ["model"] + _PRF_COLUMNS,
                     about=_about(ctx, "rsna") + " RSNA-1 (the challenge's first place, "
                     "trained on slice labels) is not reimplemented: its row is the paper's "
                     "only.")
    t.rows.append(["RSNA-1"] + ["—"] * 4 + [render.num(p, 4) for p in PAPER_TABLE7_RSNA1])
    t.csv_rows.append({"row": "RSNA-1", **{f"paper_{METRIC_NAMES[m]}": p
                                           for m, p in zip(PRF, PAPER_TABLE7_RSNA1)}})
    for v, label in (("drct1", "DrCT1"), ("drct2", "DrCT2")):
      res = _results(results, g[v])
      row, csv_row = _prf_row([label], res, PAPER_TABLE3[("rsna", v)])
      t.rows.append(row)
      t.csv_rows.append(csv_row)
      t.cells += res
    return t

  return Spec("drct2_table7", "Table 7", _flat(g), make)


def per_label(ctx: Context, command: str, chosen=None) -> Spec:
  """DrCT2 per label, its three heads, key-slice tasks, calibration (RSNA; cpu: the README job)."""
  ds = dataset(ctx, "rsna")
  g = cells_of(ctx, ds, ["drct2"], chosen=chosen)

  def make(results, out_dir):
    names = _labels(ctx, ds)
    res = _results(results, g["drct2"])
    title = (f"DrCT2 per label on the {ds.label}" + (
        ": the README's main job" if ctx.preset == "cpu" else ""))
    folds = ", ".join(str(r.cell.fold) for r in res)
    about = (f"The cells of Table 3's DrCT2 row, folds {folds}" + (
        ": the README's main job's config (`python -m ctjax.train --config "
        "configs/drct2_phantom.py`: 1,280 scans, 100 epochs), whose own run is fold 0"
        if ctx.preset == "cpu" else "") + ". " + _about(ctx, "rsna") + " Test positives: the "
        "folds' test splits pooled. Key-slice tasks: Algorithm 1 on the slice attention (DrCT2 "
        "paper, Table 5), the test folds pooled.")
    t = render.Table("drct2_per_label", title, command, ctx.preset,
                     ["label (test positives)", "precision", "recall", "F1", "AUC"], about=about)
    t.cells += res
    pool = render.pooled(res, ["labels", "probs", "probs_primary", "probs_aps",
                               "slice_attention", "slice_labels"])
    keys = [f"per_class/{n}/{m}" for n in names for m in ("precision", "recall", "f1", "auc")]
    cis = {}
    if len(res) == 1:   # one fold: each figure's bootstrap CI over its test scans
      cis = stats.multilabel_bootstrap(pool["labels"], pool["probs"], names, keys=keys,
                                       n_boot=ctx.n_boot, seed=ctx.seed)
    for n in names:
      row, csv_row = [f"{n} ({int(pool['labels'][:, names.index(n)].sum())})"], {"row": n}
      for m in ("precision", "recall", "f1", "auc"):
        key = f"per_class/{n}/{m}"
        fig = render.figure(res, key)
        if key in cis:
          fig = render.Figure(fig.values, fig.fold, (cis[key].lo, cis[key].hi), cis[key].status)
        row.append(fig.text())
        csv_row.update(render.csv_figure(METRIC_NAMES[f"macro_{m}"], fig))
      t.rows.append(row)
      t.csv_rows.append(csv_row)
    row, csv_row = _prf_row(["**macro**"], res, None)
    t.rows.append(row[:5])
    t.csv_rows.append(csv_row)
    # The three heads of DrCT2 (primary, APS, fusion = the model's output).
    heads = []
    for key, label in (("probs_primary", "primary"), ("probs_aps", "APS"), ("probs", "fusion")):
      if key in pool:
        ci = stats.multilabel_bootstrap(pool["labels"], pool[key], names, keys=("macro_f1",),
                                        n_boot=ctx.n_boot, seed=ctx.seed)["macro_f1"]
        heads.append(f"{label} {ci}")
        t.csv_rows.append({"row": f"head {label}", "F1_mean": ci.value, "F1_lo": ci.lo,
                           "F1_hi": ci.hi, "F1_folds": len(res)})
    if heads:
      t.notes.append("**Macro-F1 of each head** (the test folds pooled, bootstrap CI): "
                     + "; ".join(heads) + ".")
    if "slice_labels" in pool:
      boot = _keyslice_boot(pool, names, ctx)
      tasks = keyslice.key_slice_tasks(pool["slice_attention"],
                                       _lesion(pool["slice_labels"], names))
      t.notes.append("**Key-slice tasks** (scans; paper DrCT2 on RSNA): " + "; ".join(
          f"{k} {boot[k]} ({tasks[f'num_{k}']}; paper "
          f"{render.num(keyslice.PAPER_TABLE5[k]['DrCT2'], 4)})" for k in keyslice.TASKS) + ".")
    cal = [r.report.get("calibration") for r in res]
    if all(cal):
      parts = [f"macro ECE {render.num(float(np.mean([c['ece']['macro'] for c in cal])), 4)}"]
      if all("rsna_weighted_log_loss" in c for c in cal):
        parts.append("the RSNA challenge's weighted log loss " + render.num(float(np.mean(
            [c["rsna_weighted_log_loss"] for c in cal])), 4))
      t.notes.append("**Calibration** (mean over the folds): " + ", ".join(parts) + ".")
    return t

  return Spec("drct2_per_label", "per label", _flat(g), make)


# ----------------------------------------------------------------------------------- figures


def _eval_curve(path: pathlib.Path, split: str = "val") -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(epochs, {metric: values}) of a run's periodic `split` evaluations (metrics.jsonl)."""
  steps_per_epoch = None
  evals: dict[int, dict[str, float]] = {}
  log_file = path / "metrics.jsonl"
  if not log_file.is_file():
    raise CTDataError("missing: the figure reads the run's periodic evaluations; delete "
                      f"{path / 'cell.json'} to train the cell again", log_file)
  with open(log_file) as f:
    for line in f:
      rec = json.loads(line)
      if "train/epoch" in rec and rec.get("train/epoch"):
        steps_per_epoch = rec["step"] / rec["train/epoch"]
      if f"{split}/macro_precision" in rec:
        evals[int(rec["step"])] = rec   # a resumed run may log a step twice: keep the last
  steps = np.array(sorted(evals), np.float64)
  epochs = steps / steps_per_epoch if steps_per_epoch else steps
  keys = ("macro_precision", "macro_recall", "macro_f1")
  return epochs, {k: np.array([_f(evals[int(s)].get(f"{split}/{k}")) for s in steps])
                  for k in keys}


def _f(x) -> float:
  return float("nan") if x is None else float(x)


def figure5(ctx: Context, command: str, chosen=None) -> Spec:
  """Figure 5: validation precision and recall over training (CQ500)."""
  ds = dataset(ctx, "cq500")
  g = cells_of(ctx, ds, ["drct2"], chosen=chosen)

  def make(results, out_dir):
    res = _results(results, g["drct2"])
    t = render.Table("drct2_figure5", "DrCT2 paper, Figure 5: precision and recall while "
                     f"training DrCT2 ({ds.label})", command, ctx.preset,
                     ["epoch", "val precision", "val recall", "val F1"],
                     about="Validation macro precision / recall / F1 at each periodic "
                     "evaluation (metrics.jsonl), mean ± sd over the folds. The paper plots "
                     "the curves only (no numbers).")
    t.cells += res
    curves = [_eval_curve(r.path) for r in res]
    curves = [c for c in curves if c[0].size]
    if not curves:
      t.notes.append("No periodic validation evaluations were logged (config.evals.val).")
      return t
    n = min(c[0].size for c in curves)
    epochs = curves[0][0][:n]
    fig, ax = render.new_figure()
    for key, name in (("macro_precision", "precision"), ("macro_recall", "recall")):
      vals = np.stack([c[1][key][:n] for c in curves])
      mean, sd = np.nanmean(vals, 0), (np.nanstd(vals, 0, ddof=1) if len(vals) > 1
                                       else np.zeros(n))
      ax.plot(epochs, mean, label=f"{name} (mean of {len(vals)} folds)")
      ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.2)
    ax.set(xlabel="epoch", ylabel="validation macro score", ylim=(0, 1.02),
           title=f"DrCT2 on {ds.label}")
    ax.legend(loc="lower right", fontsize=8)
    t.figures.append(render.save(fig, out_dir / "drct2_figure5.png"))
    stacked = {k: np.stack([c[1][k][:n] for c in curves]) for k in curves[0][1]}
    for i in sorted(set(np.linspace(0, n - 1, min(n, 8)).round().astype(int))):
      cells = []
      for k in ("macro_precision", "macro_recall", "macro_f1"):
        v = stacked[k][:, i]
        cells.append(f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1) if len(v) > 1 else 0:.3f}")
      t.rows.append([f"{epochs[i]:.0f}"] + cells)
      t.csv_rows.append({"epoch": float(epochs[i]), **{
          f"{k}_mean": float(np.nanmean(stacked[k][:, i])) for k in stacked}})
    return t

  return Spec("drct2_figure5", "Figure 5", _flat(g), make)


def figure6_mkeys(ctx: Context, ds: DataSet) -> list[int]:
  """The paper's mkey values that fit the data set's m sampled slices."""
  m = int(_base_config(ctx, ds).data.num_slices)
  return [k for k in FIGURE6_MKEYS if k <= m]


def figure6(ctx: Context, command: str, chosen=None) -> Spec:
  """Figure 6: mkey 4-28, attention vs random key-slice selection (CQ500)."""
  ds = dataset(ctx, "cq500")
  mkeys = figure6_mkeys(ctx, ds)
  variants = [f"mkey{k}_{s}" for k in mkeys for s in ("attention", "random")]
  g = cells_of(ctx, ds, variants, chosen=chosen)

  def make(results, out_dir):
    names = _labels(ctx, ds)
    folds = sorted({c.fold for c in _flat(g)})
    t = render.Table("drct2_figure6", "DrCT2 paper, Figure 6: mkey slices into the APS network "
                     f"by attention or at random ({ds.label})", command, ctx.preset,
                     ["mkey", "attention F1", "random F1", "attention − random F1"],
                     about=f"Test macro-F1 on folds {', '.join(map(str, folds))}: "
                     "mean ± sd [95 % t-CI] (one fold: [bootstrap CI]); the difference with "
                     "the plain and the corrected paired t-test over folds (several folds) or "
                     "the paired bootstrap on the pooled test scans (one fold). The paper's "
                     "claims (section VI.A.3): attention beats random at every mkey, best at "
                     f"mkey = {PAPER_FIGURE6_BEST_MKEY}. Folds — "
                     f"{render.protocol_text(_split_config(ctx, ds))}.")
    means = {"attention": [], "random": []}
    bars = {"attention": [], "random": []}
    for k in mkeys:
      ra = _results(results, g[f"mkey{k}_attention"])
      rr = _results(results, g[f"mkey{k}_random"])
      t.cells += ra + rr
      fa, fr = render.figure(ra, "macro_f1"), render.figure(rr, "macro_f1")
      comp = render.compare(ra, rr, ("macro_f1",), kind="drct", names=names, n_boot=ctx.n_boot,
                            seed=ctx.seed, test_train_ratio=_ratio(ctx, ds))[0]
      d, dc = comp.t_test, comp.corrected
      dtext = (f"{render.t_text(d)}; corrected [{dc.ci_low:+.3f}, {dc.ci_high:+.3f}], "
               f"P {render.p_text(dc.p)}" if d is not None and dc is not None else
               render.boot_text(comp.boot) if comp.boot is not None else "—")
      t.rows.append([str(k), fa.text(), fr.text(), dtext])
      t.csv_rows.append({"mkey": k, **render.csv_figure("attention_f1", fa),
                         **render.csv_figure("random_f1", fr),
                         "diff": comp.mean_diff(), "diff_sign": comp.sign()})
      for s, f in (("attention", fa), ("random", fr)):
        means[s].append(f.fold.mean)
        lo, hi = (f.fold.lo, f.fold.hi) if f.fold.n > 1 else f.boot
        bars[s].append((f.fold.mean - lo, hi - f.fold.mean))
    fig, ax = render.new_figure()
    for s, marker in (("attention", "o-"), ("random", "s--")):
      err = np.array(bars[s]).T
      ax.errorbar(mkeys, means[s], yerr=np.nan_to_num(err), fmt=marker, capsize=3,
                  label=f"{s} selection")
    ax.set(xlabel="mkey (slices into the APS network)", ylabel="test macro-F1",
           xticks=mkeys, title=f"DrCT2 on {ds.label}")
    ax.legend(fontsize=8)
    t.figures.append(render.save(fig, out_dir / "drct2_figure6.png"))
    best = mkeys[int(np.nanargmax(means["attention"]))] if any(
        math.isfinite(x) for x in means["attention"]) else None
    signs = [r["diff_sign"] for r in t.csv_rows]
    basis = ("the corrected t-test's CI" if len(folds) > 1 else
             "the paired bootstrap CI (no interval where too few positives)")
    t.notes.append(f"Best mkey with attention here: {best} (paper: {PAPER_FIGURE6_BEST_MKEY}). "
                   f"Attention − random by {basis}: above 0 at {signs.count(1)} of "
                   f"{len(signs)} mkey values, below 0 at {signs.count(-1)}, unresolved at "
                   f"{signs.count(0)} (paper: attention better at every mkey).")
    return t

  return Spec("drct2_figure6", "Figure 6", _flat(g), make)


def figure7(ctx: Context, command: str, chosen=None) -> Spec:
  """Figure 7: histogram of the top-5 attended slice positions (CQ500, diseased)."""
  ds = dataset(ctx, "cq500")
  g = cells_of(ctx, ds, ["drct2"], chosen=chosen)

  def make(results, out_dir):
    res = _results(results, g["drct2"])
    p = render.pooled(res, ["slice_attention", "labels"])
    diseased = (p["labels"] > 0.5).any(axis=1)
    att = p["slice_attention"][diseased]
    m = att.shape[1]
    top = keyslice.top_k_indices(att, 5) + 1            # 1-based positions, as the paper's
    counts = np.bincount(top.ravel(), minlength=m + 1)[1:]
    width = PAPER_FIGURE7_RANGE[1] - PAPER_FIGURE7_RANGE[0] + 1
    window = np.convolve(counts, np.ones(width, int), mode="valid")
    start = int(np.argmax(window)) + 1
    share = float(window.max() / max(counts.sum(), 1))
    plo, phi = PAPER_FIGURE7_RANGE
    paper_share = float(counts[plo - 1:phi].sum() / max(counts.sum(), 1)) if m >= phi else math.nan
    t = render.Table("drct2_figure7", "DrCT2 paper, Figure 7: positions of the top-5 attended "
                     f"slices ({ds.label}, diseased test scans)", command, ctx.preset,
                     ["", "ours", "paper"],
                     about="DrCT2's five most attended sampled slices of every test scan with "
                     "any positive label, the test folds pooled (each scan once); positions "
                     f"1…{m} on the sampled stack.")
    t.cells += res
    t.rows += [["diseased scans", str(int(diseased.sum())), str(PAPER_FIGURE7_SCANS)],
               [f"{width} consecutive positions with the most top-5 slices",
                f"{start}–{start + width - 1} ({100 * share:.0f} %)", f"{plo}–{phi}"],
               [f"share of top-5 slices at positions {plo}–{phi}",
                f"{100 * paper_share:.0f} %" if math.isfinite(paper_share) else "—", "—"]]
    t.csv_rows = [{"position": i + 1, "count": int(c)} for i, c in enumerate(counts)]
    fig, ax = render.new_figure()
    ax.bar(np.arange(1, m + 1), counts, color="tab:blue", alpha=0.8)
    ax.axvspan(plo - 0.5, phi + 0.5, color="tab:orange", alpha=0.15,
               label=f"paper's {plo}–{phi}")
    ax.set(xlabel="slice position (sampled stack)", ylabel="top-5 slices",
           title=f"DrCT2 on {ds.label}: {int(diseased.sum())} diseased scans")
    ax.legend(fontsize=8)
    t.figures.append(render.save(fig, out_dir / "drct2_figure7.png"))
    return t

  return Spec("drct2_figure7", "Figure 7", _flat(g), make)


def table1(ctx: Context, command: str, chosen=None) -> Spec:
  """Table 1: the data sets (+ Fleiss' kappa of CQ500's readers); no training."""
  def make(_results, out_dir):
    from ctjax.data import cache
    from ctjax.tables.grid import build_config
    t = render.Table("drct2_table1", "DrCT2 paper, Table 1: the data sets", command, ctx.preset,
                     ["", "data set", "ours", "paper"],
                     about="Counts of the prepared scans (sequence-level labels); for CQ500, "
                     "Fleiss' κ of the three readers per label from reads.csv "
                     "(ctjax.eval.stats.cq500_reader_kappa; the paper gives none).")
    for name in ("cq500", "rsna"):
      ds = dataset(ctx, name)
      cfg = build_config(variant_cell(ctx, ds, "drct2", ds.folds[0]), ctx)
      path = cache.ensure_cache(cfg, str(ctx.workdir / "data"))
      scans = cache.CachedScans(path).scans
      paper = PAPER_TABLE1[name]
      sl = [s.num_slices for s in scans]
      labels = list(cfg.data.labels)
      pos = np.stack([s.labels for s in scans]) > 0.5
      rows = [("patients", len({s.patient_id for s in scans}), paper["patients"]),
              ("scans", len(scans), paper["scans"]),
              ("labels", len(labels), paper["labels"]),
              ("slices per scan", f"{min(sl)}-{max(sl)}", paper["slices"]),
              ("after sampling (m)", int(cfg.data.num_slices), paper["m"])]
      rows += [(f"scans with {n}", int(pos[:, j].sum()), paper["counts"].get(n, "—"))
               for j, n in enumerate(labels)]
      if name == "cq500":
        reads = pathlib.Path(cfg.data.root) / "reads.csv"
        if reads.is_file():
          kappa = stats.cq500_reader_kappa(reads)
          rows += [(f"Fleiss' κ, {n}", render.num(k, 3), "—") for n, k in kappa.items()]
      for r in rows:
        t.rows.append([r[0], ds.label, str(r[1]), str(r[2])])
        t.csv_rows.append({"data set": name, "row": r[0], "ours": r[1], "paper": r[2]})
    return t

  return Spec("drct2_table1", "Table 1", [], make)


SPECS = {"drct2_per_label": per_label, "drct2_table1": table1, "drct2_table2": table2,
         "drct2_table3": table3, "drct2_table4": table4, "drct2_table5_6": table5_6,
         "drct2_table7": table7,
         "drct2_figure5": figure5, "drct2_figure6": figure6, "drct2_figure7": figure7}

