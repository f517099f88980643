"""The persistent compilation cache every command turns on, and what it saved.

XLA's compiled programs are kept on disk (`jax_compilation_cache_dir`) and loaded by the next
start that compiles the same program on the same devices and software, so a second start of the
same job skips most of its compile time. Where they go is `config.compile.cache_dir`:

- "" (the default): `$CTJAX_COMPILE_CACHE_DIR` when set, else `$XDG_CACHE_HOME/ctjax/jax`, else
  `~/.cache/ctjax/jax`;
- "none": no persistent cache;
- any other value: that folder.

`configure(setting)` applies one of these (the command layer calls it once, before the first
compile); `CompileLog` counts, while it is open, the programs compiled, those loaded from the
cache and the compile seconds the cache saved (JAX's own monitoring events).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Mapping, Optional

from ctjax import fileio
from ctjax.errors import StorageError

log = logging.getLogger(__name__)

OFF = "none"
ENV = "CTJAX_COMPILE_CACHE_DIR"
# Programs that compile faster than this are not written (small jits would only fill the folder).
MIN_COMPILE_SECS = 1.0

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"


def default_dir(environ: Optional[Mapping[str, str]] = None) -> pathlib.Path:
  """`$XDG_CACHE_HOME/ctjax/jax`, else `~/.cache/ctjax/jax`."""
  environ = os.environ if environ is None else environ
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "ctjax" / "jax"


def resolve(setting: str = "", environ: Optional[Mapping[str, str]] = None
            ) -> Optional[pathlib.Path]:
  """The cache folder `setting` (a `config.compile.cache_dir` value) names; None when off."""
  environ = os.environ if environ is None else environ
  setting = str(setting or "").strip() or environ.get(ENV, "").strip()
  if setting.lower() == OFF:
    return None
  return pathlib.Path(os.path.expanduser(setting)) if setting else default_dir(environ)


def enable_cache(path: str | os.PathLike, *, min_compile_secs: float = MIN_COMPILE_SECS,
                 min_entry_bytes: int = 0) -> pathlib.Path:
  """Compiled programs kept in `path` (created; StorageError naming it when it cannot be)."""
  import jax
  path = fileio.writable_dir(path, "compilation cache folder (config.compile.cache_dir)")
  _reset_if_moved(str(path))
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_bytes))
  return path


def disable_cache() -> None:
  import jax
  _reset_if_moved(None)
  jax.config.update("jax_compilation_cache_dir", None)


def _reset_if_moved(path: Optional[str]) -> None:
  """JAX opens its cache once per process: a new folder in the same process (commands called
  in-process one after another) needs it closed first."""
  import jax
  if jax.config.jax_compilation_cache_dir == path:
    return
  from jax.experimental.compilation_cache import compilation_cache as cc
  cc.reset_cache()


def configure(setting: str = "", *, min_compile_secs: float = MIN_COMPILE_SECS
              ) -> Optional[pathlib.Path]:
  """Applies `setting` (see the module doc); returns the folder in use, None when off.

  A folder that was asked for and cannot be written is a StorageError; the default folder that
  cannot be written (a read-only home) turns the cache off with a warning instead."""
  path = resolve(setting)
  if path is None:
    disable_cache()
    return None
  try:
    return enable_cache(path, min_compile_secs=min_compile_secs)
  except StorageError as e:
    if str(setting or "").strip() or os.environ.get(ENV, "").strip():
      raise
    log.warning("no persistent compilation cache: %s", e)
    disable_cache()
    return None


def config_setting(config: Any) -> tuple[str, float]:
  """(cache_dir, min_compile_secs) of `config.compile`, defaults where it has none."""
  section = config.get("compile", None) if config is not None else None
  if section is None:
    return "", MIN_COMPILE_SECS
  return (str(section.get("cache_dir", "") or ""),
          float(section.get("min_compile_secs", MIN_COMPILE_SECS)))


@dataclasses.dataclass
class ProgramCompile:
  name: str
  seconds: float               # compile, or load from the cache
  saved: Optional[float]       # compile seconds the cache saved (None: compiled here)


class CompileLog:
  """The compiles of a `with` block: `with CompileLog() as c: …; c.summary()`.

  Listens to JAX's monitoring events (backend compile durations, and the compile time saved by
  each persistent-cache hit) while open; nothing is kept once it is closed."""

  def __init__(self, cache_dir: Optional[pathlib.Path] = None):
    self.cache_dir = cache_dir
    self.programs: list[ProgramCompile] = []
    self._saved: Optional[float] = None

  def _listen(self, event: str, seconds: float, **kwargs) -> None:
    if event == _SAVED_EVENT:
      self._saved = max(float(seconds), 0.0)
    elif event == _COMPILE_EVENT:
      self.programs.append(ProgramCompile(str(kwargs.get("fun_name", "?")), float(seconds),
                                          self._saved))
      self._saved = None

  def __enter__(self) -> "CompileLog":
    import jax
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    import jax
    jax.monitoring.unregister_event_duration_listener(self._listen)

  @property
  def hits(self) -> list[ProgramCompile]:
    return [p for p in self.programs if p.saved is not None]

  @property
  def saved_seconds(self) -> float:
    return sum(p.saved for p in self.hits)

  def first(self, name: str) -> Optional[ProgramCompile]:
    """The first compile of the function `name` (JAX names its program `jit(name)`)."""
    return next((p for p in self.programs if p.name in (name, f"jit({name})")), None)

  def summary(self, program: str = "train_step") -> str:
    """One line: the compile time of `program` (compiled, or loaded from the persistent cache
    with the seconds it saved), then all programs' totals."""
    where = (f"the persistent compilation cache ({self.cache_dir})" if self.cache_dir else
             "no persistent compilation cache")
    parts = []
    main = self.first(program)
    if main is not None and main.saved is not None:
      parts.append(f"{program} loaded in {main.seconds:.1f} s from the persistent compilation "
                   f"cache ({main.saved:.1f} s of compile saved)")
    elif main is not None:
      parts.append(f"{program} compiled in {main.seconds:.1f} s")
    total = sum(p.seconds for p in self.programs)
    parts.append(f"{len(self.programs)} programs in {total:.1f} s, {len(self.hits)} from "
                 f"{where}, {self.saved_seconds:.1f} s saved")
    return "compilation: " + "; ".join(parts)
