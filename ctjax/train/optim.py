"""The one optimizer/schedule factory, fed the loop's single `total_steps`.

`config.optimizer` (ctjax.configs.common.base_config): `name` adam | adamw | sgd, `lr` (the base
peak learning rate), `lr_mults` {group: multiplier} over the task's named parameter groups
(`Task.param_groups`; when given, every group needs an entry), `schedule` constant | cosine | poly,
`warmup_steps` (or `warmup_epochs` when 0), `final_lr_fraction` (cosine), `power` (poly),
`b1`/`b2` (adam/adamw), `momentum` (sgd), `weight_decay` (adam and sgd: L2 added to the gradient,
as torch's `weight_decay`; adamw: decoupled), `grad_clip` (> 0: clip the global gradient norm).

With several groups every group has its own chain with peak `lr · mult` (`optax.multi_transform`);
with one group the chain is used directly.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

from ctjax.errors import ConfigError

NAMES = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "poly")


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Optimizer steps of the run: epochs × steps_per_epoch, capped by `train.max_steps` > 0."""
  epochs = int(config.train.num_epochs)
  cap = int(config.train.max_steps)
  total = steps_per_epoch * epochs
  if cap > 0:
    total = min(total, cap) if epochs > 0 else cap
  return max(1, int(total))


def warmup_steps(oc: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  steps = int(oc.get("warmup_steps", 0) or 0)
  if steps == 0:
    steps = int(float(oc.get("warmup_epochs", 0.0) or 0.0) * steps_per_epoch)
  return steps


def make_schedule(oc: ml_collections.ConfigDict, peak: float, total: int,
                  warmup: int) -> optax.Schedule:
  """The learning rate over steps for one peak value."""
  kind = oc.get("schedule", "constant")
  warmup = min(warmup, max(total - 1, 0))
  if kind == "constant":
    if warmup == 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.constant_schedule(peak)], [warmup])
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup, max(total, warmup + 1),
        end_value=peak * float(oc.get("final_lr_fraction", 0.0)))
  if kind == "poly":   # blend-sign paper, "Training details": lr · (1 - iter/max_iter)^power
    poly = optax.polynomial_schedule(init_value=peak, end_value=0.0,
                                     power=float(oc.get("power", 1.0)),
                                     transition_steps=max(total - warmup, 1))
    if warmup == 0:
      return poly
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), poly], [warmup])
  raise ConfigError(f"config.optimizer.schedule={kind!r}; expected one of {SCHEDULES}")


def _chain(oc: ml_collections.ConfigDict, schedule: optax.Schedule
           ) -> optax.GradientTransformation:
  name = oc.get("name", "adam")
  wd = float(oc.get("weight_decay", 0.0) or 0.0)
  if name == "adam":
    adam = optax.adam(schedule, b1=float(oc.b1), b2=float(oc.b2))
    return optax.chain(optax.add_decayed_weights(wd), adam) if wd > 0 else optax.chain(adam)
  if name == "adamw":
    return optax.adamw(schedule, b1=float(oc.get("b1", 0.9)), b2=float(oc.get("b2", 0.999)),
                       weight_decay=wd)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd),
                       optax.sgd(schedule, momentum=float(oc.get("momentum", 0.0)) or None))
  raise ConfigError(f"config.optimizer.name={name!r}; expected one of {NAMES}")


def make_optimizer(config: ml_collections.ConfigDict, total: int, steps_per_epoch: int,
                   groups: Callable[[Any], Any]) -> tuple[optax.GradientTransformation,
                                                          optax.Schedule]:
  """(optimizer over the trainable params, the base schedule for logging `train/lr`).

  `groups(params)` gives each trainable leaf its group name (`Task.param_groups`).
  """
  oc = config.optimizer
  lr = float(oc.lr)
  if lr <= 0:
    raise ConfigError(f"config.optimizer.lr={oc.lr} must be > 0")
  warmup = warmup_steps(oc, steps_per_epoch)
  base = make_schedule(oc, lr, total, warmup)
  mults = dict(oc.get("lr_mults") or {})
  for group, mult in mults.items():
    if float(mult) < 0:
      raise ConfigError(f"config.optimizer.lr_mults.{group}={mult} must be >= 0")

  def labels(params):
    tree = groups(params)
    unknown = sorted({g for g in jax.tree.leaves(tree)} - set(mults))
    if unknown:
      raise ConfigError(f"parameter groups {unknown} have no config.optimizer.lr_mults entry "
                        f"(known: {sorted(mults)})")
    return tree

  if not mults:
    tx = _chain(oc, base)
  else:
    transforms = {g: _chain(oc, make_schedule(oc, lr * float(m), total, warmup))
                  for g, m in mults.items()}
    tx = optax.multi_transform(transforms, labels)
  clip = float(oc.get("grad_clip", 0.0) or 0.0)
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, base
