"""Shared plumbing of the `python -m ctjax.X` entry points owned by the trainer.

absl flags + ml_collections config files; every CTJaxError (and every flag/config parse
error) becomes one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Optional, Sequence

from absl import flags

from ctjax.errors import CTJaxError

EXIT_ERROR = 1
EXIT_USAGE = 2


def distributed_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 when launched as several processes", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "number of processes", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "this process's index in [0, num_processes)",
                       flag_values=fv)


def _one_line(e: BaseException, argv: Sequence[str] = ()) -> str:
  cause = e.__cause__ or e.__context__
  if isinstance(e, (flags.Error, AttributeError)) and isinstance(cause, KeyError):
    e = cause
  if isinstance(e, KeyError):   # ml_collections: an override names a field the config lacks.
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    field = str(e.args[0]).strip("'\"")
    return (f"unknown config field '{field}' (overrides: {', '.join(overrides)}); "
            "see the config file for the fields it defines")
  text = str(e)
  if "Traceback" in text:        # a config file raised: keep the exception's last line.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = f"{text.splitlines()[0].split(':')[0]}: {lines[-1]}"
  return " ".join(text.split()) or type(e).__name__


def run(fn: Callable, argv: Optional[Sequence[str]] = None, *, needs_config: bool,
        extra_flags: Optional[Callable] = None, workdir_help: str = "run directory") -> int:
  """Parses flags into a private FlagValues and calls fn(flags, config)."""
  from ml_collections import config_flags
  argv = list(sys.argv if argv is None else argv)
  fv = flags.FlagValues()
  config_holder = None
  if needs_config:
    config_holder = config_flags.DEFINE_config_file(
        "config", None, "configs/<name>.py[:args]", flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help, flag_values=fv)
  if extra_flags is not None:
    extra_flags(fv)
  try:
    fv(argv)
    if needs_config and fv["config"].value is None:
      raise flags.Error("--config configs/<name>.py is required")
    if not fv.workdir:
      raise flags.Error("--workdir DIR is required")
    config = config_holder.value if needs_config else None
  except (flags.Error, ValueError, TypeError, KeyError, AttributeError, OSError,
          CTJaxError) as e:
    print(f"error: {_one_line(e, argv)}", file=sys.stderr)
    return EXIT_USAGE
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "orbax", "jax._src", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    return fn(fv, config)
  except CTJaxError as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return EXIT_ERROR
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    return 130
