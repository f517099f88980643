"""ctjax.train.checkpoint: a workdir whose config.json predates a config field fails with one
ConfigError line naming the workdir and the field (not ml_collections' bare AttributeError);
config.json files of the earlier field names load under the current ones. A truncated latest
step: inference and resume use the previous intact step (an explicit broken step, or none intact,
lists the steps); a checkpoint of 2 processes is refused in 1; a full disk while checkpointing
and Ctrl-C during training are one line each (status 1 / 130), the checkpoints kept."""

import json

import pytest

from configs import drct2_rsna
from ctjax.errors import ConfigError
from ctjax.train import checkpoint


def old_workdir(tmp_path, *dotted):
  """A workdir holding only config.json: drct2_rsna runlocal with `dotted` fields deleted."""
  config = json.loads(drct2_rsna.get_config("runlocal").to_json_best_effort())
  for field in dotted:
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
      node = node[p]
    del node[leaf]
  workdir = tmp_path / "old_run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(config))
  return workdir


def test_load_run_names_missing_field(tmp_path):
  from ctjax.inference import runs
  workdir = old_workdir(tmp_path, "model.feature_norm")
  with pytest.raises(ConfigError) as info:
    runs.load_run(workdir)
  text = str(info.value)
  assert "\n" not in text
  assert str(workdir / "config.json") in text and "config.model.feature_norm" in text
  assert '"none"' in text   # drct2_rsna's current value, as a hint


def test_missing_field_error_only_for_config_fields(tmp_path):
  workdir = old_workdir(tmp_path, "model.feature_norm")
  assert checkpoint.missing_field_error(workdir, AttributeError("'NoneType' has no 'x'")) is None
  assert checkpoint.missing_field_error(workdir, KeyError("feature_norm")) is None
  import ml_collections
  c = ml_collections.ConfigDict({"model": {"feature_norms": 1}})
  with pytest.raises(AttributeError) as info:   # with ml_collections' "Did you mean" line
    c.model.feature_norm
  err = checkpoint.missing_field_error(workdir, info.value)
  assert isinstance(err, ConfigError) and "config.model.feature_norm" in str(err)
  # Unrelated errors pass through the context manager unchanged.
  with pytest.raises(AttributeError, match="has no 'x'"):
    with checkpoint.saved_config_errors(workdir):
      raise AttributeError("'NoneType' has no 'x'")
  with pytest.raises(ConfigError, match="config.model.feature_norm"):
    with checkpoint.saved_config_errors(workdir):
      c.model.feature_norm


def test_unknown_field_still_named(tmp_path):
  """A field no current config file has (renamed since): the bare name, still one line."""
  workdir = old_workdir(tmp_path)
  import ml_collections
  with pytest.raises(ConfigError, match=r"config field 'gone_field'"):
    with checkpoint.saved_config_errors(workdir):
      ml_collections.ConfigDict({"a": 1}).gone_field


def test_earlier_field_names_load_as_current(tmp_path):
  """A DrCT config.json written before the renames (variant, dropout, lr_primary/…,
  feature_cache, backbone_pretrain_config, the asset path) reads as today's config."""
  from configs import drct2_phantom
  current = json.loads(drct2_phantom.get_config().to_json_best_effort())
  old = json.loads(json.dumps(current))
  m, o = old["model"], old["optimizer"]
  m["variant"] = "drct2" if m.pop("aps") else "drct1"
  m["dropout"] = m.pop("dropout_rate")
  m["feature_cache"] = old.pop("features")["enabled"]
  m["backbone_pretrain_config"] = "configs/pretrain_phantom.py"
  m["backbone_weights"] = "ctjax/assets/vgg16_w0125_phantom.npz"
  lr = o.pop("lr")
  mults = o.pop("lr_mults")
  for group in ("primary", "aps", "fusion", "backbone"):
    o[f"lr_{group}"] = lr * mults[group]
  (tmp_path / "config.json").write_text(json.dumps(old))
  loaded = json.loads(checkpoint.load_config(tmp_path).to_json_best_effort())
  assert loaded["model"]["aps"] is True and loaded["model"]["dropout_rate"] == 0.5
  assert loaded["features"] == {"enabled": True}
  assert "backbone_pretrain_config" not in loaded["model"]
  assert loaded["model"]["backbone_weights"] == "asset:vgg16_w0125_phantom.npz"
  assert loaded["optimizer"]["lr"] == lr
  assert loaded["optimizer"]["lr_mults"] == pytest.approx(mults)
  for section in ("model", "data", "train", "loss"):
    assert loaded[section] == current[section], section


