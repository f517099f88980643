"""README.md stays true where it can be checked against the repository.

- Every `python -m ctjax.X …` line (code blocks and inline code) names a command that exists; a
  concrete line parses as that command parses it (flags, config file and its arguments,
  `--config.a.b=value` overrides), with the command's work itself not run; a usage line with
  placeholders (`<name>`, `…`, `a|b`, `[--flag]`) or a flag named in passing
  (`python -m ctjax.prepare --qa`) uses only flags the command defines.
- Every config file named (`configs/x.py`, the Configs table's `x.py`, with the `:arg` variants
  named beside it) loads; every relative link, image and repository path named exists.
- Every figure quoted from a committed result equals that file's value at the digits printed:
  each "mean ± sd" and "[lo, hi]" interval appears in docs/ as written, and each entry of
  QUOTES below finds its figures in the README (by a pattern, whitespace-insensitive, never a
  line number) and compares them with the file they come from.

When the README is rewritten and a pattern of QUOTES no longer matches, the test names it:
change the pattern (or drop the entry with the figure), never the figure's source.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import pathlib
import re
import shlex
from typing import Any, Callable, Optional

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)


def _text() -> str:
  return README.read_text(encoding="utf-8")


def _flat(text: str) -> str:
  """Whitespace runs as one space, the typographic minus as '-': patterns ignore line breaks."""
  return " ".join(text.replace("\u2212", "-").replace("\u2013", "-").split())


# ------------------------------------------------------------------------------ command lines

def command_lines(text: str) -> list[str]:
  """Every `python -m ctjax.X …` command in code blocks and inline code, one string each."""
  found = []
  for block in FENCE.findall(text):
    for line in block.replace("\\\n", " ").splitlines():
      for m in re.finditer(r"python3? -m ctjax\.\w+", line):
        found.append(_cut(line[m.start():]))
  inline = FENCE.sub("", text)
  for span in re.findall(r"`([^`]+)`", inline):
    span = " ".join(span.split())
    for m in re.finditer(r"python3? -m ctjax\.\w+", span):
      found.append(_cut(span[m.start():]))
  return found


def _cut(command: str) -> str:
  """The command alone: up to a shell operator, a comment or the next command."""
  command = re.split(r"\s(?:&&|;|#|\|\||&$)|\s&\s|;\s|\s>\s?|\s2>", command)[0]
  nxt = re.search(r"\s(?:python3? |pip |cd |XLA_FLAGS=)", command)
  return (command[:nxt.start()] if nxt else command).strip().rstrip("&\"").strip()


PLACEHOLDER = re.compile(r"<[^>]*>|…|\.\.\.|\w\|\w")


def _split(command: str) -> tuple[str, list[str], bool]:
  """(command name, argv after it, whether the line is a usage line with placeholders)."""
  tokens = shlex.split(command)
  assert tokens[1] == "-m" and tokens[2].startswith("ctjax."), command
  usage = bool(PLACEHOLDER.search(command)) or "[" in command
  argv = [t for t in (t.strip("[]") for t in tokens[3:]) if t]
  return tokens[2].split(".", 1)[1], argv, usage


def _runnable(name: str) -> bool:
  """`python -m ctjax.<name>` has a module to run (a module or a package's __main__)."""
  spec = importlib.util.find_spec(f"ctjax.{name}")
  if spec is None:
    return False
  return not spec.submodule_search_locations or importlib.util.find_spec(
      f"ctjax.{name}.__main__") is not None


def _defined_flags(name: str, capsys) -> set[str]:
  """The flags `python -m ctjax.<name> --help` lists (booleans also as --no<flag>)."""
  command = importlib.import_module(f"ctjax.commands.{name}")
  capsys.readouterr()
  assert command.main(["--help"]) == 0
  names = set(re.findall(r"^  --(\w+):", capsys.readouterr().out, re.M))
  return names | {f"no{n}" for n in names}


def _parse_only(name: str, argv: list[str], monkeypatch) -> tuple[int, Optional[dict]]:
  """`main(argv)` of the command with its flags and config parsed for real and its work
  replaced by a recorder: (exit status, what the work would have received)."""
  from ctjax.commands import cli
  real, seen = cli.run, {}

  def run(fn, argv=None, **kwargs):
    def record(fv, config, args):
      seen.update(flags={k: fv[k].value for k in fv}, config=config, args=args)
      return 0
    return real(record, argv, **kwargs)

  monkeypatch.setattr(cli, "run", run)
  command = importlib.import_module(f"ctjax.commands.{name}")
  status = command.main(argv)
  monkeypatch.setattr(cli, "run", real)
  return status, seen or None


def test_the_readme_has_commands_to_check():
  names = {_split(c)[0] for c in command_lines(_text())}
  assert {"train", "evaluate", "synth", "report", "predict"} <= names, names


@pytest.mark.parametrize("command", sorted(set(command_lines(_text()))))
def test_every_command_line_parses(command, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)   # config files are named relative to the checkout
  name, argv, usage = _split(command)
  assert _runnable(name), f"README runs `python -m ctjax.{name}`, which does not exist"
  if not argv:   # the command named, not run
    return
  # A usage line, or a flag named in passing (`python -m ctjax.prepare --qa`): flags it defines.
  if usage or all(a.startswith("--") and "=" not in a for a in argv):
    defined = _defined_flags(name, capsys)
    used = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    used = {u for u in used if not u.startswith("config.")}
    assert used <= defined, f"{command}: undefined flag(s) {sorted(used - defined)}"
    return
  status, seen = _parse_only(name, argv, monkeypatch)
  err = capsys.readouterr().err
  assert status == 0 and seen is not None, f"{command}: {err.strip()}"


# ------------------------------------------------------------------- configs, files and links

def _config_mentions(text: str) -> list[tuple[str, Optional[str]]]:
  """(configs/x.py, its argument or None) for every config file the README names."""
  out = [(f"configs/{m.group(1)}.py", m.group(2))   # `x.py:key=…` (a placeholder): the file only
         for m in re.finditer(r"(?<![\w/])configs/(\w+)\.py(?::([\w=,.]*\w)(?![=…<]))?", text)]
  section = re.search(r"^## Configs\n(.*?)(?=^## )", text, re.S | re.M)
  if section:
    for row in re.findall(r"^\| (.*) \|$", section.group(1), re.M):
      cells = row.split(" | ")
      files = re.findall(r"`(\w+\.py)`", cells[0])
      out += [(f"configs/{f}", None) for f in files]
      # `:arg` / `:key=a|b` variants in the description apply to the row's first file.
      for arg in re.findall(r"`:([\w=|]+)`", " ".join(cells[1:])):
        key, _, values = arg.partition("=")
        for v in values.split("|") if values else [""]:
          out.append((f"configs/{files[0]}", f"{key}={v}" if v else key))
  return out


def test_every_config_named_exists_and_loads():
  from ctjax.configs.common import load_config_file
  mentions = _config_mentions(_text())
  assert len({p for p, _ in mentions}) >= 8, mentions
  for path, arg in sorted(set(mentions), key=str):
    assert (ROOT / path).is_file(), f"README names {path}, which does not exist"
    load_config_file(ROOT / path, arg)   # raises (ConfigError, …) on an unknown argument


def _expand_braces(path: str) -> list[str]:
  m = re.search(r"\{([^}]*)\}", path)
  if not m:
    return [path]
  return [p for alt in m.group(1).split(",")
          for p in _expand_braces(path[:m.start()] + alt + path[m.end():])]


def _repository_paths(text: str) -> list[str]:
  tops = "ctjax|configs|docs|benchmarks|tests"   # the checkout's folders, not a user's runs/
  paths = [m.group(1).split("#")[0] for m in re.finditer(r"\]\(([^)\s]+)\)", text)
           if not re.match(r"[a-z]+:|#", m.group(1))]
  for span in re.findall(r"`([^`]+)`", FENCE.sub("", text)):
    for token in span.split():
      token = token.strip("(),;'\"")
      if re.match(rf"(?:{tops})/[\w./*{{}},-]*$", token) and "<" not in token:
        paths.append(token)
  return [p for p in paths if p]


def test_every_path_and_link_exists():
  paths = _repository_paths(_text())
  assert any(p.startswith("docs/") for p in paths) and any(p.startswith("ctjax/") for p in paths)
  missing = [p for p in paths for q in _expand_braces(p) if not glob.glob(str(ROOT / q))]
  assert not missing, f"README names paths that do not exist: {missing}"


def test_every_module_named_resolves():
  names = set(re.findall(r"`(ctjax(?:\.\w+)+)", FENCE.sub("", _text())))
  assert names
  unresolved = []
  for name in sorted(names):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
      try:
        if importlib.util.find_spec(".".join(parts[:cut])) is not None:
          break
      except ModuleNotFoundError:   # a prefix is a module, not a package
        continue
    obj: Any = importlib.import_module(".".join(parts[:cut]))
    for attr in parts[cut:]:
      if not hasattr(obj, attr):
        unresolved.append(name)
        break
      obj = getattr(obj, attr)
  assert not unresolved, f"README names what the package lacks: {unresolved}"


# ------------------------------------------------------------------------------------ figures

def _docs_text() -> str:
  return _flat("\n".join(p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("docs/**/*.md"))))


