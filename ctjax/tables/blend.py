"""The blend-sign paper's Tables 3 and 4 and Figure 6 as grids of cells.

  python -m ctjax.tables blend --preset cpu --workdir runs/tables

| name | the paper's | cells |
|---|---|---|
| `blend_table3` | Table 3: WCE, WCE + AT (auxiliary detection task), WCE + AT + SKD, ResNet-50 | 3 variants |
| `blend_table4` | Table 4: VGG16 / ResNet-50 / Inception v3 backbones (WCE + AT + SKD) | 3 backbones |
| `blend_figure6` | Figure 6: confusion matrices of the three Table 3 variants | Table 3's |

Each cell is `python -m ctjax.distill --config <config>:variant=V,backbone=B,fold=k` (the WCE
and WCE + AT rows train no student: `distill.rounds` is 0 for them), scored on its test fold
(the last round's model); the paper evaluates by 5-fold cross-validation ("Evaluation
protocol"): `paper` runs folds 0-4, `cpu` and `smoke` fold 0 (`--folds` for more).
Presets: `paper` = configs/blend_resnet50.py (ImageNet backbone weights via `--override
model.backbone_weights=…`, data via `--blend_root`); `cpu` = configs/blend_phantom.py with its
own defaults (only `variant`, `backbone`, `fold` set here, so a retuned config is picked up as
it is); `smoke` = a few steps on tiny phantoms, every backbone built as VGG16 (figures
meaningless: it checks the machinery).

The paper prints Tables 3 and 4 as images; only the figures its text quotes are typed here
(`PAPER_TABLE3`); Table 4's and most of Table 3's cells are not in the text.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from ctjax.data.labels import BLEND_CLASSES
from ctjax.errors import ConfigError
from ctjax.eval import metrics as metrics_lib
from ctjax.tables import render
from ctjax.tables.grid import Cell, CellResult, Context, Spec, folds_of

# ------------------------------------------------------------------ the paper's numbers (once)
# Blend-sign paper, Results (the text around Table 3): "Our method achieved AUCs of 0.972 for
# blend sign, 0.978 for normal ICH, and 0.999 for non-ICH. For Sensitivity, … 0.845 for blend
# sign, 0.898 for normal ICH, and 0.984 for non-ICH. For Specificity, … 0.941 for blend sign,
# 0.936 for normal ICH, and 0.986 for non-ICH"; "the sensitivity of blend sign (from 0.544 to
# 0.845)" and "the sensitivity of normal ICH was slightly decreased from 0.929 to 0.898" (WCE →
# WCE + AT + SKD); Discussion: blend-sign F1 0.781.
PAPER_TABLE3: dict[str, dict[str, dict[str, float]]] = {
    "wce": {"blend_sign": {"sensitivity": 0.544}, "normal_ich": {"sensitivity": 0.929}},
    "wce_at": {},
    "wce_at_skd": {
        "non_ich": {"sensitivity": 0.984, "specificity": 0.986, "auc": 0.999},
        "normal_ich": {"sensitivity": 0.898, "specificity": 0.936, "auc": 0.978},
        "blend_sign": {"sensitivity": 0.845, "specificity": 0.941, "auc": 0.972, "f1": 0.781}},
}
# Figure 6 (Results text): share of blend-sign slices predicted as each class, per variant:
# WCE "43 % of slices with blend signs were incorrectly predicted as non-ICH"; WCE + AT "only
# 28 %"; WCE + AT + SKD "85 % … correctly predicted, and only 15 % … as non-ICH". WCE: "only 2 %
# of slices with normal ICH were incorrectly predicted as blend sign".
PAPER_FIGURE6 = {
    "wce": {("blend_sign", "non_ich"): 0.43, ("normal_ich", "blend_sign"): 0.02},
    "wce_at": {("blend_sign", "non_ich"): 0.28},
    "wce_at_skd": {("blend_sign", "blend_sign"): 0.85, ("blend_sign", "non_ich"): 0.15},
}
# Table 2 of the paper ("Reliability of the gold standards"): "All Fleiss's κ" of the three
# radiologists, non-ICH 0.91, blend sign 0.79 (the phantoms have no readers to compare).
PAPER_TABLE2_KAPPA = {"non_ich": 0.91, "blend_sign": 0.79}

VARIANTS = (("wce", "WCE"), ("wce_at", "WCE + AT"), ("wce_at_skd", "WCE + AT + SKD"))
BACKBONES = (("vgg16", "VGG16"), ("resnet50", "ResNet-50"), ("inception_v3", "Inception v3"))
METRICS = ("sensitivity", "specificity", "f1", "auc")
# The figures two rows are compared on (the paper's text quotes these changes).
COMPARED = ("per_class/blend_sign/sensitivity", "per_class/blend_sign/auc",
            "per_class/normal_ich/sensitivity")
COMPARED_NAMES = {k: k.split("/", 1)[1].replace("/", " ") for k in COMPARED}


@dataclasses.dataclass(frozen=True)
class Preset:
  config_file: str
  config_arg: str
  folds: tuple[int, ...]          # the folds run by default; --folds picks others
  overrides: tuple[tuple[str, Any], ...] = ()
  num_folds: int = 5              # "Evaluation protocol": 5-fold cross-validation
  # The backbone a cell named for the paper's builds instead (smoke: VGG16 for ResNet-50,
  # a fraction of its compile time; the machinery is the same, the figures meaningless).
  build_backbone: tuple[tuple[str, str], ...] = ()


PRESETS = {
    "paper": Preset("blend_resnet50.py", "", tuple(range(5))),
    "cpu": Preset("blend_phantom.py", "", (0,)),   # one fold; --folds 0,1,2,3,4: the paper's
    "smoke": Preset("blend_phantom.py", "size=64,num_scans=12,steps=2", (0,),
                    (("checkpoint.every_steps", 2), ("evals.every_steps", 0)),
                    build_backbone=(("resnet50", "vgg16"), ("inception_v3", "vgg16"))),
}


def preset(ctx: Context) -> Preset:
  if ctx.preset not in PRESETS:
    raise ConfigError(f"--preset {ctx.preset!r}; expected one of {tuple(PRESETS)}")
  return PRESETS[ctx.preset]


def cell(ctx: Context, variant: str, backbone: str, fold: int) -> Cell:
  p = preset(ctx)
  built = dict(p.build_backbone).get(backbone, backbone)
  arg = ",".join(x for x in (p.config_arg, f"variant={variant}", f"backbone={built}",
                             f"fold={fold}") if x)
  name = variant if backbone == "resnet50" else f"{variant}_{backbone}"
  return Cell("blend", name, fold, p.config_file, arg, p.overrides, runner="distill")


def _cells(ctx: Context, pairs: Sequence[tuple[str, str]], chosen) -> dict[str, list[Cell]]:
  p = preset(ctx)
  folds = folds_of(p.folds, chosen, p.num_folds)
  return {f"{v}/{b}": [cell(ctx, v, b, f) for f in folds] for v, b in pairs}


def _class_rows(t: render.Table, label: str, res: Sequence[CellResult],
                paper: Mapping[str, Mapping[str, float]]) -> None:
  for c in BLEND_CLASSES:
    figs = {m: render.figure(res, f"per_class/{c}/{m}") for m in METRICS}
    pc = paper.get(c, {})
    t.rows.append([label, c] + [figs[m].text() for m in METRICS]
                  + [render.num(pc.get(m), 3) for m in METRICS])
    row: dict[str, Any] = {"row": label, "class": c}
    for m in METRICS:
      row.update(render.csv_figure(m, figs[m]))
      if m in pc:
        row[f"paper_{m}"] = pc[m]
    t.csv_rows.append(row)


_COLUMNS = ["model", "class", "sensitivity", "specificity", "F1", "AUC", "paper sensitivity",
            "paper specificity", "paper F1", "paper AUC"]
_ABOUT = ("Ours: mean ± sd over the folds' test slices [95 % t-CI of the mean]; one fold: value "
          "[95 % bootstrap CI over its test slices]. One-vs-rest per class, prediction = argmax "
          "of the softmax, the last SKD round's best checkpoint by validation blend-sign F1. "
          "Differences: the plain and Nadeau & Bengio's corrected paired t-test over folds "
          "(the corrected one decides \"resolved\"), or with one fold the paired bootstrap "
          "on the test slices.")


def _r(results: Mapping[str, CellResult], cells: Sequence[Cell]) -> list[CellResult]:
  return [results[c.key] for c in cells]


def _split_config(ctx: Context):
  """The config of the preset's first cell with every override (the folds it splits by)."""
  from ctjax.tables.grid import build_config
  return build_config(cell(ctx, "wce_at_skd", "resnet50", preset(ctx).folds[0]), ctx)


