"""Hostile and unlucky inputs, each tried through the command line → docs/hostile_inputs.md.

  python -m tests.e2e.hostile_inputs                      # every case, a few minutes on 2 cores
  python -m tests.e2e.hostile_inputs --only slope_nan,split_typo --out /tmp/table.md
  python -m tests.e2e.hostile_inputs --list

Builds tiny synthetic data sets (`python -m ctjax.synth`) and a tiny trained DrCT2 run (the
runlocal configs), applies one corruption at a time to a fresh copy (a header field, a CSV cell,
a file, a checkpoint, a full or read-only disk, a Ctrl-C, a killed process), runs the command a
user would run and records what happened: the exit status, the stderr line count (and whether a
traceback or a C++ stack dump is among them), the last stderr line and, where the exit status
alone cannot tell, a note measured from the files (e.g. whether a stale cache was rebuilt, how
many slices were skipped, whether a file named in config.json was executed). It does not judge:
the table is the evidence, regenerated after any change to the error handling.

Also writes the records as JSON (tests/e2e/hostile_inputs.json). Real full disks and
read-only folders use small tmpfs mounts (root only); elsewhere those cases say "not run".
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

REPO = pathlib.Path(__file__).resolve().parents[2]
PY = sys.executable
RSNA_CFG = "configs/drct2_rsna.py:runlocal"
CQ500_CFG = "configs/drct2_cq500.py:runlocal"
RUN_CFG = "configs/drct2_phantom.py:runlocal"
TIMEOUT_S = 300


@dataclasses.dataclass
class Outcome:
  case: str
  group: str
  what: str
  command: str = ""
  exit: Optional[int] = None
  seconds: float = 0.0
  stderr_lines: int = 0
  traceback: bool = False
  last_line: str = ""
  note: str = ""
  stderr_tail: list = dataclasses.field(default_factory=list)   # JSON only: the last lines
  signalled: str = ""      # interrupt cases: whether and when the signal went out


class Context:
  """The work folder, the shared base artefacts (built once, on first use) and the runner."""

  def __init__(self, work: pathlib.Path):
    self.work = work
    self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CTJAX_", "XLA_"))}
    self.env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                    JAX_COMPILATION_CACHE_DIR=str(work / "jax_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    self._built: dict[str, pathlib.Path] = {}
    self._memo: dict[str, object] = {}
    self.last_stderr: list[str] = []
    self.last_stdout = ""

  def memo(self, key: str, make: Callable[[], object]) -> object:
    if key not in self._memo:
      self._memo[key] = make()
    return self._memo[key]

  # ------------------------------------------------------------------ running commands

  def popen(self, argv: list[str], env: Optional[dict] = None,
            wrap: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen([*wrap, PY, *argv], cwd=REPO, env=env or self.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)

  def run(self, out: Outcome, argv: list[str], *, timeout: float = TIMEOUT_S,
          interrupt_when: Optional[Callable[[], bool]] = None,
          wrap: tuple[str, ...] = ()) -> Outcome:
    """Runs `python argv…` (after `wrap`, e.g. setpriv) and records it in `out`;
    `interrupt_when`: SIGINT to the process group (a terminal's Ctrl-C) once that returns
    True. The command's stdout is kept in `self.last_stdout`."""
    out.command = self.show(" ".join([*wrap, "python", *[_quote(a) for a in argv]]))
    t0 = time.time()
    proc = self.popen(argv, wrap=wrap)
    try:
      if interrupt_when is not None:
        while proc.poll() is None and time.time() - t0 < timeout and not interrupt_when():
          time.sleep(0.05)
        if proc.poll() is None:
          os.killpg(proc.pid, signal.SIGINT)
          out.signalled = f"SIGINT sent at {time.time() - t0:.1f} s"
        else:
          out.signalled = "the command ended before the signal was due (not interrupted)"
      stdout, stderr = proc.communicate(timeout=max(1.0, timeout - (time.time() - t0)))
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      stdout, stderr = proc.communicate()
      out.note = _join(out.note, f"killed after {timeout:.0f} s")
    out.seconds = time.time() - t0
    self.last_stdout = stdout or ""
    self.record(out, proc.returncode, stderr)
    return out

  def record(self, out: Outcome, rc: int, stderr: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    out.exit = rc
    out.stderr_lines = len(lines)
    out.traceback = any(ln.startswith("Traceback") or "Check failure stack trace" in ln
                        for ln in lines)
    out.last_line = self.show(_strip_log_prefix(lines[-1])) if lines else ""
    out.stderr_tail = [self.show(_strip_log_prefix(ln))[:400] for ln in lines[-8:]]
    self.last_stderr = [self.show(_strip_log_prefix(ln)) for ln in lines]

  def logged(self, needle: str) -> str:
    """The last command's first stderr line containing `needle` ("" if none)."""
    return next((ln for ln in self.last_stderr if needle in ln), "")

  def show(self, text: str) -> str:
    """Paths of this machine out of the text: the work folder is W, the checkout is `.`,
    installed packages are under site-packages/ and the interpreter is `python`."""
    import sysconfig
    text = text.replace(str(self.work), "W").replace(str(REPO) + "/", "").replace(str(REPO), ".")
    work = str(self.work)
    for n in range(len(work) - 1, 4, -1):      # a command line shortened inside the work path
      text = text.replace(work[:n] + "…", "W…")
    text = text.replace(PY, "python")
    for lib in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]}:
      text = text.replace(lib, "site-packages" if "site-packages" in lib else "stdlib")
    return text

  # ------------------------------------------------------------------ base artefacts

  def synth(self, name: str, layout: str, scans: int, size: int, slices: str) -> pathlib.Path:
    if name not in self._built:
      path = self.work / "base" / name
      r = subprocess.run([PY, "-m", "ctjax.synth", "--layout", layout, "--scans", str(scans),
                          "--seed", "1", "--size", str(size), "--slices", slices,
                          "--workers", "0", "--out", str(path)], cwd=REPO, env=self.env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
      if r.returncode:
        raise RuntimeError(f"ctjax.synth {layout}: {r.stderr.strip()[-300:]}")
      self._built[name] = path
    return self._built[name]

  def rsna(self) -> pathlib.Path:
    return self.synth("rsna", "rsna", 6, 32, "6,8")

  def cq500(self) -> pathlib.Path:
    return self.synth("cq500", "cq500", 4, 32, "6,8")

  def phantom(self) -> pathlib.Path:
    """The data of the trained run (RSNA layout, read as layout "phantom")."""
    return self.synth("phantom", "rsna", 12, 64, "8,10")

  def many_shards(self) -> pathlib.Path:
    """Enough scans for several cache shards (8 scans each): something to interrupt."""
    return self.synth("many", "rsna", 40, 64, "24,28")

  def trained(self) -> pathlib.Path:
    """DrCT2 runlocal, 3 steps, a checkpoint every step (latest keeps 2), best at the end."""
    if "run" not in self._built:
      path = self.work / "base" / "run"
      r = subprocess.run([PY, "-m", "ctjax.train", "--config", RUN_CFG, "--workdir", str(path),
                          *self.run_overrides(), "--config.train.num_epochs=3",
                          "--config.checkpoint.every_steps=1"], cwd=REPO, env=self.env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
      if r.returncode:
        raise RuntimeError(f"base training: {r.stderr.strip()[-300:]}")
      self._built["run"] = path
    return self._built["run"]

  def run_overrides(self, root: Optional[pathlib.Path] = None) -> list[str]:
    return [f"--config.data.root={root or self.phantom()}"]

  def scan_folder(self) -> pathlib.Path:
    """One series of the phantom set in a folder of its own (for `ctjax.report --scan`)."""
    if "scan" not in self._built:
      import pydicom
      path = self.work / "base" / "scan"
      path.mkdir(parents=True, exist_ok=True)
      files = sorted((self.phantom() / "stage_2_train").glob("*.dcm"))
      first = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
      for f in files:
        if pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID == first:
          shutil.copy(f, path / f.name)
      self._built["scan"] = path
    return self._built["scan"]


def _quote(arg: str) -> str:
  return arg if re.fullmatch(r"[\w./:=,+@%-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def _join(*notes: str) -> str:
  return "; ".join(n for n in notes if n)


def _strip_log_prefix(line: str) -> str:
  return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line)


# ------------------------------------------------------------------------ corruption helpers


def _copy(src: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
  shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".ctjax_cache"))
  return dest


def _rsna_files(root: pathlib.Path) -> list[pathlib.Path]:
  return sorted((root / "stage_2_train").glob("*.dcm"))


def _series_files(root: pathlib.Path) -> list[pathlib.Path]:
  """The files of the first series (by SeriesInstanceUID) of an RSNA-layout root."""
  import pydicom
  files = _rsna_files(root)
  uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
  same = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID == uid]
  return sorted(same, key=lambda f: float(
      pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def _edit_header(path: pathlib.Path, **fields) -> None:
  import pydicom
  cfg = pydicom.config.settings
  old = cfg.writing_validation_mode, cfg.reading_validation_mode
  cfg.writing_validation_mode = cfg.reading_validation_mode = pydicom.config.IGNORE
  try:
    ds = pydicom.dcmread(path)
    for key, value in fields.items():
      setattr(ds, key, value)
    ds.save_as(path)
  finally:
    cfg.writing_validation_mode, cfg.reading_validation_mode = old


def _shift_pixels(path: pathlib.Path, new_path: Optional[pathlib.Path] = None,
                  new_sop: Optional[str] = None) -> None:
  """Stored pixels + 100 (a different image at the same position); optionally as a new file."""
  import numpy as np
  import pydicom
  ds = pydicom.dcmread(path)
  arr = ds.pixel_array.astype(np.int32) + 100
  ds.PixelData = arr.astype(ds.pixel_array.dtype).tobytes()
  if new_sop:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_sop
  ds.save_as(new_path or path)


def _rsna_rows(root: pathlib.Path) -> list[list[str]]:
  with open(root / "stage_2_train.csv", newline="") as f:
    return list(csv.reader(f))


def _write_rows(path: pathlib.Path, rows: list[list[str]]) -> None:
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)


def _set_label(root: pathlib.Path, value: str, row: int = 1) -> None:
  rows = _rsna_rows(root)
  rows[row][1] = value
  _write_rows(root / "stage_2_train.csv", rows)


def _cq500_rows(root: pathlib.Path) -> list[list[str]]:
  with open(root / "reads.csv", newline="") as f:
    return list(csv.reader(f))


def _break_j2k(path: pathlib.Path) -> None:
  """Re-encodes the slice as JPEG 2000 (Pillow/OpenJPEG) and keeps half of the codestream."""
  import io
  import numpy as np
  import pydicom
  from PIL import Image
  from pydicom.encaps import encapsulate
  from pydicom.uid import JPEG2000Lossless
  ds = pydicom.dcmread(path)
  arr = ds.pixel_array
  buf = io.BytesIO()
  Image.fromarray(arr.astype(np.uint16) if arr.dtype.kind == "u" else
                  (arr.astype(np.int32) + 32768).astype(np.uint16)).save(
      buf, format="JPEG2000", irreversible=False, no_jp2=True)
  stream = buf.getvalue()
  ds.PixelData = encapsulate([stream[:len(stream) // 2]])
  ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
  ds.save_as(path, enforce_file_format=True)


def _corrupt_step(step_dir: pathlib.Path) -> None:
  """Truncates the array data files of a checkpoint step to a third of their size."""
  for p in (step_dir / "state").rglob("*"):
    if p.is_file() and p.parent.name == "d":
      p.write_bytes(p.read_bytes()[:max(1, p.stat().st_size // 3)])


def _steps(directory: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) \
      if directory.is_dir() else []


def _cache_summary(cache_root: pathlib.Path) -> str:
  """scans / slices / skipped slices / failed scans of the newest complete cache under it."""
  manifests = sorted(cache_root.rglob("manifest.json"), key=lambda p: p.stat().st_mtime_ns)
  manifests = [m for m in manifests if json.loads(m.read_text()).get("complete")]
  if not manifests:
    return "no complete cache"
  m = json.loads(manifests[-1].read_text())
  skipped = 0
  for shard in m.get("shards", []):
    meta = json.loads((manifests[-1].parent / shard["file"].replace(".hu.npy", ".json"))
                      .read_text())
    skipped += sum(len(s.get("skipped", [])) for s in meta["scans"])
  return (f"cache: {m['num_scans']} scans, {m['num_slices']} slices, {skipped} slice(s) "
          f"skipped, {len(m.get('failures', []))} scan(s) failed")


def _cached_labels(cache_root: pathlib.Path) -> dict[str, list]:
  """file name → its cached slice labels, from the newest complete cache."""
  manifests = sorted((m for m in cache_root.rglob("manifest.json")
                      if json.loads(m.read_text()).get("complete")),
                     key=lambda p: p.stat().st_mtime_ns)
  out = {}
  if manifests:
    m = json.loads(manifests[-1].read_text())
    for shard in m["shards"]:
      meta = json.loads((manifests[-1].parent / shard["file"].replace(".hu.npy", ".json"))
                        .read_text())
      for scan in meta["scans"]:
        for f, lab in zip(scan["files"], scan["slice_labels"]):
          out[pathlib.Path(f).name] = lab
  return out


def _mount_tmpfs(path: pathlib.Path, options: str) -> bool:
  if os.geteuid() != 0:
    return False
  path.mkdir(parents=True, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                        capture_output=True).returncode == 0


def _umount(path: pathlib.Path) -> None:
  subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _readonly(path: pathlib.Path) -> bool:
  """An empty read-only folder at `path` (a read-only tmpfs for root, else permission bits)."""
  if os.geteuid() == 0:
    return _mount_tmpfs(path, "ro,size=64k")
  path.mkdir(parents=True, exist_ok=True)
  path.chmod(0o555)
  return True


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ------------------------------------------------------------------------------------ cases


def prepare_case(layout: str, edit: Callable[[pathlib.Path], None], *extra: str,
                 note: Optional[Callable[[pathlib.Path], str]] = None):
  """A fresh copy of the RSNA / CQ500 set, `edit` applied, then `python -m ctjax.prepare`."""
  def case(ctx: Context, out: Outcome, d: pathlib.Path) -> None:
    root = _copy(ctx.rsna() if layout == "rsna" else ctx.cq500(), d / layout)
    edit(root)
    cfg = RSNA_CFG if layout == "rsna" else CQ500_CFG
    ctx.run(out, ["-m", "ctjax.prepare", "--config", cfg, f"--config.data.root={root}",
                  f"--config.data.cache_dir={d / 'cache'}", "--config.data.image_size=32",
                  *extra])
    out.note = _join(out.note, _cache_summary(d / "cache") if note is None else note(d))
  return case


def _slice(k: int = 2):
  def pick(root: pathlib.Path) -> pathlib.Path:
    return _series_files(root)[k]
  return pick


def header(**fields):
  return lambda root: _edit_header(_slice()(root), **fields)


def _foreign(root):
  _edit_header(_slice()(root), PatientID="SOMEONE-ELSE")


def _duplicate(root):
  """A copy of one slice under a new SOP UID (with its label rows), pixels + 100."""
  src = _slice()(root)
  dup = "ID_dup" + src.stem[3:]
  _shift_pixels(src, root / "stage_2_train" / f"{dup}.dcm",
                new_sop="1.2.826.0.1.3680043.8.498.999")
  rows = _rsna_rows(root)
  rows += [[r[0].replace(src.stem, dup), r[1]] for r in rows[1:]
           if r[0].startswith(src.stem + "_")]
  _write_rows(root / "stage_2_train.csv", rows)


def _missing_label_column(root):
  rows = _rsna_rows(root)
  rows[0] = ["ID", "Lable"]
  _write_rows(root / "stage_2_train.csv", rows)


def _conflicting_rows(root):
  rows = _rsna_rows(root)
  rows.append([rows[1][0], "1" if rows[1][1] == "0" else "0"])
  _write_rows(root / "stage_2_train.csv", rows)


def _dicom_without_rows(root):
  sop = _slice()(root).stem
  rows = [r for r in _rsna_rows(root) if not r[0].startswith(sop + "_")]
  _write_rows(root / "stage_2_train.csv", rows)


def _cq500_cell(value: str, column: str = "R1:ICH"):
  def edit(root):
    rows = _cq500_rows(root)
    rows[1][rows[0].index(column)] = value
    _write_rows(root / "reads.csv", rows)
  return edit


def _cq500_no_name(root):
  rows = _cq500_rows(root)
  rows[0][rows[0].index("name")] = "nom"
  _write_rows(root / "reads.csv", rows)


def _cq500_traversal(root):
  outside = root.parent / "outside" / "CQ500-CT-9"
  study = next(root / c for c in ("CQ500-CT-0", "CQ500CT0 CQ500CT0") if (root / c).is_dir())
  shutil.copytree(study, outside)
  rows = _cq500_rows(root)
  rows.append(["../outside/CQ500-CT-9"] + rows[1][1:])
  _write_rows(root / "reads.csv", rows)


def _outside_read(d: pathlib.Path) -> str:
  cached = any("outside/CQ500-CT-9" in s.read_text() for s in (d / "cache").rglob("shard_*.json"))
  return _join(_cache_summary(d / "cache"),
               f"files from outside the root cached: {'yes' if cached else 'no'}")


def _empty_dcm(root):
  _slice()(root).write_bytes(b"")


def _text_dcm(root):
  _slice()(root).write_text("this is not a DICOM file\n")


def _j2k(root):
  _break_j2k(_slice()(root))


def stale_case(kind: str):
  """prepare → edit the label CSV (or replace a slice's pixels) → prepare again."""
  def case(ctx: Context, out: Outcome, d: pathlib.Path) -> None:
    root = _copy(ctx.rsna(), d / "rsna")
    argv = ["-m", "ctjax.prepare", "--config", RSNA_CFG, f"--config.data.root={root}",
            f"--config.data.cache_dir={d / 'cache'}", "--config.data.image_size=32"]
    first = ctx.popen(argv)
    first.communicate(timeout=TIMEOUT_S)
    target = _slice()(root)
    before = _cached_labels(d / "cache").get(target.name)
    if kind == "labels":
      rows = _rsna_rows(root)
      for r in rows[1:]:
        if r[0].startswith(target.stem + "_"):
          r[1] = "1" if r[1] == "0" else "0"
      _write_rows(root / "stage_2_train.csv", rows)
    else:
      stamp = {p: p.stat().st_mtime_ns for p in (d / "cache").rglob("*.npy")}
      _shift_pixels(target)
    ctx.run(out, argv)
    if kind == "labels":
      after = _cached_labels(d / "cache").get(target.name)
      out.note = (f"cached labels of the edited slice: {before} → {after} "
                  f"({'updated' if after != before else 'stale'})")
    else:
      now = {p: p.stat().st_mtime_ns for p in (d / "cache").rglob("*.npy")}
      rebuilt = set(now) != set(stamp) or any(now[p] != t for p, t in stamp.items())
      out.note = f"cache shards rewritten after the pixel change: {'yes' if rebuilt else 'no'}"
  return case


def evil_config_case(command: str):
  """config.json of a trained run names Python files (the dropped
  model.backbone_pretrain_config, an unknown field); each leaves a marker if executed."""
  def case(ctx: Context, out: Outcome, d: pathlib.Path) -> None:
    run = _copy(ctx.trained(), d / "run")
    marker = d / "executed"
    for name in ("pretrain", "hook"):
      (d / f"{name}.py").write_text(
          f"open({str(marker)!r}, 'a').write({name!r})\ndef get_config(arg=None):\n  return {{}}\n")
    config = json.loads((run / "config.json").read_text())
    config["model"]["backbone_pretrain_config"] = str(d / "pretrain.py")
    config["hook"] = str(d / "hook.py")
    (run / "config.json").write_text(json.dumps(config, indent=2))
    if command == "evaluate":
      ctx.run(out, ["-m", "ctjax.evaluate", "--workdir", str(run), "--split", "val"])
    else:
      ctx.run(out, ["-m", "ctjax.report", "--workdir", str(run), "--scan",
                    str(ctx.scan_folder()), "--out", str(d / "report.html")])
    out.note = f"a .py named in config.json executed: {'yes' if marker.exists() else 'no'}"
  return case


def lenient_header_scan(kind: str):
  edit = _empty_dcm if kind == "empty" else _text_dcm
  return prepare_case("rsna", edit, "--config.data.lenient=True")


def corrupt_checkpoint_case(command: str):
  """The newest step of latest/ and of best/ truncated (a disk that lost the end of its
  writes), then evaluate (restores best, else latest) or resume training."""
  def case(ctx: Context, out: Outcome, d: pathlib.Path) -> None:
    run = _copy(ctx.trained(), d / "run")
    latest, best = run / "checkpoints" / "latest", run / "checkpoints" / "best"
    newest = _steps(latest)[-1]
    _corrupt_step(latest / str(newest))
    for s in _steps(best):
      _corrupt_step(best / str(s))
    if command == "evaluate":
      ctx.run(out, ["-m", "ctjax.evaluate", "--workdir", str(run), "--split", "val"])
      out.note = _join(f"best {_steps(best)} and latest {newest} of latest {_steps(latest)} "
                       "truncated", ctx.logged("cannot be restored"))
    else:
      ctx.run(out, ["-m", "ctjax.train", "--config", RUN_CFG, "--workdir", str(run),
                    *ctx.run_overrides(), "--config.train.num_epochs=4",
                    "--config.checkpoint.every_steps=1"])
      out.note = _join(f"step {newest} truncated; latest steps after: {_steps(latest)}; set "
                       f"aside: {_steps(run / 'checkpoints' / 'unreadable')}",
                       ctx.logged("cannot be restored"))
  return case


def missing_config(ctx, out, d):
  ctx.run(out, ["-m", "ctjax.train", "--config", str(d / "nope.py") + ":runlocal",
                "--workdir", str(d / "run")])


def unknown_override(ctx, out, d):
  ctx.run(out, ["-m", "ctjax.prepare", "--config", RSNA_CFG, "--config.data.bogus=3"])


def workdir_is_file(ctx, out, d):
  d.mkdir(parents=True, exist_ok=True)
  (d / "afile").write_text("a file, not a folder\n")
  ctx.run(out, ["-m", "ctjax.train", "--config", RUN_CFG, "--workdir", str(d / "afile"),
                *ctx.run_overrides()])


def workdir_readonly(ctx, out, d):
  ro = d / "ro"
  if not _readonly(ro):
    out.note = "not run: no read-only folder can be made here"
    return
  try:
    ctx.run(out, ["-m", "ctjax.train", "--config", RUN_CFG, "--workdir", str(ro / "run"),
                  *ctx.run_overrides()])
  finally:
    _umount(ro) if os.geteuid() == 0 else ro.chmod(0o755)


def report_out_readonly(ctx, out, d):
  ro = d / "ro"
  if not _readonly(ro):
    out.note = "not run: no read-only folder can be made here"
    return
  try:
    ctx.run(out, ["-m", "ctjax.report", "--workdir", str(ctx.trained()), "--scan",
                  str(ctx.scan_folder()), "--out", str(ro / "report.html")])
  finally:
    _umount(ro) if os.geteuid() == 0 else ro.chmod(0o755)


def split_typo(ctx, out, d):
  ctx.run(out, ["-m", "ctjax.evaluate", "--workdir", str(ctx.trained()), "--split", "tset"])


def truncated_shard(ctx, out, d):
  cache = d / "cache"
  argv = ["--config", RUN_CFG, *ctx.run_overrides(), f"--config.data.cache_dir={cache}"]
  subprocess.run([PY, "-m", "ctjax.prepare", *argv], cwd=REPO, env=ctx.env,
                 capture_output=True, timeout=TIMEOUT_S)
  (shard,) = sorted(cache.rglob("shard_00000.hu.npy"))[:1] or [None]
  if shard is None:
    out.note = "not run: prepare made no shard"
    return
  shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
  ctx.run(out, ["-m", "ctjax.train", *argv, "--workdir", str(d / "run")])
  out.note = "shard_00000.hu.npy cut to half its size"


def disk_full_checkpoint(ctx, out, d):
  small = d / "small"
  if not _mount_tmpfs(small, "size=600k"):
    out.note = "not run: a small tmpfs needs root"
    return
  try:
    ctx.run(out, ["-m", "ctjax.train", "--config", RUN_CFG, "--workdir", str(small / "run"),
                  *ctx.run_overrides()])
    base = ctx.trained() / "checkpoints" / "latest"
    size = sum(f.stat().st_size for f in (base / str(_steps(base)[-1])).rglob("*")
               if f.is_file())
    out.note = f"workdir on a 600 KB tmpfs; one checkpoint of this run takes {size / 2**20:.1f} MB"
  finally:
    _umount(small)


def disk_full_prepare(ctx, out, d):
  small = d / "small"
  if not _mount_tmpfs(small, "size=48k"):
    out.note = "not run: a small tmpfs needs root"
    return
  try:
    ctx.run(out, ["-m", "ctjax.prepare", "--config", RSNA_CFG,
                  f"--config.data.root={ctx.rsna()}", f"--config.data.cache_dir={small}",
                  "--config.data.image_size=32"])
    out.note = "cache folder on a 48 KB tmpfs"
  finally:
    _umount(small)


def ctrl_c_prepare(ctx, out, d):
  cache = d / "cache"
  ctx.run(out, ["-m", "ctjax.prepare", "--config", RSNA_CFG,
                f"--config.data.root={ctx.many_shards()}", f"--config.data.cache_dir={cache}",
                "--config.data.image_size=64", "--config.data.num_workers=2"],
          interrupt_when=lambda: bool(list(cache.glob("*/shard_*"))))
  kept = len(list(cache.glob("*/shard_*.json")))
  out.note = (f"SIGINT to the process group after the first shard ({out.signalled}); {kept} "
              "of 5 shard(s) kept")


def ctrl_c_train(ctx, out, d):
  run = d / "run"
  ctx.run(out, ["-m", "ctjax.train", "--config", RUN_CFG, "--workdir", str(run),
                *ctx.run_overrides(), "--config.train.num_epochs=40",
                "--config.train.max_steps=40", "--config.checkpoint.every_steps=2"],
          interrupt_when=lambda: bool(_steps(run / "checkpoints" / "latest")))
  out.note = (f"SIGINT after the first checkpoint ({out.signalled}); checkpoints kept: "
              f"{_steps(run / 'checkpoints' / 'latest')}")


def _two_processes(ctx: Context, run: pathlib.Path, victim: int) -> dict:
  """2 processes train; after their first checkpoint `victim` gets SIGKILL. The survivor's exit
  status, the seconds from the kill to its exit, its stderr, the command."""
  shutil.rmtree(run, ignore_errors=True)
  address = f"127.0.0.1:{_free_port()}"
  argv = ["-m", "ctjax.train", "--config", RUN_CFG, "--workdir", str(run),
          *ctx.run_overrides(), "--config.train.num_epochs=60", "--config.train.max_steps=60",
          "--config.checkpoint.every_steps=2", "--coordinator_address", address,
          "--num_processes", "2"]
  procs = [ctx.popen(argv + ["--process_id", str(i)]) for i in range(2)]
  try:
    t0 = time.time()
    while time.time() - t0 < TIMEOUT_S and all(p.poll() is None for p in procs):
      if _steps(run / "checkpoints" / "latest"):
        break
      time.sleep(0.1)
    try:
      os.killpg(procs[victim].pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    killed = time.time()
    survivor = procs[1 - victim]
    try:
      _, err = survivor.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      os.killpg(survivor.pid, signal.SIGKILL)
      _, err = survivor.communicate()
    return {"rc": survivor.returncode, "seconds": time.time() - killed, "stderr": err,
            "command": " ".join(["python", *argv, "--process_id", "i"]), "run": run}
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.communicate()


def _kill_run(ctx: Context, victim: int) -> dict:
  return ctx.memo(f"kill{victim}", lambda: _two_processes(
      ctx, ctx.work / "cases" / f"two_processes_kill_{victim}", victim))


def peer_death(victim: int):
  def case(ctx, out, d):
    r = _kill_run(ctx, victim)
    command = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", ctx.show(r["command"]))
    out.command = command + f"  (then SIGKILL to process {victim})"
    ctx.record(out, r["rc"], r["stderr"])
    out.seconds = r["seconds"]
    out.note = (f"process {1 - victim} exited {r['seconds']:.1f} s after process {victim} "
                "was killed")
  return case


def two_process_resume(ctx, out, d):
  """The workdir of the 2-process run whose process 1 was killed, resumed as 1 process."""
  run = _kill_run(ctx, 1)["run"]
  ctx.run(out, ["-m", "ctjax.train", "--config", RUN_CFG, "--workdir", str(run),
                *ctx.run_overrides(), "--config.train.num_epochs=60",
                "--config.train.max_steps=60", "--config.checkpoint.every_steps=2"])
  out.note = (f"checkpoints {_steps(run / 'checkpoints' / 'latest')} written by 2 processes; "
              "resumed as 1")


def _train_argv(ctx: Context, run: pathlib.Path, *extra: str) -> list[str]:
  return ["-m", "ctjax.train", "--config", RUN_CFG, "--workdir", str(run), *ctx.run_overrides(),
          *extra]


def _start_holder(ctx: Context, argv: list[str], lock: pathlib.Path) -> subprocess.Popen:
  """A training started and left running until it holds its workdir's lock."""
  proc = ctx.popen(argv)
  t0 = time.time()
  while not lock.exists() and proc.poll() is None and time.time() - t0 < TIMEOUT_S:
    time.sleep(0.05)
  return proc


def _stop(proc: subprocess.Popen, sig=signal.SIGINT) -> str:
  """Stops a command started with `Context.popen`; its stderr."""
  if proc.poll() is None:
    os.killpg(proc.pid, sig)
  try:
    return proc.communicate(timeout=120)[1] or ""
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()[1] or ""


def second_train(ctx, out, d):
  run = d / "run"
  argv = _train_argv(ctx, run, "--config.train.num_epochs=40", "--config.train.max_steps=40")
  first = _start_holder(ctx, argv, run / "train.lock")
  try:
    ctx.run(out, argv)
    out.note = (f"a first identical run held the workdir; still running afterwards: "
                f"{'yes' if first.poll() is None else 'no'}")
  finally:
    _stop(first)


def stale_lock(ctx, out, d):
  run = d / "run"
  long = _train_argv(ctx, run, "--config.train.num_epochs=40", "--config.train.max_steps=40")
  first = _start_holder(ctx, long, run / "train.lock")
  _stop(first, signal.SIGKILL)
  left = (run / "train.lock").exists()
  ctx.run(out, _train_argv(ctx, run, "--config.train.num_epochs=40",
                           "--config.train.max_steps=2"))
  out.note = _join(f"a first run SIGKILLed while holding the lock (lock file left: "
                   f"{'yes' if left else 'no'})", ctx.logged("taking over the lock"),
                   f"lock file after the run: {'yes' if (run / 'train.lock').exists() else 'no'}")


def nonfinite_lr(value: str):
  def case(ctx, out, d):
    run = d / "run"
    ctx.run(out, _train_argv(ctx, run, f"--config.optimizer.lr={value}"))
    made = sorted(p.name for p in run.iterdir()) if run.exists() else []
    out.note = f"files in the workdir afterwards: {made or 'none'}"
  return case


def file_for_a_folder(flag: str, name: str):
  """`flag` names a file where a folder belongs: refused before the workdir is made."""
  def case(ctx, out, d):
    d.mkdir(parents=True, exist_ok=True)
    target = d / name
    target.write_text("not a folder\n")
    ctx.run(out, _train_argv(ctx, d / "run", f"{flag}={target}"))
    out.note = (f"the file afterwards: {target.read_text()!r}; workdir made: "
                f"{(d / 'run').exists()}")
  return case


def gru_kernel_typo(ctx, out, d):
  ctx.run(out, _train_argv(ctx, d / "run", "--config.model.gru_kernel=triton"))
  made = sorted(p.name for p in (d / "run").iterdir()) if (d / "run").exists() else []
  out.note = f"files in the workdir afterwards: {made or 'none'}"


def truncated_feature_shard(ctx, out, d):
  cache = d / "cache"
  store = ("--config.features.enabled=True", f"--config.data.cache_dir={cache}",
           "--config.train.max_steps=1")
  first = _train_argv(ctx, d / "first", *store)
  subprocess.run([PY, *first], cwd=REPO, env=ctx.env, capture_output=True, timeout=TIMEOUT_S)
  shards = sorted(cache.rglob("features/*/shard_00000.pooled.npy"))
  if not shards:
    out.note = "not run: the first training built no feature store"
    return
  shard = shards[0]
  full = shard.stat().st_size
  shard.write_bytes(shard.read_bytes()[:full // 2])
  ctx.run(out, _train_argv(ctx, d / "run", *store))
  out.note = _join(f"feature shard_00000.pooled.npy cut to half under its done-marker; size "
                   f"after: {shard.stat().st_size} of {full} bytes",
                   ctx.logged("damaged shard"))


def _cut_shard_record(ctx, d) -> tuple[list[str], pathlib.Path]:
  cache = d / "cache"
  argv = ["--config", RUN_CFG, *ctx.run_overrides(), f"--config.data.cache_dir={cache}"]
  subprocess.run([PY, "-m", "ctjax.prepare", *argv], cwd=REPO, env=ctx.env,
                 capture_output=True, timeout=TIMEOUT_S)
  (record,) = sorted(cache.rglob("shard_00000.json"))[:1]
  record.write_text(record.read_text()[:50])
  return argv, record


def truncated_shard_record(command: str):
  def case(ctx, out, d):
    argv, record = _cut_shard_record(ctx, d)
    if command == "train":
      ctx.run(out, ["-m", "ctjax.train", *argv, "--workdir", str(d / "run")])
      out.note = "shard_00000.json (the shard's done-marker and scan records) cut to 50 bytes"
    else:
      ctx.run(out, ["-m", "ctjax.prepare", *argv])
      import json as json_lib
      try:
        ok = bool(json_lib.loads(record.read_text())["scans"])
      except (OSError, ValueError, KeyError):
        ok = False
      out.note = ("shard_00000.json cut to 50 bytes; after prepare it is whole again: "
                  f"{'yes' if ok else 'no'}")
  return case


def _study(ctx: Context) -> dict:
  """A 2-case study of the trained run (no washout) with one reader, served on a free port."""
  def make():
    study = ctx.work / "base" / "study"
    r = subprocess.run([PY, "-m", "ctjax.reader", "create", "--workdir", str(study), "--run",
                        str(ctx.trained()), "--num_scans", "2", "--washout_days", "0",
                        "--readers", "A"], cwd=REPO, env=ctx.env, capture_output=True,
                       text=True, timeout=TIMEOUT_S)
    token = re.search(r"/r/([\w-]+)/", r.stdout)
    if r.returncode or not token:
      raise RuntimeError(f"reader create: {r.stderr.strip()[-300:]}")
    return {"study": study, "token": token.group(1)}
  return ctx.memo("study", make)


def _http(url: str, method: str = "GET", body: bytes = b"", ctype: str = "") -> tuple[int, str]:
  import urllib.error
  import urllib.request
  req = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                               headers={"Content-Type": ctype} if ctype else {})

  class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
      return None

  try:
    with urllib.request.build_opener(NoRedirect).open(req, timeout=60) as r:
      return r.status, r.read().decode("utf-8", "replace")
  except urllib.error.HTTPError as e:
    return e.code, e.read().decode("utf-8", "replace")


def _announce_huge_body(port: int, path: str, size: int) -> tuple[int, str]:
  """POSTs a form body of `size` bytes, reading the answer after its first 64 KB (as curl does
  after `Expect: 100-continue`): (status, body)."""
  with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
               f"application/x-www-form-urlencoded\r\nContent-Length: {size}\r\n"
               "Connection: close\r\n\r\n").encode() + b"x" * (64 << 10))
    data = b""
    try:
      while True:
        chunk = s.recv(65536)
        if not chunk:
          break
        data += chunk
    except OSError:
      pass
  head, _, body = data.partition(b"\r\n\r\n")
  status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
  return status, body.decode("utf-8", "replace")


def _message(page: str) -> str:
  m = re.search(r'id="message"[^>]*>(.*?)</p>', page, re.S)
  import html as html_lib
  return html_lib.unescape(" ".join(m.group(1).split())) if m else " ".join(page.split())[:160]


def reader_request(kind: str):
  """One hostile request to `python -m ctjax.reader serve`: `exit` is the HTTP status, the
  last line the page's sentence, the note what the database holds afterwards."""
  def case(ctx, out, d):
    base = _study(ctx)
    study = _copy(base["study"], d / "study")
    disk = None
    if kind == "full_disk":
      disk = d / "disk"
      size = sum(p.stat().st_size for p in study.rglob("*") if p.is_file())
      if not _mount_tmpfs(disk, f"size={size // 1024 + 512}k"):
        out.note = "not run: a small tmpfs needs root"
        return
      study = _copy(study, disk / "study")
    port = _free_port()
    server = ctx.popen(["-m", "ctjax.reader", "serve", "--workdir", str(study), "--port",
                        str(port)])
    try:
      link = f"http://127.0.0.1:{port}/r/{base['token']}"
      t0 = time.time()
      while time.time() - t0 < 60:
        try:
          if _http(f"http://127.0.0.1:{port}/")[0] == 200:
            break
        except OSError:
          time.sleep(0.1)
      page = _http(f"{link}/case")[1]
      cid = re.search(r"/case/([0-9a-f]+)/volume", page).group(1)
      answer = f"{link}/case/{cid}/answer"
      if kind == "json":
        got = _http(answer, "POST", b'{"label": ["any"]}', "application/json")
        out.command = ("curl -X POST -H 'Content-Type: application/json' -d '{\"label\": "
                       "[\"any\"]}' http://127.0.0.1:PORT/r/TOKEN/case/CASE/answer")
      elif kind == "multipart_cut":
        b = "B0undary"
        body = (f'--{b}\r\nContent-Disposition: form-data; name="label"\r\n\r\nany\r\n'
                f'--{b}\r\nContent-Disposition: form-data; name="form_end"\r\n\r\n1\r\n'
                f"--{b}--\r\n").encode()
        got = _http(answer, "POST", body[:-20], f"multipart/form-data; boundary={b}")
        out.command = ("curl -X POST -H 'Content-Type: multipart/form-data; boundary=B0undary' "
                       "--data-binary @cut.txt http://127.0.0.1:PORT/r/TOKEN/case/CASE/answer "
                       "(the form's multipart body without its last 20 bytes)")
      elif kind == "huge":
        got = _announce_huge_body(port, answer.split(str(port), 1)[1], 20 << 20)
        out.command = ("curl -X POST --data-binary @20MB.txt http://127.0.0.1:PORT/r/TOKEN/"
                       "case/CASE/answer (a 20 MB form body; the answer read after its first "
                       "64 KB are sent)")
      elif kind == "double_open":
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
          codes = list(pool.map(lambda _: _http(f"{link}/case")[0], range(8)))
        got = (max(codes), f"statuses {sorted(codes)}")
        out.command = "8 × curl http://127.0.0.1:PORT/r/TOKEN/case at once (a double click)"
      elif kind == "full_disk":
        with open(disk / "filler", "wb", buffering=0) as f:
          try:
            while True:
              f.write(b"\0" * 4096)
          except OSError:
            pass
        got = _http(answer, "POST", b"label=any&form_end=1",
                    "application/x-www-form-urlencoded")
        out.command = ("curl -X POST -d 'label=any&form_end=1' http://127.0.0.1:PORT/r/TOKEN/"
                       "case/CASE/answer (the study on a full file system)")
      out.exit = got[0]
      out.last_line = got[1] if kind == "double_open" else _message(got[1])
      err = _stop(server)
      import sqlite3
      db = sqlite3.connect(str(study / "reads.sqlite"))
      rows = db.execute("SELECT answer, views FROM reads").fetchall()
      db.close()
    finally:
      _stop(server)
      if disk is not None:
        _umount(disk)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    out.traceback = any(ln.startswith("Traceback") for ln in lines)
    out.stderr_lines = len(lines)
    out.note = _join("the study on a tmpfs filled to its last block" if disk else "",
                     f"reads in the database (answer, views): {rows}",
                     f"server log {len(lines)} lines, development-server warning: "
                     f"{'yes' if any('development server' in ln.lower() for ln in lines) else 'no'}")
  return case


# ------------------------------------------------ predictions, reports and exported models


def _archive(ctx: Context) -> pathlib.Path:
  """The first 4 series of the trained run's phantom set, one folder each (s0 … s3)."""
  def make():
    import pydicom
    path = ctx.work / "base" / "archive"
    by_uid: dict[str, list[pathlib.Path]] = {}
    for f in _rsna_files(ctx.phantom()):
      uid = pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID
      by_uid.setdefault(uid, []).append(f)
    for k, uid in enumerate(sorted(by_uid)[:4]):
      (path / f"s{k}").mkdir(parents=True, exist_ok=True)
      for f in by_uid[uid]:
        shutil.copy(f, path / f"s{k}" / f.name)
    return path
  return ctx.memo("archive", make)


def _new_uids(folder: pathlib.Path, tag: str) -> None:
  """Every file of `folder` (recursively) gets new Series/SOP instance UIDs: another series."""
  import hashlib
  import pydicom
  for f in sorted(folder.rglob("*.dcm")):
    ds = pydicom.dcmread(f)
    for key in ("SeriesInstanceUID", "SOPInstanceUID"):
      h = int(hashlib.sha1(f"{tag}{getattr(ds, key)}".encode()).hexdigest()[:24], 16)
      setattr(ds, key, f"2.25.{h}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(f)


def _predict_argv(ctx: Context, scans: pathlib.Path, out: pathlib.Path, *extra: str) -> list:
  return ["-m", "ctjax.predict", "--workdir", str(ctx.trained()), "--scans", str(scans),
          "--out", str(out), "--workers", "0", "--noprogress", *extra]


def _rows(path: pathlib.Path) -> list[dict]:
  from ctjax.inference import archive
  try:
    return archive.read_rows(path)
  except Exception as e:   # noqa: BLE001 — what a reader of the file would meet
    return [{"scan": f"unreadable: {type(e).__name__}: {e}", "status": "?", "series_uid": ""}]


def _rows_note(path: pathlib.Path) -> str:
  rows = _rows(path)
  uids = [r.get("series_uid") for r in rows]
  return (f"{len(rows)} rows ({sum(r.get('status') == 'ok' for r in rows)} ok), "
          f"{len(set(uids))} distinct series UIDs")


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> bool:
  t0 = time.time()
  while not path.exists() and proc.poll() is None and time.time() - t0 < timeout:
    time.sleep(0.05)
  return path.exists()


def predict_second_writer(ctx, out, d):
  scans = _copy(_archive(ctx), d / "archive")
  preds = d / "preds.csv"
  argv = _predict_argv(ctx, scans, preds)
  first = ctx.popen(argv)
  held = _wait_for(preds.with_name("preds.csv.lock"), first)
  os.killpg(first.pid, signal.SIGSTOP)       # the first run holds the lock, paused
  try:
    ctx.run(out, argv)
  finally:
    os.killpg(first.pid, signal.SIGCONT)
  first.communicate(timeout=TIMEOUT_S)
  out.note = _join(f"a first identical run held the --out's lock (taken: {'yes' if held else 'no'}"
                   f"; paused meanwhile, then finished with exit {first.returncode})",
                   f"file afterwards: {_rows_note(preds)}")


def predict_stale_lock(ctx, out, d):
  scans = _copy(_archive(ctx), d / "archive")
  preds = d / "preds.csv"
  argv = _predict_argv(ctx, scans, preds)
  first = ctx.popen(argv)
  _wait_for(preds.with_name("preds.csv.lock"), first)
  _stop(first, signal.SIGKILL)
  left = preds.with_name("preds.csv.lock").exists()
  ctx.run(out, argv)
  out.note = _join(f"a first run SIGKILLed while holding the lock (lock file left: "
                   f"{'yes' if left else 'no'})", ctx.logged("taking over the lock"),
                   f"file afterwards: {_rows_note(preds)}")


def predict_same_names(ctx, out, d):
  one = _copy(_archive(ctx), d / "one" / "archive")
  two = _copy(_archive(ctx), d / "two" / "archive")
  _new_uids(two, "two")
  preds = d / "preds.csv"
  subprocess.run([PY, *_predict_argv(ctx, one, preds)], cwd=REPO, env=ctx.env,
                 capture_output=True, timeout=TIMEOUT_S)
  ctx.run(out, _predict_argv(ctx, two, preds))
  first_line = ctx.last_stdout.strip().splitlines()[-1:] or [""]
  copy = _copy(one, d / "copy" / "archive")
  again = subprocess.run([PY, *_predict_argv(ctx, copy, preds)], cwd=REPO, env=ctx.env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
  out.note = _join("archive two: the same folder names (s0 … s3) as archive one, other series",
                   ctx.show(first_line[0]), f"file: {_rows_note(preds)}",
                   "then a copy of archive one elsewhere: "
                   + ctx.show((again.stdout.strip().splitlines() or [""])[-1]))


def predict_formula_cell(ctx, out, d):
  scans = _copy(_archive(ctx), d / "archive")
  for f in (scans / "s0").glob("*.dcm"):
    _edit_header(f, SeriesDescription='=HYPERLINK("http://example.com/x","open")',
                 PatientID="+1-555-0100")
  preds = d / "preds.csv"
  ctx.run(out, _predict_argv(ctx, scans, preds))
  with open(preds, newline="") as f:
    cells = [c for row in csv.reader(f) for c in row]
  desc = next((c for c in cells if "HYPERLINK" in c), "")
  pid = next((c for c in cells if "555-0100" in c), "")
  bad = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
  out.note = (f"CSV cells as written: {desc!r}, {pid!r}; cells a spreadsheet would run as a "
              f"formula: {len(bad)}")


def predict_cut_quoted_row(ctx, out, d):
  scans = _copy(_archive(ctx), d / "archive")
  for k, folder in enumerate(sorted(scans.iterdir())):
    for f in folder.glob("*.dcm"):
      _edit_header(f, SeriesDescription=f"AXIAL\nseries {k}")
  whole, cut = d / "whole.csv", d / "cut.csv"
  argv = _predict_argv(ctx, scans, whole, "--notimings")
  subprocess.run([PY, *argv], cwd=REPO, env=ctx.env, capture_output=True, timeout=TIMEOUT_S)
  raw = whole.read_bytes()
  at = raw.rindex(b"AXIAL\n") + len(b"AXIAL\n")      # just after a newline in a quoted cell
  cut.write_bytes(raw[:at])
  ctx.run(out, _predict_argv(ctx, scans, cut, "--notimings"))
  out.note = _join(f"the file cut {len(raw) - at} bytes before its end, just after the newline "
                   "inside the last row's quoted series description",
                   ctx.logged("dropping a last row"),
                   f"after the resume: {_rows_note(cut)}; equal to an uninterrupted run: "
                   f"{'yes' if cut.read_bytes() == raw else 'no'}")


def _no_root_bypass() -> tuple[str, ...]:
  """As root, a command without the capabilities that read any file (permissions then apply)."""
  if os.geteuid() == 0 and shutil.which("setpriv"):
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
  return ()


def predict_unreadable(ctx, out, d):
  scans = _copy(_archive(ctx), d / "archive")
  locked = scans / "s1"
  one = sorted((scans / "s2").glob("*.dcm"))[3]
  locked.chmod(0)
  one.chmod(0)
  try:
    ctx.run(out, _predict_argv(ctx, scans, d / "preds.csv"), wrap=_no_root_bypass())
  finally:
    locked.chmod(0o755)
    one.chmod(0o644)
  rows = _rows(d / "preds.csv")
  errors = "; ".join(f"{r['scan']}: {ctx.show(str(r.get('error')))}" for r in rows
                     if r.get("status") == "error")
  out.note = _join("folder s1 and one file of s2 unreadable (mode 000"
                   + (", the command run without root's file capabilities" if _no_root_bypass()
                      else "") + ")", f"{_rows_note(d / 'preds.csv')}", errors)


def predict_disk_full(ctx, out, d):
  small = d / "small"
  if not _mount_tmpfs(small, "size=64k"):
    out.note = "not run: a small tmpfs needs root"
    return
  try:
    k = 0
    try:
      while True:                      # fill it, then free one page: room for the lock only
        (small / f"filler{k}").write_bytes(b"\0" * 4096)
        k += 1
    except OSError:
      pass
    (small / f"filler{k - 1}").unlink()
    ctx.run(out, _predict_argv(ctx, _archive(ctx), small / "preds.csv"))
    left = sorted(p.name for p in small.iterdir() if not p.name.startswith("filler"))
    out.note = f"--out on a 64 KB tmpfs with one free page; files left there: {left or 'none'}"
  finally:
    _umount(small)


def _chest(d: pathlib.Path) -> pathlib.Path:
  """pydicom's CT_small.dcm (a chest CT crop, 85 mm field of view) as a series folder."""
  from pydicom.data import get_testdata_file
  folder = d / "chest"
  folder.mkdir(parents=True, exist_ok=True)
  shutil.copy(get_testdata_file("CT_small.dcm"), folder / "CT_small.dcm")
  return folder


def predict_not_head(ctx, out, d):
  scans = _copy(_archive(ctx), d / "archive")
  _chest(scans)
  ctx.run(out, _predict_argv(ctx, scans, d / "preds.csv"))
  rows = {r["scan"]: r for r in _rows(d / "preds.csv")}
  chest = rows.get("chest", {})
  out.note = _join(f"{_rows_note(d / 'preds.csv')}",
                   f"row chest: status {chest.get('status')}, head {chest.get('head')}, "
                   f"qa_flags {chest.get('qa_flags')}, prob_any {chest.get('prob_any')}, "
                   f"error {ctx.show(str(chest.get('error')))}",
                   f"s0: qa_flags {rows.get('s0', {}).get('qa_flags')}")


def report_not_head(ctx, out, d):
  ctx.run(out, ["-m", "ctjax.report", "--workdir", str(ctx.trained()), "--scan",
                str(_chest(d)), "--out", str(d / "report.html")])
  out.note = f"report written: {'yes' if (d / 'report.html').exists() else 'no'}"


def _exported(ctx: Context, step: Optional[int] = None) -> pathlib.Path:
  def make():
    path = ctx.work / "base" / ("model" if step is None else f"model_step{step}")
    r = subprocess.run([PY, "-m", "ctjax.export", "--workdir", str(ctx.trained()), "--out",
                        str(path), "--platforms", "cpu"]
                       + ([] if step is None else ["--step", str(step)]),
                       cwd=REPO, env=ctx.env, capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    if r.returncode:
      raise RuntimeError(f"export: {r.stderr.strip()[-300:]}")
    return path
  return ctx.memo(f"model{step}", make)


def _edit_manifest(model: pathlib.Path, edit: Callable[[dict], None]) -> None:
  path = model / "manifest.json"
  m = json.loads(path.read_text())
  edit(m)
  path.write_text(json.dumps(m, indent=1))


def model_case(kind: str):
  """An exported model folder altered one way, then `python -m ctjax.export --check` (which
  loads it as `ctjax.inference.serving.load` does)."""
  def case(ctx, out, d):
    model = _copy(_exported(ctx), d / "model")
    if kind == "labels_reversed":
      _edit_manifest(model, lambda m: m.update(labels=m["labels"][::-1]))
    elif kind == "labels_cut":
      _edit_manifest(model, lambda m: m.update(labels=m["labels"][:3],
                                               thresholds=m["thresholds"][:3]))
    elif kind == "thresholds_zero":
      _edit_manifest(model, lambda m: m.update(thresholds=[0.0] * len(m["thresholds"])))
    elif kind == "weights_bitflip":
      blob = bytearray((model / "weights.safetensors").read_bytes())
      blob[len(blob) // 2] ^= 0x10
      (model / "weights.safetensors").write_bytes(bytes(blob))
    elif kind == "weights_swapped":
      shutil.copy(_exported(ctx, step=2) / "weights.safetensors", model / "weights.safetensors")
    elif kind == "files_outside":
      shutil.copy(model / "model.jaxexport", d / "elsewhere.bin")
      _edit_manifest(model, lambda m: m["files"].update(program="../elsewhere.bin"))
    elif kind == "malformed":
      _edit_manifest(model, lambda m: m.pop("labels"))
    ctx.run(out, ["-m", "ctjax.export", "--check", str(model)])
  return case


def export_disk_full(ctx, out, d):
  base = _exported(ctx)
  size = sum(p.stat().st_size for p in base.iterdir())
  disk = d / "disk"
  if not _mount_tmpfs(disk, f"size={int(size * 1.5) // 1024 + 16}k"):
    out.note = "not run: a small tmpfs needs root"
    return
  try:
    shutil.copytree(base, disk / "model")
    ctx.run(out, ["-m", "ctjax.export", "--workdir", str(ctx.trained()), "--out",
                  str(disk / "model"), "--platforms", "cpu", "--step", "2"])
    check = subprocess.run([PY, "-m", "ctjax.export", "--check", str(disk / "model")],
                           cwd=REPO, env=ctx.env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    left = sorted(p.name for p in disk.iterdir())
    out.note = _join(f"a re-export (step 2) over an export (step 3) on a tmpfs of "
                     f"{int(size * 1.5) // 1024 + 16} KB ({size // 1024} KB an export)",
                     f"afterwards --check says: {ctx.show(check.stdout.strip() or check.stderr.strip())[:160]}",
                     f"entries in the tmpfs: {left}")
  finally:
    _umount(disk)


def export_onto_folder(ctx, out, d):
  notes = d / "notes"
  notes.mkdir(parents=True)
  (notes / "thesis.tex").write_text("\\documentclass{article}\n")
  ctx.run(out, ["-m", "ctjax.export", "--workdir", str(ctx.trained()), "--out", str(notes),
                "--platforms", "cpu"])
  out.note = f"files in the folder afterwards: {sorted(p.name for p in notes.iterdir())}"


def _rsna(edit, *extra):
  return prepare_case("rsna", edit, *extra)


def _label(value: str):
  return _rsna(lambda root: _set_label(root, value))


# (name, group, what) → case function(ctx, outcome, case folder)
CASES: list[tuple[str, str, str, Callable]] = [
    ("slope_nan", "header", "RescaleSlope NaN in one slice", _rsna(header(RescaleSlope="NaN"))),
    ("slope_inf", "header", "RescaleSlope inf", _rsna(header(RescaleSlope="inf"))),
    ("intercept_nan", "header", "RescaleIntercept NaN", _rsna(header(RescaleIntercept="NaN"))),
    ("slope_zero", "header", "RescaleSlope 0", _rsna(header(RescaleSlope="0"))),
    ("slope_negative", "header", "RescaleSlope -1", _rsna(header(RescaleSlope="-1"))),
    ("slope_huge", "header", "RescaleSlope 1e30", _rsna(header(RescaleSlope="1e30"))),
    ("slope_nan_lenient", "header", "RescaleSlope NaN, lenient mode",
     _rsna(header(RescaleSlope="NaN"), "--config.data.lenient=True")),
    ("foreign_patient", "header", "a slice with another PatientID inside a series",
     _rsna(_foreign)),
    ("duplicate_position", "header", "a second file at one slice position, other pixels",
     _rsna(_duplicate)),
    ("corrupt_jpeg2000", "header", "a slice with half a JPEG 2000 codestream", _rsna(_j2k)),
    ("rsna_label_2", "labels", "RSNA Label `2`", _label("2")),
    ("rsna_label_0.7", "labels", "RSNA Label `0.7`", _label("0.7")),
    ("rsna_label_-1", "labels", "RSNA Label `-1`", _label("-1")),
    ("rsna_label_yes", "labels", "RSNA Label `yes`", _label("yes")),
    ("rsna_label_empty", "labels", "RSNA Label empty", _label("")),
    ("rsna_label_nan", "labels", "RSNA Label `nan`", _label("nan")),
    ("rsna_label_column", "labels", "RSNA CSV without a `Label` column",
     _rsna(_missing_label_column)),
    ("rsna_conflict", "labels", "RSNA: one ID twice with different labels",
     _rsna(_conflicting_rows)),
    ("rsna_unlabelled_dicom", "labels", "RSNA: a DICOM file whose rows are all missing",
     _rsna(_dicom_without_rows)),
    ("cq500_vote_2", "labels", "CQ500 reader vote `2`", prepare_case("cq500", _cq500_cell("2"))),
    ("cq500_empty_cell", "labels", "CQ500 empty vote cell",
     prepare_case("cq500", _cq500_cell(""))),
    ("cq500_no_name", "labels", "CQ500 reads.csv without a `name` column",
     prepare_case("cq500", _cq500_no_name)),
    ("cq500_traversal", "labels", "CQ500 `name` with `../` (a folder outside the root)",
     prepare_case("cq500", _cq500_traversal, note=_outside_read)),
    ("stale_labels", "cache", "label CSV edited after prepare", stale_case("labels")),
    ("stale_pixels", "cache", "a DICOM's pixels replaced after prepare", stale_case("pixels")),
    ("truncated_shard", "cache", "a cache shard cut short, then train", truncated_shard),
    ("lenient_empty_dcm", "lenient", "an empty .dcm, lenient mode", lenient_header_scan("empty")),
    ("lenient_text_dcm", "lenient", "a text file named .dcm, lenient mode",
     lenient_header_scan("text")),
    ("config_json_code_evaluate", "run folder", "config.json names .py files: evaluate",
     evil_config_case("evaluate")),
    ("config_json_code_report", "run folder", "config.json names .py files: report",
     evil_config_case("report")),
    ("checkpoint_corrupt_evaluate", "checkpoint", "newest checkpoint truncated: evaluate",
     corrupt_checkpoint_case("evaluate")),
    ("checkpoint_corrupt_resume", "checkpoint", "newest checkpoint truncated: resume training",
     corrupt_checkpoint_case("train")),
    ("config_missing", "command line", "a nonexistent --config file", missing_config),
    ("unknown_override", "command line", "an unknown override in ctjax.prepare",
     unknown_override),
    ("workdir_file", "command line", "--workdir is a file", workdir_is_file),
    ("workdir_readonly", "command line", "--workdir in a read-only folder", workdir_readonly),
    ("report_out_readonly", "command line", "report --out in a read-only folder",
     report_out_readonly),
    ("split_typo", "command line", "evaluate --split tset", split_typo),
    ("disk_full_checkpoint", "disk", "disk full while checkpointing", disk_full_checkpoint),
    ("disk_full_prepare", "disk", "disk full during prepare", disk_full_prepare),
    ("ctrl_c_prepare", "interrupt", "Ctrl-C during prepare (2 workers)", ctrl_c_prepare),
    ("ctrl_c_train", "interrupt", "Ctrl-C during training", ctrl_c_train),
    ("peer_death_1", "processes", "process 1 of 2 killed: process 0", peer_death(1)),
    ("peer_death_0", "processes", "process 0 of 2 (the coordinator) killed: process 1",
     peer_death(0)),
    ("two_process_resume", "processes", "a 2-process run resumed as 1 process",
     two_process_resume),
    ("second_train", "workdir", "a second ctjax.train on a workdir in use", second_train),
    ("stale_lock", "workdir", "the workdir lock of a SIGKILLed run", stale_lock),
    ("lr_nan", "workdir", "--config.optimizer.lr=nan", nonfinite_lr("nan")),
    ("lr_inf", "workdir", "--config.optimizer.lr=inf", nonfinite_lr("inf")),
    ("profile_file", "command line", "--profile naming a file, not a folder",
     file_for_a_folder("--profile", "trace.txt")),
    ("compile_cache_file", "command line", "--config.compile.cache_dir naming a file",
     file_for_a_folder("--config.compile.cache_dir", "cache.txt")),
    ("gru_kernel_typo", "command line", "--config.model.gru_kernel=triton", gru_kernel_typo),
    ("truncated_feature_shard", "cache", "a feature-store shard cut under its done-marker, "
     "then train", truncated_feature_shard),
    ("truncated_shard_record", "cache", "a cache shard's JSON record cut short, then train",
     truncated_shard_record("train")),
    ("truncated_shard_record_prepare", "cache", "a cache shard's JSON record cut short, then "
     "prepare", truncated_shard_record("prepare")),
    ("reader_json_body", "reader", "reader: a diagnosis posted as JSON", reader_request("json")),
    ("reader_cut_multipart", "reader", "reader: a multipart diagnosis cut short",
     reader_request("multipart_cut")),
    ("reader_huge_body", "reader", "reader: a 20 MB request body", reader_request("huge")),
    ("reader_double_open", "reader", "reader: a case opened 8 times at once",
     reader_request("double_open")),
    ("reader_full_disk", "reader", "reader: an answer on a full disk",
     reader_request("full_disk")),
    ("predict_second_writer", "predictions", "a second ctjax.predict on an --out in use",
     predict_second_writer),
    ("predict_stale_lock", "predictions", "the --out lock of a SIGKILLed predict",
     predict_stale_lock),
    ("predict_same_names", "predictions", "another archive whose folders have the same names",
     predict_same_names),
    ("predict_formula_cell", "predictions", "a SeriesDescription `=HYPERLINK(…)`, a PatientID "
     "`+1-555-0100`", predict_formula_cell),
    ("predict_cut_quoted_row", "predictions", "predictions cut after a newline inside a quoted "
     "cell, resumed", predict_cut_quoted_row),
    ("predict_unreadable", "predictions", "an unreadable series folder and an unreadable file",
     predict_unreadable),
    ("predict_disk_full", "predictions", "--out on a full disk", predict_disk_full),
    ("predict_not_head", "predictions", "a chest CT slice among head series",
     predict_not_head),
    ("report_not_head", "predictions", "ctjax.report on a chest CT slice", report_not_head),
    ("model_labels_reversed", "model folder", "exported manifest: labels reversed",
     model_case("labels_reversed")),
    ("model_labels_cut", "model folder", "exported manifest: labels cut to 3",
     model_case("labels_cut")),
    ("model_thresholds_zero", "model folder", "exported manifest: thresholds 0",
     model_case("thresholds_zero")),
    ("model_weights_bitflip", "model folder", "one flipped bit in weights.safetensors",
     model_case("weights_bitflip")),
    ("model_weights_swapped", "model folder", "weights.safetensors of another checkpoint",
     model_case("weights_swapped")),
    ("model_files_outside", "model folder", "manifest `files` pointing outside the folder",
     model_case("files_outside")),
    ("model_manifest_malformed", "model folder", "a manifest without `labels`",
     model_case("malformed")),
    ("export_disk_full", "model folder", "a re-export onto a full disk", export_disk_full),
    ("export_onto_folder", "model folder", "ctjax.export --out at a folder of other files",
     export_onto_folder),
]


def _md(text: str) -> str:
  text = " ".join(str(text).split())
  text = text if len(text) <= 400 else text[:399] + "…"
  return text.replace("|", "\\|")


def write_table(outcomes: list[Outcome], path: pathlib.Path, seconds: float) -> None:
  lines = [
      "# Hostile and unlucky inputs, tried through the command line",
      "",
      "Generated by `python -m tests.e2e.hostile_inputs` (do not edit by hand): tiny synthetic "
      "data sets (`python -m ctjax.synth`) and a tiny DrCT2 run (`configs/drct2_phantom.py:"
      "runlocal`), one corruption at a time on a fresh copy, then the command. `W` is the "
      "script's work folder. *stderr* counts the lines written to stderr (log lines included) "
      "and says whether a Python traceback or a C++ stack dump is among them; *last stderr line* "
      "is what the user sees last; *note* is measured from the files afterwards.",
      "",
      f"{len(outcomes)} cases, {seconds:.0f} s on {os.cpu_count()} CPU cores.",
      "",
      "| # | case | command | exit | stderr | last stderr line | note |",
      "|---|---|---|---|---|---|---|",
  ]
  for i, o in enumerate(outcomes, 1):
    stderr = f"{o.stderr_lines} lines" + (", **traceback**" if o.traceback else "")
    lines.append(f"| {i} | {_md(o.what)} (`{o.case}`) | `{_md(o.command)}` | "
                 f"{'—' if o.exit is None else o.exit} | {stderr} | {_md(o.last_line)} | "
                 f"{_md(o.note)} |")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=str(REPO / "docs" / "hostile_inputs.md"))
  ap.add_argument("--json", default=str(pathlib.Path(__file__).with_name("hostile_inputs.json")))
  ap.add_argument("--only", default="", help="comma-separated case names")
  ap.add_argument("--list", action="store_true", help="print the case names and exit")
  ap.add_argument("--keep", default="", help="work folder to keep (default: a temporary one)")
  args = ap.parse_args(argv)
  import warnings
  warnings.filterwarnings("ignore", module="pydicom")   # the corruptions are on purpose
  # A shell without job control starts background commands with SIGINT ignored, and children
  # inherit that: the Ctrl-C cases would then test nothing. Commands start as from a terminal.
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  if args.list:
    for name, group, what, _ in CASES:
      print(f"{name:30s} {group:14s} {what}")
    return 0
  only = {s for s in args.only.split(",") if s}
  unknown = only - {c[0] for c in CASES}
  if unknown:
    ap.error(f"unknown case(s) {sorted(unknown)}; see --list")
  work = pathlib.Path(args.keep) if args.keep else pathlib.Path(tempfile.mkdtemp(
      prefix="ctjax_hostile_"))
  work.mkdir(parents=True, exist_ok=True)
  ctx = Context(work.resolve())
  outcomes, t0 = [], time.time()
  try:
    for name, group, what, fn in CASES:
      if only and name not in only:
        continue
      out = Outcome(name, group, what)
      t = time.time()
      case_dir = ctx.work / "cases" / name
      shutil.rmtree(case_dir, ignore_errors=True)   # every case starts from fresh copies
      try:
        fn(ctx, out, case_dir)
      except Exception as e:   # a case that could not be set up is recorded, not fatal
        out.note = _join(out.note, f"setup failed: {type(e).__name__}: {ctx.show(str(e))[:200]}")
      print(f"{name:30s} exit {out.exit!s:5s} {time.time() - t:6.1f} s  {out.last_line[:90]}",
            flush=True)
      outcomes.append(out)
  finally:
    if not args.keep:
      shutil.rmtree(work, ignore_errors=True)
  seconds = time.time() - t0
  write_table(outcomes, pathlib.Path(args.out), seconds)
  pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.json).write_text(json.dumps(
      {"seconds": round(seconds, 1), "cpus": os.cpu_count(),
       "cases": [dataclasses.asdict(o) for o in outcomes]}, indent=1))
  print(f"{len(outcomes)} cases in {seconds:.0f} s → {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
