"""DrCT2's sequence-level interpretive evaluation (paper section IV, Algorithm 1; Tables 5, 6).

The model's slice attention ranks the m sampled slices of a scan; a good model puts the slices
that show a lesion at the top. Three tasks score that ranking per scan and average over scans:

* easy: scans with h >= 5 lesion slices; score = (lesion slices among the top 5) / 5.
* difficult: scans with 1 <= h <= 5 lesion slices; score = 1 if the top 5 hold any lesion slice.
* comprehensive: scans with h >= 1; score = (lesion slices among the top h) / h.

A scan with exactly 5 lesion slices belongs to both easy and difficult, as the paper's wording
("five or more" / "five or fewer") says; its Table 5 agrees: 6,529 easy + 1,759 difficult =
8,288 > 7,855 comprehensive, so 433 scans were counted twice. Scans without lesion slices take
part in no task (Algorithm 1 averages over the scans of a task's data set U; none of the three
tasks can be scored without a lesion).

Lesion slices are counted on the sampled stack (the m slices the model saw), i.e. the batch's
`slice_labels`, which the data layer already maps through the sampled→source index. A source
slice drawn twice counts twice, as it does in the model's input.

Ties in attention are broken deterministically: equal values rank by slice position, lower
index first (a stable sort of the negated attention). `top_k_indices` is the one place this
rule lives; the HTML report uses it too, so the report shows the slices the score counted.

Table 6 ("for all slices that reflect a certain disease, how many slices our algorithm can
correctly pick out") is read as the comprehensive task per disease, pooled over slices: for
disease d, every scan with h_d >= 1 slices labelled d contributes |top-h_d ∩ lesion_d| hits and
h_d slices, and accuracy_d = Σ hits / Σ h_d. Two facts of the paper pin this reading down:
Table 6's "Amount" column counts slices (Any: 83,923 slices over 7,855 scans, about 10.7 per
scan), and its "Any" accuracy (78.23%) is above the scan-averaged comprehensive score (67.15%),
which pooling explains (scans with many lesion slices score higher and weigh more), while a
top-5 reading could not exceed 5 / 10.7 ≈ 47%. The scan-averaged value is returned alongside
(`macro`). The model has one slice attention for all labels, so every disease ranks by it.

`python -m ctjax.evaluate compare DrCT2=eval2.json DrCT1=eval1.json` prints measured figures (from
`python -m ctjax.evaluate --json` outputs) next to the paper's Tables 5 and 6.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

TOP_K = 5   # Algorithm 1: m_select = 5 for the easy and difficult tasks.

# Table 5 of the DrCT2 paper (RSNA, 28 slices per scan): scans per task and accuracy.
PAPER_TABLE5 = {
    "easy": {"scans": 6529, "DrCT1": 0.8159, "DrCT2": 0.8392},
    "difficult": {"scans": 1759, "DrCT1": 0.5876, "DrCT2": 0.6267},
    "comprehensive": {"scans": 7855, "DrCT1": 0.6572, "DrCT2": 0.6715},
}
# Table 6: key-slice accuracy per disease ("Amount" = lesion slices). Keys are RSNA label names.
PAPER_TABLE6 = {
    "epidural": {"slices": 2376, "DrCT1": 0.7790, "DrCT2": 0.7946},
    "intraparenchymal": {"slices": 28270, "DrCT1": 0.7670, "DrCT2": 0.7911},
    "intraventricular": {"slices": 20473, "DrCT1": 0.8071, "DrCT2": 0.8196},
    "subarachnoid": {"slices": 27784, "DrCT1": 0.8074, "DrCT2": 0.8096},
    "subdural": {"slices": 36672, "DrCT1": 0.8482, "DrCT2": 0.8484},
    "any": {"slices": 83923, "DrCT1": 0.7741, "DrCT2": 0.7823},
}
TASKS = ("easy", "difficult", "comprehensive")


def _check(attention: Any, lesion: Any) -> tuple[np.ndarray, np.ndarray]:
  attention = np.asarray(attention, dtype=np.float64)
  lesion = np.asarray(lesion)
  if attention.ndim != 2 or attention.shape != lesion.shape:
    raise ValueError(f"attention {attention.shape} and lesion {lesion.shape} must both be "
                     "[N, m] (scans × sampled slices)")
  if np.isnan(attention).any():
    raise ValueError("attention contains NaN; the ranking would be undefined")
  return attention, lesion.astype(bool)


def rank_slices(attention: Any) -> np.ndarray:
  """Slice indices by descending attention, ties by lower index first; int64 `[..., m]`."""
  attention = np.asarray(attention, dtype=np.float64)
  return np.argsort(-attention, axis=-1, kind="stable")


def top_k_indices(attention: Any, k: int = TOP_K) -> np.ndarray:
  """The k most attended slices of each scan (`[..., min(k, m)]`), in rank order."""
  return rank_slices(attention)[..., :k]


def per_scan_scores(attention: Any, lesion: Any, *, k: int = TOP_K) -> dict[str, np.ndarray]:
  """Algorithm 1's Score_i per scan and task; NaN where the scan is not in that task."""
  attention, lesion = _check(attention, lesion)
  n, m = attention.shape
  order = rank_slices(attention)
  hit_by_rank = np.take_along_axis(lesion, order, axis=1)      # [N, m] lesion at rank r
  hits_cum = np.cumsum(hit_by_rank, axis=1)                    # hits among the top r+1
  h = lesion.sum(axis=1)
  hits_k = hits_cum[:, min(k, m) - 1] if m else np.zeros(n, np.int64)
  hits_h = np.take_along_axis(hits_cum, np.maximum(h - 1, 0)[:, None], axis=1)[:, 0]
  nan = np.full(n, np.nan)
  return {
      "num_lesion_slices": h,
      "easy": np.where(h >= k, hits_k / k, nan),
      "difficult": np.where((h >= 1) & (h <= k), (hits_k > 0).astype(np.float64), nan),
      "comprehensive": np.where(h >= 1, hits_h / np.maximum(h, 1), nan),
      "hits_top_h": np.where(h >= 1, hits_h, 0),
  }