def _about(ctx: Context) -> str:
  return _ABOUT + f" Folds — {render.protocol_text(_split_config(ctx))}."


def _ratio(ctx: Context) -> float:
  return render.test_train_ratio(_split_config(ctx))


def table3(ctx: Context, command: str, chosen=None) -> Spec:
  """Table 3: WCE, + auxiliary detection task, + self-knowledge distillation."""
  g = _cells(ctx, [(v, "resnet50") for v, _ in VARIANTS], chosen)

  def make(results, out_dir):
    t = render.Table("blend_table3", "Blend-sign paper, Table 3: the ablation with ResNet-50 "
                     "(weighted CE, + auxiliary detection task, + self-knowledge distillation)",
                     command, ctx.preset, _COLUMNS, about=_about(ctx))
    for v, label in VARIANTS:
      res = _r(results, g[f"{v}/resnet50"])
      t.cells += res
      _class_rows(t, label, res, PAPER_TABLE3[v])
    for a, b, la, lb in (("wce_at_skd", "wce", "WCE + AT + SKD", "WCE"),
                         ("wce_at", "wce", "WCE + AT", "WCE"),
                         ("wce_at_skd", "wce_at", "WCE + AT + SKD", "WCE + AT")):
      comps = render.compare(_r(results, g[f"{a}/resnet50"]), _r(results, g[f"{b}/resnet50"]),
                             COMPARED, kind="blend", names=BLEND_CLASSES, n_boot=ctx.n_boot,
                             seed=ctx.seed, test_train_ratio=_ratio(ctx))
      paper = {}
      for k in COMPARED:
        _, c, m = k.split("/")
        pa, pb = PAPER_TABLE3[a].get(c, {}).get(m), PAPER_TABLE3[b].get(c, {}).get(m)
        if pa is not None and pb is not None:
          paper[k] = pa - pb
      t.notes.append(render.comparison_text(la, lb, comps, COMPARED_NAMES,
                                           paper=paper or None, unit="slices"))
    return t

  return Spec("blend_table3", "Table 3", [c for cs in g.values() for c in cs], make)


