"""One-line errors through ctjax.commands.cli.run: a missing --config file, an unknown override, a file or
read-only --workdir, a read-only `report --out` / `evaluate --json`, `evaluate --split tset`,
Ctrl-C, an OSError or a full disk escaping a command, and tracebacks of logged and background-
thread exceptions kept to one line. Each asserts the exit status and the one line (path named)."""

import errno
import logging
import pathlib
import subprocess
import sys
import threading

import pytest

from tests.support import storage_helpers
from ctjax.commands import cli
from ctjax.commands import evaluate as evaluate_cli
from ctjax.commands import prepare as prepare_cli
from ctjax.commands import report as report_cli
from ctjax.commands import train as train_cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUNLOCAL = str(ROOT / "configs" / "drct2_phantom.py") + ":runlocal"


def _one_error_line(capsys) -> str:
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
  assert len(err) == 1 and err[0].startswith("error: "), err
  assert "Traceback" not in err[0]
  return err[0]


def test_missing_config_file(tmp_path, capsys):
  missing = tmp_path / "nope.py"
  rc = train_cli.main(["--config", f"{missing}:runlocal", "--workdir", str(tmp_path / "w")])
  line = _one_error_line(capsys)
  assert rc == cli.EXIT_USAGE
  assert line == f"error: {missing}: no such config file (--config {missing}:runlocal)"
  assert not (tmp_path / "w").exists()


def test_missing_config_file_as_a_program(tmp_path):
  """The same through `python -m` (ml_collections defers the load error to first use)."""
  r = subprocess.run([sys.executable, "-m", "ctjax.prepare", "--config",
                      str(tmp_path / "nope.py")], capture_output=True, text=True, cwd=ROOT,
                     timeout=120)
  assert r.returncode == cli.EXIT_USAGE
  assert r.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'nope.py'}: no such config file (--config {tmp_path / 'nope.py'})"]


def test_config_file_that_raises(tmp_path, capsys):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(arg=None):\n  return undefined_name\n")
  rc = prepare_cli.main(["--config", str(bad)])
  line = _one_error_line(capsys)
  assert rc == cli.EXIT_USAGE and "NameError" in line and "undefined_name" in line


def test_unknown_override_in_prepare(capsys):
  rc = prepare_cli.main(["--config", RUNLOCAL, "--config.data.bogus=3"])
  line = _one_error_line(capsys)
  assert rc == cli.EXIT_USAGE
  assert "unknown config field 'bogus'" in line and "--config.data.bogus" in line


def test_workdir_is_a_file(tmp_path, capsys):
  afile = tmp_path / "afile"
  afile.write_text("not a folder")
  rc = train_cli.main(["--config", RUNLOCAL, "--workdir", str(afile)])
  line = _one_error_line(capsys)
  assert rc == cli.EXIT_ERROR
  assert line == f"error: {afile}: --workdir is a file, not a folder"
  rc = train_cli.main(["--config", RUNLOCAL, "--workdir", str(afile / "sub")])
  line = _one_error_line(capsys)
  assert rc == cli.EXIT_ERROR and f"{afile} is a file, not a folder" in line


def test_workdir_read_only(tmp_path, capsys):
  with storage_helpers.readonly_dir(tmp_path / "ro") as ro:
    rc = train_cli.main(["--config", RUNLOCAL, "--workdir", str(ro / "run")])
    line = _one_error_line(capsys)
  assert rc == cli.EXIT_ERROR
  assert line.startswith(f"error: {ro / 'run'}: --workdir is not writable (")
  assert "read-only file system" in line or "permission denied" in line