# ---------------------------------------- a corrupted latest step, a full disk, N processes

import errno  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from tests.support import stand_ins  # noqa: E402
from ctjax.commands import cli
from ctjax.errors import CheckpointError, DiskFullError  # noqa: E402

from tests.support import storage_helpers  # noqa: E402


def corrupt_arrays(step_dir):
  """Truncates every array data file of a checkpoint step to a third (a disk that lost the
  end of its writes); tensorstore then fails with OUT_OF_RANGE on restore."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files, step_dir
  for p in files:
    p.write_bytes(p.read_bytes()[:max(1, p.stat().st_size // 3)])


def _copy_run(reference_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference_run[0], workdir)
  return workdir, reference_run[1]


def _template(config):
  import jax
  from ctjax.train import optim
  from ctjax.train import state as state_lib
  task, model = stand_ins.TinyTask(), stand_ins.TinyNet()
  tx, _ = optim.make_optimizer(config, 6, 3, lambda p: task.param_groups(config, p))
  return jax.jit(lambda r: state_lib.create_state(task, model, config, r, tx))(
      jax.random.PRNGKey(0))


def test_inference_uses_the_previous_intact_step(reference_run, tmp_path, caplog):
  """latest/6 truncated: restore_state logs one line naming it and returns step 4's state."""
  workdir, config = _copy_run(reference_run, tmp_path)
  corrupt_arrays(workdir / "checkpoints" / "latest" / "6")
  template = _template(config)
  with caplog.at_level(logging.WARNING, logger="ctjax.train.checkpoint"):
    state, step = checkpoint.restore_state(workdir, template, which="latest")
  assert step == 4
  want, _ = checkpoint.restore_state(reference_run[0], template, step=4)
  np.testing.assert_array_equal(state.params["head"]["kernel"], want.params["head"]["kernel"])
  (record,) = [r for r in caplog.records if r.name == "ctjax.train.checkpoint"]
  text = record.getMessage()
  assert "\n" not in text and "latest step 6: OUT_OF_RANGE" in text
  assert "using latest step 4" in text and str(workdir / "checkpoints") in text
  # "auto" (evaluate, report) takes the intact best step and says nothing.
  caplog.clear()
  assert checkpoint.restore_state(workdir, template)[1] == 3
  assert not caplog.records


def test_broken_explicit_step_and_no_intact_step_list_the_steps(reference_run, tmp_path):
  workdir, config = _copy_run(reference_run, tmp_path)
  root = workdir / "checkpoints"
  corrupt_arrays(root / "latest" / "6")
  template = _template(config)
  with pytest.raises(CheckpointError) as info:
    checkpoint.restore_state(workdir, template, step=6)
  text = str(info.value)
  assert "\n" not in text and "step 6 cannot be restored" in text and "OUT_OF_RANGE" in text
  assert "saved steps: latest 4, 6; best 3" in text and "--step N" in text
  with pytest.raises(CheckpointError, match=r"step 5 not found; saved steps: latest 4, 6"):
    checkpoint.restore_state(workdir, template, step=5)
  corrupt_arrays(root / "latest" / "4")
  corrupt_arrays(root / "best" / "3")
  with pytest.raises(CheckpointError) as info:
    checkpoint.restore_state(workdir, template)
  text = str(info.value)
  assert "\n" not in text and "no checkpoint restores" in text
  assert all(f"{name} step {s}:" in text for name, s in (("best", 3), ("latest", 6),
                                                          ("latest", 4)))