def key_slice_tasks(attention: Any, lesion: Any, *, valid: Optional[Any] = None,
                    k: int = TOP_K) -> dict[str, float]:
  """Easy / difficult / comprehensive accuracies (fractions; NaN when no scan qualifies).

  Args:
    attention: float `[N, m]`, each scan's slice attention over its m sampled slices.
    lesion: bool `[N, m]`, True where the sampled slice shows a lesion (e.g. RSNA "any").
    valid: optional bool `[N]`; False rows (eval padding) are ignored.
    k: m_select of the easy and difficult tasks (the paper's 5).
  Returns:
    {"easy", "difficult", "comprehensive": float, "num_easy", "num_difficult",
     "num_comprehensive": int, "num_scans": int (valid scans, with or without lesions)}.
  """
  attention, lesion = _check(attention, lesion)
  if valid is not None:
    keep = np.asarray(valid, dtype=bool)
    attention, lesion = attention[keep], lesion[keep]
  scores = per_scan_scores(attention, lesion, k=k)
  out: dict[str, float] = {}
  for task in TASKS:
    s = scores[task][~np.isnan(scores[task])]
    out[task] = float(s.mean()) if s.size else math.nan
    out[f"num_{task}"] = int(s.size)
  out["num_scans"] = int(attention.shape[0])
  return out


def per_disease_accuracy(attention: Any, slice_labels: Any, names: Sequence[str], *,
                         valid: Optional[Any] = None) -> dict[str, dict[str, float]]:
  """Table 6: per disease, the share of its lesion slices found in each scan's top h_d.

  Args:
    attention: float `[N, m]`.
    slice_labels: `[N, m, L]` (0/1 per sampled slice and label), label order `names`.
    names: the L label names.
    valid: optional bool `[N]`.
  Returns:
    {name: {"accuracy": pooled Σ hits / Σ h_d (the Table 6 figure), "macro": scan-averaged
     comprehensive score, "slices": Σ h_d, "scans": scans with h_d >= 1}}; NaN accuracies for a
    disease no scan shows.
  """
  labels = np.asarray(slice_labels)
  if labels.ndim != 3 or len(names) != labels.shape[-1]:
    raise ValueError(f"slice_labels {labels.shape} must be [N, m, L] with L = {len(names)}")
  out = {}
  for j, name in enumerate(names):
    scores = per_scan_scores(attention, labels[..., j] > 0)
    h, hits = scores["num_lesion_slices"], scores["hits_top_h"]
    if valid is not None:
      keep = np.asarray(valid, dtype=bool)
      h, hits, comp = h[keep], hits[keep], scores["comprehensive"][keep]
    else:
      comp = scores["comprehensive"]
    total = int(h.sum())
    comp = comp[~np.isnan(comp)]
    out[name] = {
        "accuracy": float(hits.sum() / total) if total else math.nan,
        "macro": float(comp.mean()) if comp.size else math.nan,
        "slices": total,
        "scans": int(comp.size),
    }
  return out