def test_report_out_read_only(tmp_path, capsys):
  """Checked before the run is restored: the workdir does not even need to exist."""
  with storage_helpers.readonly_dir(tmp_path / "ro") as ro:
    rc = report_cli.main(["--workdir", str(tmp_path / "no_run"), "--scan", str(tmp_path),
                          "--out", str(ro / "r.html")])
    line = _one_error_line(capsys)
    assert rc == cli.EXIT_ERROR
    assert line.startswith(f"error: {ro}: folder of the --out report file is not writable")
    rc = report_cli.main(["--workdir", str(tmp_path / "no_run"), "--scans", str(tmp_path),
                          "--out", str(ro / "reports")])
    line = _one_error_line(capsys)
    assert rc == cli.EXIT_ERROR and line.startswith(f"error: {ro / 'reports'}: --out folder")
  (tmp_path / "adir").mkdir()
  rc = report_cli.main(["--workdir", str(tmp_path / "no_run"), "--scan", str(tmp_path),
                        "--out", str(tmp_path / "adir")])
  line = _one_error_line(capsys)
  assert rc == cli.EXIT_ERROR and "is a folder, expected a file name" in line


def test_evaluate_json_read_only(tmp_path, capsys):
  with storage_helpers.readonly_dir(tmp_path / "ro") as ro:
    rc = evaluate_cli.main(["--workdir", str(tmp_path / "no_run"), "--json",
                            str(ro / "report.json")])
    line = _one_error_line(capsys)
  assert rc == cli.EXIT_ERROR and str(ro) in line and "--json file" in line


def test_evaluate_split_typo_names_the_splits(tmp_path, capsys):
  rc = evaluate_cli.main(["--workdir", str(tmp_path), "--split", "tset"])
  line = _one_error_line(capsys)
  assert rc == cli.EXIT_USAGE
  assert "--split=tset" in line and "train|val|test" in line


def _command(exc):
  def fn(fv, config, args):
    raise exc
  return fn


@pytest.mark.parametrize("exc, code, needle", [
    (KeyboardInterrupt(), cli.EXIT_INTERRUPTED, cli.INTERRUPTED),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/x.npy"), cli.EXIT_ERROR,
     "/data/out/x.npy: disk full while writing"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), cli.EXIT_ERROR,
     "/data/out: cannot write (permission denied)"),
    (ValueError("RESOURCE_EXHAUSTED: Failed to write 9 bytes to file 3: No space left on "
                "device [os_error_code='28']"), None, None),
])
def test_errors_escaping_a_command(exc, code, needle, capsys):
  if code is None:   # not an OSError: a bug or a library error, left to its traceback
    with pytest.raises(ValueError):
      cli.run(_command(exc), [], workdir=None)
    return
  rc = cli.run(_command(exc), [], workdir=None)
  line = _one_error_line(capsys)
  assert rc == code and needle in line


def test_disk_full_message_says_space_needed_and_free(tmp_path):
  from ctjax import fileio
  e = fileio.disk_full_error(tmp_path / "cache", 5 * 2**20, "writing the prepared cache")
  text = str(e)
  assert text.startswith(f"{tmp_path / 'cache'}: disk full while writing the prepared cache")
  assert "needs about 5.0 MB" in text and "free on that file system" in text
  assert fileio.is_disk_full(ValueError("… No space left on device [os_error_code='28']"))
  assert not fileio.is_disk_full(ValueError("OUT_OF_RANGE: short read"))


def test_atomic_write_on_a_full_disk(tmp_path):
  from ctjax import fileio
  from ctjax.errors import DiskFullError
  with storage_helpers.small_disk(tmp_path / "small", "8k") as small:
    with pytest.raises(DiskFullError) as info:
      fileio.atomic_write_text(small / "big.json", "x" * 100_000, "writing big.json")
    assert not list(small.iterdir())   # no half-written file or temporary left
  assert f"{small / 'big.json'}: disk full while writing big.json" in str(info.value)
  assert "needs about 97.7 KB" in str(info.value)