def test_resume_from_the_previous_intact_step(reference_run, tmp_path, caplog):
  """A finished run whose latest step (6) is truncated: training again resumes from step 4 (one
  warning line), sets step 6 aside, re-runs steps 5-6 with the uninterrupted losses, and
  metrics.jsonl holds each step once."""
  from ctjax.train import loop
  workdir, config = _copy_run(reference_run, tmp_path)
  latest = workdir / "checkpoints" / "latest"
  corrupt_arrays(latest / "6")
  with caplog.at_level(logging.WARNING, logger="ctjax.train.checkpoint"):
    loop.train_and_evaluate(config, workdir, task=stand_ins.TinyTask(),
                            data=stand_ins.MemoryData())
  (record,) = [r for r in caplog.records if r.name == "ctjax.train.checkpoint"]
  assert "resuming from step 4" in record.getMessage()
  assert (workdir / "checkpoints" / "unreadable" / "6" / "state").is_dir()
  assert sorted(p.name for p in latest.iterdir() if p.name.isdigit()) == ["4", "6"]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in records if "train/loss" in r]
  assert train_steps == [1, 2, 3, 4, 5, 6]
  assert [r["step"] for r in records if "val/macro_f1" in r] == [3, 6]
  got, ref = stand_ins.read_losses(workdir), stand_ins.read_losses(reference_run[0])
  np.testing.assert_allclose([got[s] for s in (5, 6)], [ref[s] for s in (5, 6)], rtol=1e-6)


