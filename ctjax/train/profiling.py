"""A `jax.profiler` trace of a few steady steps of a loop (`--profile DIR`).

    trace = StepTrace(logdir, count=3, name="train")
    for step in …:
      with trace.step(step):
        state, metrics = train_step(state, batch, rng)
      trace.done((state, metrics))   # waits for the last traced step, stops the trace
    trace.close()                          # a loop that ended early

The `count` steps after the first `skip` of this loop are traced (by default the 2nd to the 4th:
the first step of a start compiles, the next ones show the steady program), each inside `jax.profiler.StepTraceAnnotation(name,
step_num=step)`. The trace lands in `<logdir>/plugins/profile/<time>/` (`*.xplane.pb`, and a
`*.trace.json.gz` that chrome://tracing and Perfetto open); TensorBoard's profile plugin reads
the folder. `logdir=None` traces nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, Optional

from ctjax import fileio
from ctjax.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_STEPS = 3


class StepTrace:
  """Traces the `count` steps after the first `skip` steps of one loop into `logdir` (None: no
  trace). `steps` counts the loop's steps so far."""

  def __init__(self, logdir: Optional[str | os.PathLike], *, count: int = DEFAULT_STEPS,
               skip: int = 1, name: str = "train", what: str = "--profile"):
    if count < 1 or skip < 0:
      raise ConfigError(f"{what}: {count} steps to trace after {skip}; expected at least 1 "
                        "after 0 or more")
    self.logdir = None if logdir is None else fileio.writable_dir(logdir, f"{what} folder")
    self.skip, self.count, self.name = int(skip), int(count), name
    self.steps = 0
    self.traced: list[int] = []
    self._open = False

  @contextlib.contextmanager
  def step(self, step: int) -> Iterator[None]:
    """Around one step's dispatch (`step`: its number in the annotation): starts the trace at
    the first traced step, annotates the traced ones."""
    self.steps += 1
    if self.logdir is None or not self.skip < self.steps <= self.skip + self.count:
      yield
      return
    import jax
    if not self._open:
      jax.profiler.start_trace(str(self.logdir))
      self._open = True
    with jax.profiler.StepTraceAnnotation(self.name, step_num=step):
      yield
    self.traced.append(step)

  def done(self, outputs: Any = None) -> None:
    """After a step: at the last traced one, waits for its `outputs` and stops the trace."""
    if self._open and self.steps >= self.skip + self.count:
      import jax
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    if self._open:
      import jax
      jax.profiler.stop_trace()
      self._open = False
      log.info("profile of %s steps %s written to %s", self.name,
               ",".join(map(str, self.traced)), self.logdir)
