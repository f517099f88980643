"""`python -m ctjax.reader`: sub-commands, links, one-line errors."""

import re
import subprocess
import sys
import pathlib

from ctjax.commands import reader as cli
from ctjax.reader import db as db_lib
from ctjax.reader import study as study_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_add_reader_prints_a_working_link_and_readers_lists_progress(study_dir, capsys):
  assert cli.main(["add-reader", "--workdir", str(study_dir),
                   "--name", "JR B"]) == 0
  out = capsys.readouterr().out
  token = re.search(r"http://127\.0\.0\.1:8765/r/([A-Za-z0-9_-]+)/", out).group(1)
  d = db_lib.StudyDB(study_lib.Study(study_dir))
  assert d.reader_for_token(token).name == "JR B"
  assert cli.main(["new-token", "--workdir", str(study_dir),
                   "--name", "JR B"]) == 0
  new = re.search(r"/r/([A-Za-z0-9_-]+)/", capsys.readouterr().out).group(1)
  assert new != token and d.reader_for_token(new).name == "JR B"
  assert cli.main(["readers", "--workdir", str(study_dir)]) == 0
  assert "JR B: alone: 0 of 3 read" in capsys.readouterr().out
  assert cli.main(["add-reader", "--workdir", str(study_dir),
                   "--name", "JR B"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "a reader named 'JR B' exists" in err[0]
  assert cli.main(["export", "--workdir", str(study_dir)]) == 0
  assert (study_dir / "reads.csv").read_text().startswith("reader,reader_number,arm,")
  d.close()


def test_errors_are_one_line(tmp_path, capsys):
  assert cli.main([]) == 2
  assert cli.main(["nope"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and "give a command (got 'nope')" in err[1]
  assert cli.main(["analyze", "--workdir", str(tmp_path / "none")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no study here" in err[0] and str(tmp_path / "none") in err[0]
  assert cli.main(["create", "--workdir", str(tmp_path / "s")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "--run RUN" in err[0]
  assert cli.main(["--workdir", str(tmp_path / "s"), "readers"]) == 2
  assert "put the command before its flags" in capsys.readouterr().err
  assert cli.main(["readers", "--workdir", str(tmp_path / "s"), "extra"]) == 2
  assert "unexpected arguments ['extra']" in capsys.readouterr().err
  assert cli.main(["create", "--workdir", str(tmp_path / "s"), "--run",
                   str(tmp_path / "norun")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "config.json" in err[0]


def test_serve_on_a_missing_study_is_one_line(tmp_path):
  r = subprocess.run([sys.executable, "-m", "ctjax.reader", "serve", "--workdir",
                      str(tmp_path / "none")], capture_output=True, text=True, cwd=ROOT,
                     timeout=60)
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "no study here" in lines[0], r.stderr
