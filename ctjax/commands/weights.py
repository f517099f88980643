"""`python -m ctjax.weights convert|export …`: backbone weight files.

  python -m ctjax.weights convert --arch vgg16 --src vgg16.pth --out vgg16.npz [--nofc]
  python -m ctjax.weights export --workdir runs/pretrain_phantom --out backbone.npz [--step N]

`convert` turns a torchvision checkpoint (.pth/.pt with torch installed, or .safetensors/.npz
state dicts without it) into ctjax's variables .npz, which configs name as
`model.backbone_weights`; `--nofc` drops the ImageNet classifier (the backbones' default use).
The written file is read back and shape-checked against the architecture before the command
reports success. `export` writes the backbone of a finished phantom-pretraining run
(configs/pretrain_phantom.py; BatchNorm folded into the convolutions), as the run itself does
at its end.
"""

from __future__ import annotations

import sys

from absl import flags

from ctjax.commands import cli
from ctjax.models import backbones

def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("arch", None, list(backbones.ARCHS), "convert: torchvision architecture",
                    flag_values=fv)
  flags.DEFINE_string("src", None, "convert: .pth/.pt, .safetensors or .npz state dict",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "output .npz", flag_values=fv)
  flags.DEFINE_boolean("fc", True, "convert: keep the classifier head(s) if the file has them "
                       "(--nofc drops them)", flag_values=fv)
  flags.DEFINE_integer("step", None, "export: checkpoint step (default: best, else latest)",
                       flag_values=fv)


def _convert(fv) -> int:
  from ctjax.models import pretrained
  if not fv.arch or not fv.src or not fv.out:
    raise cli.UsageError("convert needs --arch, --src and --out")
  sd = pretrained.read_state_dict(fv.src)
  variables = pretrained.convert_torchvision(sd, fv.arch, include_fc=None if fv.fc else False)
  has_fc = any(h in variables["params"] for h in pretrained.HEAD_SCOPES[fv.arch])
  aux = {"aux_logits": True} if "AuxLogits" in variables["params"] else {}
  pretrained.check_variables(variables, fv.arch, include_fc=has_fc, source=fv.src, **aux)
  out = pretrained.save_variables(fv.out, variables)
  n = pretrained.count_params(variables["params"])
  print(f"wrote {out}: {fv.arch}, {n:,} parameters{' (with classifier)' if has_fc else ''}")
  return 0


def _export(fv) -> int:
  from ctjax.inference import runs
  from ctjax.errors import ConfigError
  from ctjax.train.tasks import pretrain
  if not fv.workdir or not fv.out:
    raise cli.UsageError("export needs --workdir and --out")
  run = runs.load_run(fv.workdir, fv.step)
  if run.config.task != "pretrain":
    raise ConfigError(f"{fv.workdir}: task {run.config.task!r} is not a pretraining run")
  out = pretrain.export_backbone(run.host_variables(), fv.out,
                                 backbone=run.config.model.get("backbone", "vgg16"))
  print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) from step {run.step}")
  return 0


def _main(fv, _config, args) -> int:
  if args == ["convert"]:
    return _convert(fv)
  if args == ["export"]:
    return _export(fv)
  raise cli.UsageError(f"expected a sub-command: convert or export (got {args})")


def main(argv=None) -> int:
  return cli.run(_main, argv, prog="ctjax.weights", workdir=cli.OPTIONAL, extra_flags=_flags,
                 positional=True, workdir_help="export: a finished pretraining run")


if __name__ == "__main__":
  sys.exit(main())