def table4(ctx: Context, command: str, chosen=None) -> Spec:
  """Table 4: VGG16 / ResNet-50 / Inception v3 backbones (WCE + AT + SKD)."""
  g = _cells(ctx, [("wce_at_skd", b) for b, _ in BACKBONES], chosen)

  def make(results, out_dir):
    t = render.Table("blend_table4", "Blend-sign paper, Table 4: pretrained backbones "
                     "(WCE + AT + SKD)", command, ctx.preset, _COLUMNS,
                     about=_about(ctx) + " The paper prints this table as an image; its text says "
                     "only that \"there are slight differences among different pre-trained "
                     "backbones\" (no numbers to put beside ours).")
    for b, label in BACKBONES:
      res = _r(results, g[f"wce_at_skd/{b}"])
      t.cells += res
      _class_rows(t, label, res, {})
    if ctx.preset == "cpu":
      t.notes.append("Each backbone fine-tunes its own ImageNet stand-in, pretrained by one "
                     "recipe on separately seeded blend phantoms "
                     "(`configs/pretrain_blend_phantom.py:backbone=…`, shipped as "
                     "`<backbone>_w0125_blend_phantom.npz`): 1/8 of each network's channels.")
    # The paper's finding: "slight differences among different pre-trained backbones".
    base = _r(results, g["wce_at_skd/resnet50"])
    for b, label in BACKBONES:
      if b == "resnet50":
        continue
      comps = render.compare(_r(results, g[f"wce_at_skd/{b}"]), base, COMPARED, kind="blend",
                             names=BLEND_CLASSES, n_boot=ctx.n_boot, seed=ctx.seed,
                             test_train_ratio=_ratio(ctx))
      t.notes.append(render.comparison_text(label, "ResNet-50", comps, COMPARED_NAMES,
                                           unit="slices"))
    return t

  return Spec("blend_table4", "Table 4", [c for cs in g.values() for c in cs], make)