def test_logged_and_thread_exceptions_are_one_line(caplog):
  """A library's logger.exception and a background thread's exception: one line each."""
  formatter = cli._OneLineFormatter("%(levelname)s %(name)s: %(message)s")
  try:
    raise ValueError("first\nsecond")
  except ValueError:
    record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed",
                                                (), sys.exc_info())
  text = formatter.format(record)
  assert "\n" not in text and "Traceback" not in text
  assert text == "ERROR x: failed   (ValueError: first second)"

  def fn(fv, config, args):
    t = threading.Thread(target=lambda: 1 / 0, name="writer")
    t.start()
    t.join()
  with caplog.at_level(logging.WARNING, logger="ctjax.commands.cli"):
    assert cli.run(fn, [], workdir=None) == cli.EXIT_OK
  (rec,) = [r for r in caplog.records if r.name == "ctjax.commands.cli"]
  assert rec.getMessage() == "thread writer stopped: ZeroDivisionError: division by zero"
  assert threading.excepthook is not None and sys.unraisablehook is not None


COMMANDS = sorted(p.stem for p in (ROOT / "ctjax" / "commands").glob("*.py")
                  if p.stem not in ("__init__", "cli"))


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_answers_help(name, capsys):
  """`--help` (and `-h`, `--helpfull`) prints the command's page and flags and exits 0: it was an
  'Unknown command line flag' error with exit 2."""
  import importlib
  module = importlib.import_module(f"ctjax.commands.{name}")
  for flag in ("--help", "-h", "--helpfull"):
    assert module.main([flag]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert f"python -m ctjax.{name}" in out and "\nflags:\n" in out, out[:300]
    assert "Unknown command line flag" not in out


def test_help_with_a_config_shows_its_arguments_and_fields(capsys):
  from ctjax.commands import train
  config = str(ROOT / "configs" / "drct2_phantom.py")
  assert train.main(["--help", "--config", config]) == cli.EXIT_OK
  out = capsys.readouterr().out
  assert "Arguments:" in out and "--config.a.b=value" in out
  assert train.main(["--helpfull", "--config", config + ":runlocal"]) == cli.EXIT_OK
  out = capsys.readouterr().out
  assert "  train.batch_size = " in out and "  model.backbone_weights = " in out


def test_help_of_the_installed_entry_point_exits_zero():
  r = subprocess.run([sys.executable, "-m", "ctjax.evaluate", "--help"], capture_output=True,
                     text=True, timeout=120, cwd=ROOT)
  assert r.returncode == 0 and "python -m ctjax.evaluate" in r.stdout and not r.stderr.strip()


def test_an_override_typo_is_one_line_with_the_hint(capsys):
  from ctjax.commands import train
  config = str(ROOT / "configs" / "drct2_phantom.py")
  assert train.main(["--config", config, "--workdir", "w",
                     "--config.train.batch_sise=3"]) == cli.EXIT_USAGE
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "''" not in err, err
  assert err.startswith("error: unknown config field 'batch_sise' (overrides: "
                        "--config.train.batch_sise); Did you mean \"batch_size\"")
  assert "python -m ctjax.train --helpfull --config FILE" in err


BAR_AND_LOGS = """
import logging, sys
from tqdm import tqdm
from ctjax.commands import cli
log = logging.getLogger("ctjax.demo")
def fn(fv, config, args):
  bar = tqdm(total=6, unit="step", desc="demo", mininterval=0)
  for i in range(6):
    bar.update(1)
    if i in (2, 4):
      log.info("step %d val: macro_f1=0.5", i)   # logged while the bar is drawn
  bar.close()
  log.warning("done")
sys.exit(cli.run(fn, None, prog="demo", workdir=None))
"""


def test_log_records_start_on_their_own_line_beside_a_bar():
  from tests.support import terminal
  r = subprocess.run([sys.executable, "-c", BAR_AND_LOGS], cwd=ROOT, capture_output=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  err = r.stderr.decode()
  assert terminal.glued_lines(err) == []
  shown = terminal.rendered_lines(err)
  records = [ln for ln in shown if terminal.RECORD.match(ln)]
  assert [ln.split(": ", 1)[1] for ln in records] == [
      "step 2 val: macro_f1=0.5", "step 4 val: macro_f1=0.5", "done"]
  assert any(terminal.BAR.search(ln) and "6/6" in ln for ln in shown)   # the bar is redrawn
