"""The one command-line helper of every `python -m ctjax.X` entry point.

absl flags (+ an ml_collections config file where the command takes one) parsed into a private
FlagValues, then `fn(flags, config, args)` with the positional arguments. One error style and one
exit-code convention for all commands: every CTJaxError, flag or config error becomes one line
`error: …` on stderr; exit status 0 ok, 1 error, 2 usage (bad flags or config), 130 Ctrl-C.
`main(argv)` functions take argv without the program name (as argparse's `parse_args`).
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Optional, Sequence

from absl import flags

from ctjax.errors import CTJaxError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

REQUIRED, OPTIONAL = "required", "optional"


class UsageError(CTJaxError):
  """Wrong command-line use (missing flag, unknown sub-command): exit status 2."""


def distributed_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 when launched as several processes; default: "
                      "discovered from SLURM / Open MPI / TPU pods / JAX_COORDINATOR_ADDRESS",
                      flag_values=fv)
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


def _error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)


def run(fn: Callable, argv: Optional[Sequence[str]] = None, *, prog: str = "ctjax",
        config: Optional[str] = None, workdir: Optional[str] = REQUIRED,
        extra_flags: Optional[Callable] = None, workdir_help: str = "run directory",
        positional: bool = False) -> int:
  """Parses flags into a private FlagValues and returns `fn(flags, config, args)`'s status.

  `config` / `workdir`: REQUIRED, OPTIONAL or None (the command has no such flag).
  `positional`: the command takes positional arguments (`args`); otherwise they are an error.
  """
  from ml_collections import config_flags
  argv = [prog] + list(sys.argv[1:] if argv is None else argv)
  fv = flags.FlagValues()
  holder = None
  if config is not None:
    holder = config_flags.DEFINE_config_file(
        "config", None, "configs/<name>.py[:args]", flag_values=fv, lock_config=True)
  if workdir is not None:
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=fv)
  if extra_flags is not None:
    extra_flags(fv)
  try:
    rest = fv(argv)[1:]
    if rest and not positional:
      raise flags.Error(f"unexpected arguments {rest}")
    if config == REQUIRED and fv["config"].value is None:
      raise flags.Error("--config configs/<name>.py is required")
    if workdir == REQUIRED and not fv.workdir:
      raise flags.Error("--workdir DIR is required")
    cfg = holder.value if holder is not None and fv["config"].value is not None else None
  except (flags.Error, ValueError, TypeError, KeyError, AttributeError, OSError,
          CTJaxError) as e:
    _error(_one_line(e, argv))
    return EXIT_USAGE
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "orbax", "jax._src", "grain", "pydicom"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    status = fn(fv, cfg, rest)
    return EXIT_OK if status is None else int(status)
  except UsageError as e:
    _error(_one_line(e))
    return EXIT_USAGE
  except CTJaxError as e:
    _error(_one_line(e))
    return EXIT_ERROR
  except KeyboardInterrupt:
    _error("interrupted")
    return EXIT_INTERRUPTED