def figure6(ctx: Context, command: str, chosen=None) -> Spec:
  """Figure 6: confusion matrices of the Table 3 variants."""
  g = _cells(ctx, [(v, "resnet50") for v, _ in VARIANTS], chosen)

  def make(results, out_dir):
    t = render.Table("blend_figure6", "Blend-sign paper, Figure 6: confusion matrices of the "
                     "Table 3 variants", command, ctx.preset,
                     ["model", "true class", "→ non_ich", "→ normal_ich", "→ blend_sign",
                      "paper (quoted shares)"],
                     about="Shares of each true class's test slices predicted as each class, "
                     "the test folds pooled. The figure draws them as the paper does (rows = "
                     "predicted, columns = true class; each column sums to 1).")
    fig, axes = render.new_figure(width=12, height=4, ncols=len(VARIANTS))
    k = len(BLEND_CLASSES)
    for ax, (v, label) in zip(np.atleast_1d(axes), VARIANTS):
      res = _r(results, g[f"{v}/resnet50"])
      t.cells += res
      p = render.pooled(res, ["label", "probs"])
      cm = metrics_lib.confusion_matrix(p["label"], np.argmax(p["probs"], 1), k)  # rows truth
      frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
      for i, c in enumerate(BLEND_CLASSES):
        quoted = "; ".join(f"→ {pc}: {s:.2f}" for (tc, pc), s in PAPER_FIGURE6[v].items()
                           if tc == c)
        t.rows.append([label, f"{c} ({int(cm[i].sum())})"]
                      + [f"{frac[i, j]:.2f}" for j in range(k)] + [quoted or "—"])
        t.csv_rows.append({"model": v, "true": c, "n": int(cm[i].sum()),
                           **{f"pred_{pc}": float(frac[i, j])
                              for j, pc in enumerate(BLEND_CLASSES)}})
      shown = frac.T    # the paper's layout: rows = predicted, columns = truth
      ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
      for i in range(k):
        for j in range(k):
          ax.text(j, i, f"{shown[i, j]:.2f}\n({int(cm[j, i])})", ha="center", va="center",
                  color="white" if shown[i, j] > 0.5 else "black", fontsize=8)
      ax.set_xticks(range(k), BLEND_CLASSES, fontsize=8)
      ax.set_yticks(range(k), BLEND_CLASSES, fontsize=8)
      ax.set(xlabel="true class", ylabel="predicted", title=label)
    t.figures.append(render.save(fig, out_dir / "blend_figure6.png"))
    return t

  return Spec("blend_figure6", "Figure 6", [c for cs in g.values() for c in cs], make)


SPECS = {"blend_table3": table3, "blend_table4": table4, "blend_figure6": figure6}
