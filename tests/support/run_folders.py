"""Run folders as `python -m ctjax.train` leaves them, of random weights: for the tests of
what opens a trained run (export, serving, predictions) without training one."""

import pathlib

import numpy as np

from ctjax.inference import runs


def write_run(workdir: pathlib.Path, config, seed: int = 0) -> None:
  """A run folder as training leaves it: config.json + a checkpoint of `config`'s model."""
  import jax.numpy as jnp
  from ctjax.models import blendnet
  from ctjax.models import pretrained
  from ctjax.train import checkpoint
  from ctjax.train.tasks import get_task
  task = get_task(config.task)
  model = task.build_model(config)
  size = int(config.data.image_size)
  if config.task == "drct":
    from ctjax.train.tasks import drct
    variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config),
                                         seed=seed)
  else:
    variables = blendnet.strip_perturbations(
        pretrained.random_variables(model, jnp.zeros((1, size, size, 3)), seed=seed))
  # Non-trivial BatchNorm statistics and biases, so that a wrong weight mapping shows.
  rng = np.random.default_rng(seed + 1)
  variables = _perturb(variables, rng)
  run = runs.make_run(config, variables, task=task, model=model, step=3)
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  ckpt = checkpoint.Checkpointer(workdir, config)
  ckpt.save(3, run.state, None, force=True)
  ckpt.close()


def _perturb(tree, rng):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out[k] = _perturb(v, rng)
    elif k == "var":
      out[k] = (0.5 + rng.random(np.shape(v))).astype(np.float32)
    elif k in ("mean", "bias"):
      out[k] = (0.1 * rng.standard_normal(np.shape(v))).astype(np.float32)
    else:
      out[k] = v
  return out