def test_every_interval_quoted_appears_in_the_docs_as_written():
  readme, docs = _flat(_text()), _docs_text() + _job_intervals()
  spread = re.findall(r"[+-]?\d+\.\d+ ± \d+\.\d+", readme)
  intervals = re.findall(r"\[[+-]?\d+\.\d+, [+-]?\d+\.\d+\]", readme)
  assert spread and intervals
  missing = [q for q in spread + intervals if q not in docs]
  assert not missing, f"README quotes figures found in no file under docs/: {missing}"


def _job_intervals() -> str:
  """The README job's 95 % intervals as the README prints them (its record is JSON)."""
  cis = _json(JOB)["best_checkpoint_ci95"]
  return " ".join(f"[{c['lo']:.3f}, {c['hi']:.3f}]" for c in cis.values() if c["lo"] is not None)


def _number(text: str) -> tuple[float, int]:
  """(value, decimals printed) of '1,000', '−0.132', '9.3', '+0.013'."""
  text = text.replace(",", "").replace("\u2212", "-")
  return float(text), len(text.split(".")[1]) if "." in text else 0


def _md_table(path: str, first: str, *, column: str, where: Callable[[dict], bool],
              token: int = 0) -> str:
  """In the docs table whose header starts with `first`, the first row for which `where(row)`
  holds: its `column` cell's `token`-th word ('0.837 ± 0.048 [..]': 0 the mean, 2 the sd)."""
  lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
  for i, line in enumerate(lines):
    if line.startswith(f"| {first} |"):
      header = [c.strip() for c in line.strip("|").split("|")]
      for row in lines[i + 2:]:
        if not row.startswith("|"):
          break
        cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|"))))
        if where(cells):
          return cells[column].split()[token]
  raise AssertionError(f"{path}: no row for this quote in the table headed {first!r}")


