"""The one command-line helper of every `python -m ctjax.X` entry point.

absl flags (+ an ml_collections config file where the command takes one) parsed into a private
FlagValues, then `fn(flags, config, args)` with the positional arguments. One error style and one
exit-code convention for all commands: every CTJaxError, flag or config error becomes one line
`error: …` on stderr; exit status 0 ok, 1 error, 2 usage (bad flags or config), 130 Ctrl-C.
`main(argv)` functions take argv without the program name (as argparse's `parse_args`).

Every command keeps XLA's compiled programs in the persistent compilation cache
(`ctjax.train.compilation`: config.compile.cache_dir, or the default folder for commands without
a config), set before the command's first compile.

Also one line, never a traceback: an OSError escaping the command (read-only folder, disk full:
`ctjax.fileio.storage_error`), a Ctrl-C at any point (work already written stays: shards,
checkpoints), a failed collective after another process stopped. Logged exceptions and those of
background threads (Orbax's, TensorBoard's writer) are logged as one line each. A process of a
multi-process run that fails exits at once after its line (`os._exit`), so that the others see it
stop (`ctjax.train.peers`) rather than wait for it in JAX's shutdown barrier.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Callable, Optional, Sequence

from absl import flags

from ctjax.errors import CTJaxError, PeerProcessError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
INTERRUPTED = ("interrupted; what was already written is kept (finished cache shards, saved "
               "checkpoints): run the same command again to resume")

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


def profile_flags(fv: flags.FlagValues, what: str = "train steps") -> None:
  """--profile DIR / --profile_steps N (ctjax.train.profiling)."""
  flags.DEFINE_string("profile", None, f"write a jax.profiler trace of a few steady {what} "
                      "(after the first, compiling one) into this folder (TensorBoard's "
                      "profile plugin, Perfetto)", flag_values=fv)
  flags.DEFINE_integer("profile_steps", 3, f"{what} traced by --profile", lower_bound=1,
                       flag_values=fv)


def _one_line(e: BaseException, argv: Sequence[str] = ()) -> str:
  cause = e.__cause__ or e.__context__
  if isinstance(e, (flags.Error, AttributeError)) and isinstance(cause, KeyError):
    e = cause
  if isinstance(e, KeyError):   # ml_collections: an override names a field the config lacks.
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    # ml_collections' message: "'name'" or "'name\nDid you mean "x" instead of "name"?'".
    field, _, hint = str(e.args[0]).partition("\n")
    field, hint = field.strip("'\""), " ".join(hint.split()).rstrip("'\"")
    prog = argv[0] if argv else "ctjax.train"
    return (f"unknown config field '{field}' (overrides: {', '.join(overrides)})"
            f"{'; ' + hint if hint else ''}; python -m {prog} --helpfull --config FILE "
            "lists the fields")
  text = str(e)
  if "Traceback" in text:        # a config file raised: keep the exception's last line.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = f"{text.splitlines()[0].split(':')[0]}: {lines[-1]}"
  return " ".join(text.split()) or type(e).__name__


def _error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)


def _config_file_error(fv: flags.FlagValues, holder) -> Optional[str]:
  """ml_collections defers a config file's load error (a missing file) until the config is used:
  the one line for it, or None when the config loaded."""
  try:
    holder.value.keys()
  except OSError as e:
    spec = str(getattr(fv["config"], "config_filename", "") or "")
    path = spec.split(":", 1)[0]
    if path and not os.path.isfile(path):
      return f"{path}: no such config file (--config {spec})"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{path or 'config'}: cannot load ({lines[-1] if lines else type(e).__name__})"
  except AttributeError:   # a config object without keys(): nothing to check
    return None
  return None


class _OneLineFormatter(logging.Formatter):
  """Log records with exc_info show the exception as one line, not a traceback."""

  def formatException(self, ei) -> str:
    e = ei[1]
    return f"  ({type(e).__name__}: {' '.join(str(e).split())[:300]})" if e else ""

  def format(self, record: logging.LogRecord) -> str:
    text = super().format(record)
    return text.replace("\n", " ") if record.exc_info else text


def _quiet_hooks() -> None:
  """Background-thread and 'exception ignored' reports as one log line each."""
  hook_log = logging.getLogger(__name__)

  def thread_hook(args) -> None:
    if args.exc_type is SystemExit:
      return
    hook_log.warning("thread %s stopped: %s: %s", getattr(args.thread, "name", "?"),
                     args.exc_type.__name__, " ".join(str(args.exc_value).split())[:300])

  def unraisable_hook(u) -> None:
    hook_log.debug("ignored %s: %s", type(u.exc_value).__name__,
                   " ".join(str(u.exc_value).split())[:300])

  threading.excepthook = thread_hook
  sys.unraisablehook = unraisable_hook


@contextlib.contextmanager
def _logs_beside_bars():
  """Console log records written through `tqdm.write` while the command runs: a record logged
  while a progress bar is drawn (validation during training) starts on its own line, and the bar
  is redrawn under it. Handlers that do not write to the console (a caller's, pytest's) stay."""
  from tqdm.contrib.logging import logging_redirect_tqdm
  root = logging.getLogger()
  if not any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
             for h in root.handlers):
    yield
    return
  with logging_redirect_tqdm([root]):
    yield


def _silence_shutdown() -> None:
  """After the error line: background threads and atexit clean-ups of a failed command (Orbax,
  tensorstore, TensorBoard) print nothing more."""
  logging.disable(logging.CRITICAL)
  sys.excepthook = lambda *a: None
  sys.unraisablehook = lambda u: None
  threading.excepthook = lambda a: None


def _distributed() -> bool:
  parallel = sys.modules.get("ctjax.train.parallel")
  return bool(parallel is not None and parallel.is_distributed())


def _runtime_error_line(e: BaseException) -> Optional[str]:
  """One line for a JAX runtime error raised because another process stopped, else None."""
  text = " ".join(str(e).split())
  if type(e).__name__ == "JaxRuntimeError" and _distributed():
    return str(PeerProcessError(
        f"a collective failed ({text[:200]}): another process of this run most likely stopped; "
        "see its log"))
  return None


def _finish(status: int, in_process: bool) -> int:
  """The command's exit status; a failed real program goes quiet, and a failed process of a
  multi-process run exits at once (its peers must see it stop)."""
  if status != EXIT_OK and not in_process:
    _silence_shutdown()
    if _distributed():
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)
  return status


HELP_FLAGS = ("--help", "-h", "-help", "--helpshort", "--helpfull")


def _config_spec(argv: Sequence[str]) -> Optional[str]:
  """The --config value of `argv`, if any (before the flags are parsed)."""
  for k, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and k + 1 < len(argv):
      return argv[k + 1]
  return None


def help_text(fn: Callable, prog: str, fv: flags.FlagValues, argv: Sequence[str], *,
              full: bool = False) -> str:
  """What `--help` prints: the command's own page (its module docstring: usage and examples),
  its flags with defaults, and with `--config FILE` the config file's page and (--helpfull)
  every field it sets, each overridable as --config.a.b=value."""
  module = sys.modules.get(getattr(fn, "__module__", ""), None)
  page = (getattr(module, "__doc__", None) or f"python -m {prog}").strip()
  lines = [page, "", "flags:"]
  for name in sorted(fv):
    flag = fv[name]
    if flag.name != name:   # a short alias of a flag listed under its name
      continue
    default = "" if flag.default in (None, "", []) else f" (default: {flag.default!r})"
    lines.append(f"  --{name}: {' '.join(str(flag.help or '').split())}{default}")
  if "config" in fv:
    lines += ["", "config: --config configs/<name>.py[:args] chooses the experiment; any field it "
              "sets is overridden as --config.a.b=value (e.g. --config.train.batch_size=8)."]
    spec = _config_spec(argv)
    if spec:
      from ctjax.configs.common import load_config_file
      path, _, arg = spec.partition(":")
      try:
        import importlib.util
        loaded = importlib.util.spec_from_file_location("ctjax_help_config", path)
        mod = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(mod)
        lines += ["", f"{path}:", (mod.__doc__ or "").strip()]
        if full:
          cfg = load_config_file(path, arg or None)
          lines += ["", "its fields (--config.<field>=value):"]
          lines += [f"  {k} = {v!r}" for k, v in _flat_fields(cfg.to_dict())]
      except Exception as e:   # help still prints; the config's own error comes on a real run
        lines += ["", f"{path}: cannot load ({type(e).__name__}: {' '.join(str(e).split())[:200]})"]
  lines += ["", f"Run `python -m {prog} --helpfull --config FILE` for every field of a config."
            if "config" in fv else ""]
  return "\n".join(lines).rstrip() + "\n"


def _flat_fields(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
  out = []
  for k, v in tree.items():
    if isinstance(v, dict):
      out += _flat_fields(v, f"{prefix}{k}.")
    else:
      out.append((f"{prefix}{k}", v))
  return out


def _compilation_cache(cfg) -> None:
  """The persistent compilation cache of every command, before its first compile: the config's
  `compile.cache_dir` where the command takes a config, else the default folder
  (`ctjax.train.compilation`)."""
  from ctjax.train import compilation
  setting, min_secs = compilation.config_setting(cfg)
  compilation.configure(setting, min_compile_secs=min_secs)


def run(fn: Callable, argv: Optional[Sequence[str]] = None, *, prog: str = "ctjax",
        config: Optional[str] = None, workdir: Optional[str] = REQUIRED,
        extra_flags: Optional[Callable] = None, workdir_help: str = "run directory",
        positional: bool = False) -> int:
  """Parses flags into a private FlagValues and returns `fn(flags, config, args)`'s status.

  `config` / `workdir`: REQUIRED, OPTIONAL or None (the command has no such flag).
  `positional`: the command takes positional arguments (`args`); otherwise they are an error.
  """
  from ml_collections import config_flags
  in_process = argv is not None
  argv = [prog] + list(sys.argv[1:] if argv is None else argv)
  want_help = next((a for a in argv[1:] if a in HELP_FLAGS), None)
  fv = flags.FlagValues()
  holder = None
  if config is not None:
    holder = config_flags.DEFINE_config_file(   # sys_argv: overrides of this argv, not sys.argv
        "config", None, "configs/<name>.py[:args]", flag_values=fv, lock_config=True,
        sys_argv=argv)
  if workdir is not None:
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=fv)
  if extra_flags is not None:
    extra_flags(fv)
  if want_help is not None:
    print(help_text(fn, prog, fv, argv, full=want_help == "--helpfull"))
    return EXIT_OK
  try:
    rest = fv(argv)[1:]
    if rest and not positional:
      raise flags.Error(f"unexpected arguments {rest}")
    if config == REQUIRED and fv["config"].value is None:
      raise flags.Error("--config configs/<name>.py is required")
    if workdir == REQUIRED and not fv.workdir:
      raise flags.Error("--workdir DIR is required")
    cfg = None
    if holder is not None and fv["config"].value is not None:
      message = _config_file_error(fv, holder)
      if message:
        _error(message)
        return _finish(EXIT_USAGE, in_process)
      cfg = holder.value
  except KeyboardInterrupt:
    _error("interrupted")
    return _finish(EXIT_INTERRUPTED, in_process)
  except (flags.Error, ValueError, TypeError, KeyError, AttributeError, OSError,
          CTJaxError) as e:
    _error(_one_line(e, argv))
    return _finish(EXIT_USAGE, in_process)
  except Exception as e:   # a config file that raised (NameError, ImportError, …)
    _error(f"--config: {type(e).__name__}: {_one_line(e, argv)}")
    return _finish(EXIT_USAGE, in_process)
  fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
  if in_process:   # a caller's (or pytest's) handlers stay as they are
    logging.basicConfig(level=logging.INFO, format=fmt)
  else:            # force: an import may have set up the root logger already
    logging.basicConfig(level=logging.INFO, format=fmt, force=True)
    for handler in logging.getLogger().handlers:
      handler.setFormatter(_OneLineFormatter(fmt))
  for noisy in ("absl", "orbax", "jax._src", "grain", "pydicom"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  hooks = (threading.excepthook, sys.unraisablehook)
  _quiet_hooks()
  try:
    with _logs_beside_bars():
      _compilation_cache(cfg)
      status = fn(fv, cfg, rest)
    status = EXIT_OK if status is None else int(status)
  except UsageError as e:
    _error(_one_line(e))
    status = EXIT_USAGE
  except CTJaxError as e:
    _error(_one_line(e))
    status = EXIT_ERROR
  except KeyboardInterrupt:
    _error(INTERRUPTED)
    status = EXIT_INTERRUPTED
  except OSError as e:
    from ctjax import fileio
    _error(_one_line(fileio.storage_error(e)))
    status = EXIT_ERROR
  except Exception as e:
    line = _runtime_error_line(e)
    if line is None:
      if _distributed() and not in_process:   # a bug: its traceback, then gone for the peers
        import traceback
        traceback.print_exc()
        _finish(EXIT_ERROR, in_process)
      raise
    _error(line)
    status = EXIT_ERROR
  finally:
    if in_process:
      threading.excepthook, sys.unraisablehook = hooks
  return _finish(status, in_process)
