"""ctjax.train.steps: the train step's gradient norm is the norm of the trainable parameters'
gradients (computed apart with jax.grad), frozen ones excluded."""

import jax
import numpy as np
import optax

from tests.support import stand_ins
from ctjax.train import optim, steps
from ctjax.train import state as state_lib


def test_grad_norm_is_the_trainable_gradients_norm():
  config = stand_ins.tiny_config()
  task = stand_ins.TinyTask()
  model = task.build_model(config)
  tx, _ = optim.make_optimizer(config, 10, 5, lambda p: task.param_groups(config, p))
  state = state_lib.create_state(task, model, config, jax.random.PRNGKey(0), tx)
  assert "stem" in state.frozen and "stem" not in state.params
  src = stand_ins.MemorySource(8, seed=1)
  batch = {k: np.stack([src[i][k] for i in range(8)]) for k in ("hu", "label")}
  rng = jax.random.PRNGKey(3)
  _, metrics = jax.jit(steps.make_train_step(task, model, config))(state, batch, rng)

  def loss(trainable):
    params = state_lib.merge_params(trainable, state.frozen)
    return task.loss_fn(model, params, state.extra, batch, rng, config, True)[0]

  want = float(optax.global_norm(jax.grad(loss)(state.params)))
  assert want > 0
  np.testing.assert_allclose(float(metrics["grad_norm"]), want, rtol=1e-5)