def key_slice_metrics(attention: Any, slice_labels: Any, names: Sequence[str], *,
                      lesion_label: str = "any", valid: Optional[Any] = None,
                      prefix: str = "keyslice/") -> dict[str, float]:
  """Flat metrics for `Task.summarize` / `python -m ctjax.evaluate` JSON.

  The lesion of the three tasks is `lesion_label`'s slice label when present (RSNA's "any"),
  else "any label on the slice" (e.g. CQ500-style label sets without an "any" column).
  """
  labels = np.asarray(slice_labels)
  names = list(names)
  if labels.ndim != 3 or labels.shape[-1] != len(names):
    raise ValueError(f"slice_labels {labels.shape} must be [N, m, L] with L = {len(names)}")
  if lesion_label in names:
    lesion = labels[..., names.index(lesion_label)] > 0
  else:
    lesion = (labels > 0).any(axis=-1)
  out = {f"{prefix}{k}": v for k, v in key_slice_tasks(attention, lesion, valid=valid).items()}
  for name, d in per_disease_accuracy(attention, labels, names, valid=valid).items():
    out[f"{prefix}{name}/accuracy"] = d["accuracy"]
    out[f"{prefix}{name}/macro"] = d["macro"]
    out[f"{prefix}{name}/slices"] = d["slices"]
  return out


def _pct(x: Optional[float]) -> str:
  return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def format_paper_comparison(measured: Mapping[str, Mapping[str, float]],
                            per_disease: Optional[Mapping[str, Mapping[str, Mapping[str, float]]]]
                            = None) -> str:
  """A plain-text table of measured key-slice figures next to the paper's Tables 5 and 6.

  Args:
    measured: model name ("DrCT1", "DrCT2", or any other) → `key_slice_tasks` output.
    per_disease: optional model name → `per_disease_accuracy` output.
  """
  models = list(measured)
  paper_models = ("DrCT1", "DrCT2")
  head = ["task", "scans"] + [f"{m} (ours)" for m in models] + [f"{m} (paper)" for m in
                                                              paper_models] + ["paper scans"]
  rows = [head]
  for task in TASKS:
    counts = "/".join(str(measured[m].get(f"num_{task}", "—")) for m in models)
    rows.append([task, counts] + [_pct(measured[m].get(task)) for m in models]
                + [_pct(PAPER_TABLE5[task][p]) for p in paper_models]
                + [f"{PAPER_TABLE5[task]['scans']:,}"])
  lines = ["Key-slice tasks (DrCT2 paper, Table 5)", _table(rows)]
  if per_disease:
    pmodels = list(per_disease)
    diseases = list(dict.fromkeys(d for m in pmodels for d in per_disease[m]))
    rows = [["disease", "slices"] + [f"{m} (ours)" for m in pmodels]
            + [f"{m} (paper)" for m in paper_models] + ["paper slices"]]
    for d in diseases:
      paper = PAPER_TABLE6.get(d)
      first = per_disease[pmodels[0]].get(d, {})
      rows.append([d, str(first.get("slices", "—"))]
                  + [_pct(per_disease[m].get(d, {}).get("accuracy")) for m in pmodels]
                  + [_pct(paper[p]) if paper else "—" for p in paper_models]
                  + [f"{paper['slices']:,}" if paper else "—"])
    lines += ["", "Key-slice accuracy per disease (DrCT2 paper, Table 6; pooled over slices)",
              _table(rows)]
  return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> str:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                            for i, (c, w) in enumerate(zip(r, widths)))
  return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]])


def from_metrics(metrics: Mapping[str, Any], prefix: str = "keyslice/"
                 ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """Inverse of `key_slice_metrics`: flat evaluate-JSON scalars → (tasks, per-disease)."""
  tasks: dict[str, float] = {}
  per: dict[str, dict[str, float]] = {}
  for key, value in metrics.items():
    if not key.startswith(prefix):
      continue
    rest = key[len(prefix):]
    if "/" in rest:
      name, field = rest.rsplit("/", 1)
      per.setdefault(name, {})[field] = value
    else:
      tasks[rest] = value
  return tasks, per