def _md_sentence(path: str, pattern: str) -> tuple[str, ...]:
  m = re.search(pattern, _flat((ROOT / path).read_text(encoding="utf-8")))
  assert m, f"{path}: {pattern!r} not found"
  return m.groups()


def _compiled(target: str, key: str, field: str) -> float:
  """A field of the compiled row `key` ("program-variant") of compiled-<target>.jsonl."""
  for line in (ROOT / f"benchmarks/results/compiled-{target}.jsonl").read_text().splitlines():
    row = json.loads(line)
    if f"{row['program']}-{row['variant']}" == key and "error" not in row:
      return float(row[field])
  raise AssertionError(f"compiled-{target}.jsonl: no row {key}")


def _compiled_floor(target: str, key: str) -> float:
  """The floor as the table prints it: ms below one second, else s."""
  floor = _compiled(target, key, "floor_s")
  return floor * 1e3 if floor < 1 else floor


def _json(path: str) -> Any:
  return json.loads((ROOT / path).read_text())


def _record(path: str, name: str, key: str = "value") -> float:
  return next(r[key] for r in _json(path)["records"] if r["name"] == name)


def _memory(path: str, chunk: int, key: str) -> float:
  return next(r[key] for r in _json(path)["rows"] if r["backbone_chunk"] == chunk) / 1e9


