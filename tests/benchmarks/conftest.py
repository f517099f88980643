"""`benchmarks` is a top-level folder of the repository, not an installed package, and this
test folder has the same name: put the repository root first on sys.path so that
`import benchmarks` finds the suite (pytest's rootdir-relative imports would otherwise resolve
it to this folder as a namespace package)."""

import pathlib
import sys

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if sys.path[:1] != [_ROOT]:
  sys.path.insert(0, _ROOT)
_mod = sys.modules.get("benchmarks")
if _mod is not None and getattr(_mod, "__file__", None) is None:
  del sys.modules["benchmarks"]   # a namespace package for tests/benchmarks, not the suite
