"""Every experiment of the configs/ folder by its file name, built by the library.

`get_config("drct2_phantom", "runlocal")` is `configs/drct2_phantom.py:runlocal`: each file
there is its docstring (the command that runs it, its runtime, its arguments) over the builder
named here, so commands that build configs themselves (`ctjax.tables`) need no checkout.
"""

from __future__ import annotations

from typing import Callable, Optional

import ml_collections

from ctjax.configs import blend, drct, pretrain
from ctjax.errors import ConfigError

BUILDERS: dict[str, Callable[[Optional[str]], ml_collections.ConfigDict]] = {
    "drct2_phantom": drct.phantom,
    "drct1_phantom": drct.drct1_phantom,
    "drct2_rsna": drct.rsna,
    "drct1_rsna": drct.drct1_rsna,
    "drct2_cq500": drct.cq500,
    "drct1_fusion": drct.fusion,
    "drct1_hires": drct.hires,
    "blend_phantom": blend.phantom,
    "blend_resnet50": blend.paper,
    "pretrain_phantom": pretrain.phantom,
    "pretrain_blend_phantom": pretrain.blend_phantom,
}


def get_config(name: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The config of configs/<name>.py (".py" optional) with its argument string."""
  key = name[:-3] if name.endswith(".py") else name
  if key not in BUILDERS:
    raise ConfigError(f"no config named {name!r}; known: {', '.join(sorted(BUILDERS))}")
  return BUILDERS[key](arg)