def _infer_range(key: str) -> list[float]:
  files = sorted(glob.glob(str(ROOT / "benchmarks/results/full-cpu-drct2-infer-*.json")))
  values = [next(r[key] for r in json.loads(pathlib.Path(f).read_text())["records"]
                 if r["name"] == "drct2/s_per_scan/fp32") for f in files]
  return [min(values), max(values)]


RSNA3 = "docs/tables/drct2_table3.md"
BLEND3, BLEND4 = "docs/tables/blend_table3.md", "docs/tables/blend_table4.md"
SCALE, SMALL = "benchmarks/results/scale-cpu.json", "benchmarks/results/cpu-small-current.json"
SMALL_BLEND = "benchmarks/results/cpu-small-current-blend.json"
JOB = "benchmarks/results/readme-job-cpu.json"   # the README's first command, as run
N = r"([+-]?\d[\d,]*(?:\.\d+)?)"   # one quoted figure

# (what, README pattern with one group per figure, the figures as the source has them)
QUOTES: list[tuple[str, str, Callable[[], list[Any]]]] = [
    ("DrCT2 vs DrCT1 test macro-F1, RSNA-layout phantom folds",
     rf"DrCT2 has test macro-F1 {N} ± {N} against DrCT1's {N} ± {N}",
     lambda: [_md_table(RSNA3, "data set", column="F1", token=t,
                        where=lambda r, m=m: r["data set"].startswith("RSNA") and r["model"] == m)
              for m in ("DrCT2", "DrCT1") for t in (0, 2)]),
    ("DrCT2 - DrCT1 ΔF1, its paired and its corrected t-test, RSNA-layout phantom",
     rf"ΔF1 {N}, paired t-test P = {N}, Nadeau & Bengio's corrected t-test P = {N}",
     lambda: _md_sentence(RSNA3, r"RSNA-layout phantom: \*\*DrCT2 - DrCT1\.\*\*.*?ΔF1: (\S+) "
                          r"over \d+ folds: paired t-test \[\S+, \S+\], P = ([\d.]+); "
                          r"corrected t-test \[\S+, \S+\], P = ([\d.]+)")),
    ("DrCT2 - DrCT1 with a BCE head: ΔF1 and the corrected t-test, RSNA-layout phantom",
     rf"the loss of DrCT2's output, ΔF1 {N}, corrected P = {N}\)",
     lambda: _md_sentence(RSNA3, r"RSNA-layout phantom: \*\*DrCT2 - DrCT1 \(BCE head\)\.\*\*"
                          r".*?ΔF1: (\S+) over \d+ folds: paired t-test \[\S+, \S+\], "
                          r"P = [\d.]+; corrected t-test \[\S+, \S+\], P = ([\d.]+)")),
    ("the section VII test over both sets' folds, plain and corrected",
     rf"over both sets' 10 folds gives F1 P = {N} \(corrected {N}\)",
     lambda: _md_sentence(RSNA3, r"section VII t-test; the paper does not say over which "
                          r"folds\):\*\*.*? F1 Δ \S+: paired t-test \[\S+, \S+\], "
                          r"P = ([\d.]+); corrected \[\S+, \S+\], P = ([\d.]+)")),
    ("CQ500-layout phantom macro-F1 of DrCT2 / DrCT1",
     rf"too small to order the models \(F1 {N} / {N};",
     lambda: [_md_table(RSNA3, "data set", column="F1",
                        where=lambda r: r["data set"].startswith("CQ500") and r["model"] == m)
              for m in ("DrCT2", "DrCT1")]),
    ("Figure 6: mkey values where attention beats random",
     rf"attention above random selection at {N} of {N} mkey values",
     lambda: _md_sentence("docs/tables/drct2_figure6.md",
                          r"CI \(no interval where too few positives\): above 0 at (\d+) of "
                          r"(\d+) mkey values")),
    ("blend Table 3 blend-sign sensitivity per model, and the paper's",
     rf"blend-sign sensitivity WCE {N} → \+ AT {N} → \+ AT \+ SKD {N} \(paper {N} → {N}\)",
     lambda: [*(_md_table(BLEND3, "model", column="sensitivity",
                          where=lambda r, m=m: r["model"] == m and r["class"] == "blend_sign")
                for m in ("WCE", "WCE + AT", "WCE + AT + SKD")),
              *(_md_table(BLEND3, "model", column="paper sensitivity",
                          where=lambda r, m=m: r["model"] == m and r["class"] == "blend_sign")
                for m in ("WCE", "WCE + AT + SKD"))]),
    ("blend Table 3: + AT + SKD over WCE",
     rf"\+ AT \+ SKD over WCE {N} \[{N}, {N}\]",
     lambda: _md_sentence(BLEND3, r"\*\*WCE \+ AT \+ SKD - WCE\.\*\* Δblend_sign sensitivity: "
                          r"pooled test slices (\S+) \[(\S+), (\S+)\]")),
    ("blend Table 4: blend-sign sensitivity per backbone",
     rf"Table 4: blend-sign sensitivity VGG16 {N}, ResNet-50 {N}, Inception v3 {N}",
     lambda: [_md_table(BLEND4, "model", column="sensitivity",
                        where=lambda r, m=m: r["model"] == m and r["class"] == "blend_sign")
              for m in ("VGG16", "ResNet-50", "Inception v3")]),
    ("blend Table 4: Inception v3 - ResNet-50 normal-ICH sensitivity",
     rf"normal-ICH sensitivity of Inception v3 {N} below ResNet-50's",
     lambda: [_md_sentence(BLEND4, r"\*\*Inception v3 - ResNet-50\.\*\*.*?Δnormal_ich "
                           r"sensitivity: pooled test slices -(\S+) ")[0]]),
    ("memory at the paper's size, per device",
     rf"\| 1 device \| 64 \| {N} GB \| {N} GB \| \| 8 devices \(32 scans each\) \| 64 \| {N} GB "
     rf"\| {N} GB \| \| 8 devices \| 16 \| {N} GB \| {N} GB \| \| 8 devices \| unchunked \| {N} "
     rf"GB \| {N} GB \|",
     lambda: [_memory("benchmarks/results/memory-paper-1dev-cpu.json", 64, "temp_bytes"),
              _memory("benchmarks/results/memory-paper-1dev-cpu.json", 64, "argument_bytes"),
              _memory("benchmarks/results/memory-paper-8dev-cpu.json", 64, "temp_bytes"),
              _memory("benchmarks/results/memory-paper-8dev-cpu.json", 64, "argument_bytes"),
              _memory("benchmarks/results/memory-paper-8dev-cpu.json", 16, "temp_bytes"),
              _memory("benchmarks/results/memory-paper-8dev-cpu.json", 16, "argument_bytes"),
              _memory("benchmarks/results/memory-paper-8dev-cpu-unchunked.json", 0,
                      "temp_bytes"),
              _memory("benchmarks/results/memory-paper-8dev-cpu-unchunked.json", 0,
                      "argument_bytes")]),
    *[(f"data-set scale at {n:,} scans",
       rf"\| {n:,} \| {N} \({N} MB\) \| {N} \({N} MB\) \| {N} \({N} MB\) \|",
       lambda n=n: [_record(SCALE, f"scale/{stage}/n{n}{part}")
                    for stage in ("store", "heads", "e2e") for part in ("", "/peak_rss")])
      for n in (250, 500, 1000)],
    ("data-set scale: host memory per 1k scans, store and heads",
     rf"\(\+{N} MB per 1k scans: each HU shard .*?\(\+{N} MB per 1k scans",
     lambda: [_record(SCALE, "scale/store/rss_slope"), _record(SCALE, "scale/heads/rss_slope")]),
    ("data-set scale: the store for RSNA on these cores",
     rf"the store for RSNA's 874k slices would take {N} h",
     lambda: [_json(SCALE)["summary"]["store"]["rsna_build_hours"]]),
    *[(f"cpu-small: {label}", rf"\| {re.escape(label)} \| {N} \| {N} \| {N} \|",
       lambda path=path, name=name: [_record(path, name), _record(path, name, "torch_value"),
                                     _record(path, name, "ratio_vs_torch")])
      for label, path, name in [
          ("DrCT2 inference fp32, scans/s", SMALL, "drct2/infer/fp32"),
          ("DrCT2 train step fp32, scans/s", SMALL, "drct2/train_step/fp32"),
          ("DrCT2 from raw DICOM, decode included, scans/s", SMALL, "drct2/infer_dicom/fp32")]],
    ("cpu-small: DrCT2 inference bf16",
     rf"\| DrCT2 inference bf16, scans/s \([^)]*\) \| {N} \| {N} \| {N} \|",
     lambda: [_record(SMALL, "drct2/infer/bf16"), _record(SMALL, "drct2/infer/bf16", "torch_value"),
              _record(SMALL, "drct2/infer/bf16", "ratio_vs_torch")]),
    ("cpu-small: blend-sign inference / training",
     rf"\| blend-sign inference / training fp32, slices/s \| {N} / {N} \| {N} / {N} \| {N} / {N} \|",
     lambda: [_record(SMALL_BLEND, f"blend/{k}/fp32", key) for key in
              ("value", "torch_value", "ratio_vs_torch") for k in ("infer", "train")]),
    ("DrCT2 inference at the paper's sizes, s/scan, ctjax and PyTorch",
     rf"DrCT2 inference took {N}-{N} s/scan fp32 on these cores \(PyTorch {N}-{N};",
     lambda: [*_infer_range("value"), *_infer_range("torch_value")]),
    *[(f"compiled estimates: {label}",
       rf"\| {re.escape(label)} \| {re.escape(target_name)} \| {N} GiB \| {N} \| {N} (?:ms|s) \| "
       rf"{N} (?:scans|slices)/s \|",
       lambda target=target, key=key: [
           _compiled(target, key, "peak_bytes") / 2**30, _compiled(target, key, "launches"),
           _compiled_floor(target, key), _compiled(target, key, "items_per_s_floor")])
      for label, target_name, target, key in [
          ("DrCT2 train step end to end, batch 256, backbone chunk 64", "H100 SXM", "h100",
           "drct2/train_e2e-b256-chunk64"),
          ("same", "H200", "h200", "drct2/train_e2e-b256-chunk64"),
          ("same, sharded over 8 chips", "TPU v5e-8", "tpu-v5e-8", "drct2/train_e2e-b256-chunk64"),
          ("DrCT2 inference, batch 1", "H100 SXM", "h100", "drct2/infer-b1"),
          ("blend-sign training, 512², batch 64", "H100 SXM", "h100", "blend/train-b64-bf16")]],
    ("compiled estimates: head training from the store, H100",
     rf"\| DrCT2 head training from the feature store, batch 256 \| H100 SXM \| {N} GiB \| {N} \|",
     lambda: [_compiled("h100", "drct2/train_store-b256", "peak_bytes") / 2**30,
              _compiled("h100", "drct2/train_store-b256", "launches")]),
    ("compiled estimates: head training launches with the XLA GRU",
     rf"\(`config.model.gru_kernel=auto`; {N} with `xla`",
     lambda: [_compiled("h100", "drct2/train_store-b256-xla_gru", "launches")]),
    ("bfloat16 against float32 on the README job's test fold",
     rf"test macro-F1 {N} in float32 and {N} in bfloat16 \(macro-AUC {N} / {N}\); the "
     rf"probabilities differ by {N} on average and {N} at most, and {N} of {N} label calls flips",
     lambda: [(r := _json("benchmarks/results/precision-cpu.json"))["macro_f1"]["float32"],
              r["macro_f1"]["bfloat16"], r["macro_auc"]["float32"], r["macro_auc"]["bfloat16"],
              r["mean_abs_dp"], r["max_abs_dp"], r["calls_flipped"], r["calls"]]),
    ("the README job: wall time, load and peak memory",
     rf"\*\*{N}:{N}\*\* wall at a load average of {N}-{N} on the 2 cores .*? peak RSS {N} GB",
     lambda: [*(r := _json(JOB))["train_wall"].split(".")[0].split(":"),
              r["load_average_1min"]["min"], r["load_average_1min"]["max"],
              r["train_peak_rss_gb"]]),
    ("the README job: the final state's test row",
     rf"\| DrCT2 \| {N} \| {N} \| {N} \| {N} \| {N} \| {N} \| \*\*{N}\*\* \| {N} \|",
     lambda: [*(f := _json(JOB)["final_state"])["f1"].values(), f["macro_f1"], f["macro_auc"]]),
    ("the README job: the best checkpoint on the test fold",
     rf"step {N}, is the one `ctjax.evaluate` and the report load: test macro-F1 {N} \[{N}, {N}\], "
     rf"macro-AUC {N}",
     lambda: [(b := _json(JOB)["best_checkpoint_test"])["step"], b["macro_f1"],
              _json(JOB)["best_checkpoint_ci95"]["macro_f1"]["lo"],
              _json(JOB)["best_checkpoint_ci95"]["macro_f1"]["hi"], b["macro_auc"]]),
    ("the README job: key-slice tasks",
     rf"\| ctjax DrCT2, phantoms \| {N} % \({N} scans\) \| {N} % \({N}\) \| {N} % \({N}\) \|",
     lambda: [_json(JOB)["best_checkpoint_test"][k] * (100 if "num" not in k else 1) for k in (
         "keyslice/easy", "keyslice/num_easy", "keyslice/difficult", "keyslice/num_difficult",
         "keyslice/comprehensive", "keyslice/num_comprehensive")]),
    ("the README job: the highlight",
     rf"sums to {N} % of that of scans with one, and {N} % of the drawn highlight lies inside the "
     rf"lesions' boxes \({N}× a uniform map's {N} %",
     lambda: [(b := _json(JOB)["best_checkpoint_test"])["highlight/key_sum_ratio"] * 100,
              b["highlight/pointing/mass"] * 100,
              b["highlight/pointing/mass"] / b["highlight/pointing/chance"],
              b["highlight/pointing/chance"] * 100]),
    ("prepare: files per CPU-second at 16 and 512 px, memory per file",
     rf"It reads about {N} RSNA-layout files per CPU-second at 16 px and {N} at 512 px; its "
     rf"memory grows about {N} KB per file",
     lambda: [round(sum(r["files_per_cpu_s"] for r in _json(
         "benchmarks/results/prepare_memory.json")["rows"]) / 3, -1),   # "about": to tens
              _json("benchmarks/results/prepare_memory_512.json")["rows"][0]["files_per_cpu_s"],
              _json("benchmarks/results/prepare_memory.json")["kb_per_file"]]),
]


def _agrees(quoted: str, source: Any) -> bool:
  """The source's value rounds to the quote at the digits the quote prints."""
  value, decimals = _number(quoted)
  source = _number(source)[0] if isinstance(source, str) else float(source)
  return abs(source - value) <= 10 ** -decimals / 2 + 1e-9


@pytest.mark.parametrize("what, pattern, source", QUOTES, ids=[q[0] for q in QUOTES])
def test_quoted_figure_equals_its_source(what, pattern, source):
  m = re.search(pattern, _flat(_text()))
  assert m, (f"README no longer quotes {what!r} in the form tests/test_readme.py looks for "
             f"({pattern!r}): change the pattern to the new wording, or drop the entry")
  expected = list(source())
  assert len(expected) == len(m.groups()), (what, expected)
  wrong = [(q, e) for q, e in zip(m.groups(), expected) if not _agrees(q, e)]
  assert not wrong, f"{what}: README quotes / source gives {wrong}"
