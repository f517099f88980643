"""Saved `config.json` files of older ctjax versions → the current field names.

`upgrade(saved)` renames what was renamed and drops what was removed, so a finished run keeps
evaluating and reporting after the config layout changed. A field that an old run never had
and that has no rename is left missing: reading it raises the one-line error of
`ctjax.train.checkpoint.saved_config_errors`.
"""

from __future__ import annotations

import copy
from typing import Any

# Removed fields (no longer read anywhere).
_DROPPED = ("model.backbone_pretrain_config",)


def _pop(tree: dict, dotted: str) -> tuple[bool, Any]:
  *parents, leaf = dotted.split(".")
  node = tree
  for p in parents:
    node = node.get(p)
    if not isinstance(node, dict):
      return False, None
  if leaf not in node:
    return False, None
  return True, node.pop(leaf)


def _set(tree: dict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  node = tree
  for p in parents:
    node = node.setdefault(p, {})
  node.setdefault(leaf, value)


def upgrade(saved: dict) -> dict:
  """A copy of `saved` (a config.json as a dict) with the current field names."""
  c = copy.deepcopy(saved)
  task = c.get("task", "")
  model = c.get("model", {})
  if "variant" in model:                                  # DrCT: variant "drct2" → aps True
    _set(c, "model.aps", model.pop("variant") == "drct2")
  for old, new in (("model.dropout", "model.dropout_rate"),
                   ("model.width", "model.backbone_width"),
                   ("model.pretrained", "model.backbone_weights"),
                   ("model.feature_cache", "features.enabled"),
                   ("optimizer.learning_rate", "optimizer.lr")):
    found, value = _pop(c, old)
    if found:
      _set(c, new, value)
  opt = c.get("optimizer", {})
  if "lr_primary" in opt:   # DrCT's per-module rates → lr × lr_mults over the groups
    base = float(opt.pop("lr_primary"))
    mults = {"primary": 1.0}
    for group in ("aps", "fusion", "backbone"):
      if f"lr_{group}" in opt:
        mults[group] = float(opt.pop(f"lr_{group}")) / base
    _set(c, "optimizer.lr", base)
    _set(c, "optimizer.lr_mults", mults)
  if task == "blend":
    _set(c, "optimizer.schedule", "poly")
  if task == "pretrain":
    for key, value in (("name", "adamw"), ("schedule", "cosine"), ("final_lr_fraction", 0.01)):
      _set(c, f"optimizer.{key}", value)
  if task == "pretrain" and "backbone" not in c.get("model", {}):
    _set(c, "model.backbone", "vgg16")
  if c.get("model", {}).get("backbone_weights", "") == "ctjax/assets/vgg16_w0125_phantom.npz":
    c["model"]["backbone_weights"] = "asset:vgg16_w0125_phantom.npz"
  model = c.get("model", {})
  if task == "drct" and model.get("freeze_backbone", True) and \
      model.get("backbone_weights", "") == "":
    model["backbone_weights"] = "random"   # what "" meant before it was refused
  if task == "blend":
    _set(c, "loss.centre_loss", "focal")
    _set(c, "data.input_norm", "imagenet")
  for dotted in _DROPPED:
    _pop(c, dotted)
  for key, value in (("name", "adam"), ("lr_mults", {}), ("schedule", "constant"),
                     ("warmup_steps", 0), ("warmup_epochs", 0.0), ("final_lr_fraction", 0.0),
                     ("power", 1.0), ("b1", 0.9), ("b2", 0.999), ("momentum", 0.9),
                     ("weight_decay", 0.0), ("grad_clip", 0.0)):
    if "optimizer" in c:
      _set(c, f"optimizer.{key}", value)
  return c