def test_finished_run_with_a_broken_best_checkpoint_hands_the_latest_to_after_training(
    reference_run, tmp_path, caplog):
  """A task with an after_training hook (DrCT's highlight scale) gets the best state; when the
  best checkpoint no longer restores it gets the final state with a warning, and the run ends
  normally instead of failing after all its training."""
  from ctjax.train import loop
  workdir, config = _copy_run(reference_run, tmp_path)
  best = workdir / "checkpoints" / "best"
  steps = [p for p in best.iterdir() if p.name.isdigit()]
  assert steps
  for p in steps:
    corrupt_arrays(p)
  chosen = {}

  class Hooked(stand_ins.TinyTask):
    def after_training(self, config, workdir, variables):
      chosen["variables"] = variables

  with caplog.at_level(logging.WARNING, logger="ctjax.train.checkpoint"):
    loop.train_and_evaluate(config, workdir, task=Hooked(), data=stand_ins.MemoryData())
  assert "variables" in chosen
  assert any("cannot be restored" in r.getMessage() and "using latest step 6" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_resume_refuses_a_checkpoint_of_two_processes(reference_run, tmp_path):
  """Data iterator states of 2 processes (as a 2-process run writes them) in a 1-process
  resume: one line saying so and how to resume; nothing restored, moved or written."""
  from ctjax.train import loop
  workdir, config = _copy_run(reference_run, tmp_path)
  for step in ("4", "6"):
    data = workdir / "checkpoints" / "latest" / step / "data"
    state = (data / "process_0-of-1.json").read_text()
    (data / "process_0-of-1.json").unlink()
    for i in range(2):
      (data / f"process_{i}-of-2.json").write_text(state)
  before = (workdir / "metrics.jsonl").read_text()
  with pytest.raises(CheckpointError) as info:
    loop.train_and_evaluate(config, workdir, task=stand_ins.TinyTask(),
                            data=stand_ins.MemoryData())
  text = str(info.value)
  assert "\n" not in text and str(workdir / "checkpoints" / "latest" / "6") in text
  assert "written by 2 processes" in text and "this run has 1" in text
  assert "--num_processes 2" in text
  assert not (workdir / "checkpoints" / "unreadable").exists()
  assert (workdir / "metrics.jsonl").read_text() == before


def _tiny_command(overrides, data=None):
  """A `fn(flags, config, args)` command training the tiny task in --workdir (for cli.run)."""
  def command(fv, _config, _args):
    from ctjax.train import loop
    loop.train_and_evaluate(stand_ins.tiny_config(**overrides), fv.workdir,
                            task=stand_ins.TinyTask(), data=data or stand_ins.MemoryData())
  return command


_TS_FULL = ('RESOURCE_EXHAUSTED: Error writing local file "{d}/2.orbax-checkpoint-tmp/state/'
            'manifest.ocdbt": Failed writing: "{d}/2.orbax-checkpoint-tmp/state/manifest.ocdbt"'
            ": Failed to write 351654 bytes to file 12: No space left on device "
            "[os_error_code='28'] [tensorstore_spec='{{}}']")


def test_disk_full_while_checkpointing_is_one_line(tmp_path, monkeypatch, capsys):
  """Orbax reports a full disk as tensorstore's RESOURCE_EXHAUSTED ValueError: one line naming
  the step's folder and the space (simulated here; on a real full disk below)."""
  import orbax.checkpoint as ocp
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if str(self.directory).endswith("latest") and step == 2:
      raise ValueError(_TS_FULL.format(d=self.directory))
    return original(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  rc = cli.run(_tiny_command({"train.num_epochs": 1, "checkpoint.every_steps": 2,
                              "evals.val.every_steps": -1, "checkpoint.best_metric": ""}),
               ["--workdir", str(tmp_path / "run")])
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert rc == cli.EXIT_ERROR
  assert len(err) == 1, err
  line = err[0]
  assert line.startswith(f"error: {tmp_path / 'run' / 'checkpoints' / 'latest' / '2'}: "
                         "disk full while writing checkpoint step 2")
  assert "a write of 343.4 KB failed" in line and "free on that file system" in line
  assert "needs about" in line


def test_real_full_disk_while_checkpointing(tmp_path, capsys):
  """The workdir on an 80 KB tmpfs: the first checkpoint (~50 KB) does not fit next to the
  best one; the command ends with one line naming a checkpoint folder and the space."""
  with storage_helpers.small_disk(tmp_path / "small", "80k"):
    rc = cli.run(_tiny_command({"train.num_epochs": 1, "evals.val.every_steps": 3,
                                "checkpoint.every_steps": 2, "log.tensorboard": False}),
                 ["--workdir", str(tmp_path / "small" / "run")])
  err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
  assert rc == cli.EXIT_ERROR
  assert len(err) == 1 and "disk full while writing" in err[0], err
  assert str(tmp_path / "small" / "run" / "checkpoints") in err[0]
  assert "free on that file system" in err[0] and "needs about" in err[0]


def test_ctrl_c_in_training_keeps_checkpoints(tmp_path, capsys):
  """Ctrl-C while step 5's batch is fetched (checkpoints every 2 steps): status 130, one line,
  and the run resumes from the checkpoint of step 4."""
  rc = cli.run(_tiny_command({"train.num_epochs": 1, "checkpoint.every_steps": 2,
                              "evals.val.every_steps": -1},
                             stand_ins.MemoryData(interrupt_at=5)),
               ["--workdir", str(tmp_path / "run")])
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert rc == cli.EXIT_INTERRUPTED
  assert err == [f"error: {cli.INTERRUPTED}"]
  latest = tmp_path / "run" / "checkpoints" / "latest"
  assert sorted(p.name for p in latest.iterdir() if p.name.isdigit()) == ["2", "4"]
  template = _template(stand_ins.tiny_config())
  assert checkpoint.restore_state(tmp_path / "run", template, which="latest")[1] == 4


def test_storage_error_kinds():
  ck = checkpoint.Checkpointer.__new__(checkpoint.Checkpointer)
  ck._needed, ck._failed = 1000, False
  ck.latest = type("M", (), {"directory": "/nowhere/checkpoints/latest"})()
  e = ck._storage_error(OSError(errno.ENOSPC, "No space left on device"), "/x/latest", "ckpt")
  assert isinstance(e, DiskFullError) and "needs about 1000 B" in str(e)
  e = ck._storage_error(PermissionError(errno.EACCES, "Permission denied"), "/x/latest", "c")
  assert "permission denied" in str(e) and str(e).startswith("/x/latest")
  plain = KeyError("unrelated")
  assert ck._storage_error(plain, "/x/latest", "c") is plain
