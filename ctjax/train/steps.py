"""Pure train/eval steps and their one-time compilation on the mesh.

`train_step(state, batch, rng) -> (state, metrics)`: gradients of `Task.loss_fn` w.r.t. the
trainable parameters only, optimizer update, updated batch statistics; `rng` is the step's key
(the loop passes fold_in(state.rng, step), so a resumed run draws the same keys). Metrics are
means over the global batch (the loss_fn sees the whole global batch; XLA inserts the
cross-device reductions).
`eval_step(state, batch) -> outputs`: `Task.predict` on the full variables.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from ctjax.train import parallel
from ctjax.train.state import TrainState, merge_params


def make_train_step(task, model, config: ml_collections.ConfigDict) -> Callable:
  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    def loss(trainable):
      params = merge_params(trainable, jax.lax.stop_gradient(state.frozen))
      return task.loss_fn(model, params, state.extra, batch, rng, config, True)

    (value, (metrics, extra)), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, extra if extra is not None else state.extra)
    metrics = dict(metrics)
    metrics.setdefault("loss", value)
    metrics["grad_norm"] = _global_norm(grads)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return new_state, metrics

  return train_step


def make_eval_step(task, model, config: ml_collections.ConfigDict,
                   fn: Optional[Callable] = None) -> Callable:
  """`eval_step(state, batch)`: `fn(model, variables, batch, config)`, default `task.predict`."""
  predict = fn if fn is not None else task.predict

  def eval_step(state: TrainState, batch: dict) -> dict:
    return dict(predict(model, state.variables(), batch, config))

  return eval_step


def _global_norm(tree: Any) -> jax.Array:
  """‖tree‖₂ over every leaf: one reduction over their concatenation (not one per leaf)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
  return jnp.sqrt(jnp.sum(jnp.square(flat)))


def compile_steps(task, model, config: ml_collections.ConfigDict, mesh: Mesh,
                  state_sharding: Any) -> tuple[Callable, Callable]:
  """(train_step, eval_step) jitted once with explicit shardings; the state is donated."""
  data = parallel.data_sharding(mesh)
  repl = parallel.replicated(mesh)
  train = jax.jit(make_train_step(task, model, config),
                  in_shardings=(state_sharding, data, repl),
                  out_shardings=(state_sharding, repl),
                  donate_argnums=(0,))
  return train, compile_eval_step(task, model, config, mesh, state_sharding)


def compile_eval_step(task, model, config: ml_collections.ConfigDict, mesh: Mesh,
                      state_sharding: Any, fn: Optional[Callable] = None) -> Callable:
  """The eval step jitted with explicit shardings: state replicated, batch and outputs split
  on the data axis."""
  data = parallel.data_sharding(mesh)
  return jax.jit(make_eval_step(task, model, config, fn), in_shardings=(state_sharding, data),
                 out_shardings=data)
