"""`python -m ctjax.weights convert --arch vgg16 --src vgg16.pth --out vgg16.npz`.

Converts a torchvision checkpoint (.pth/.pt with torch installed, or .safetensors/.npz state
dicts without it) into ctjax's variables .npz, which configs name as `model.backbone.weights`.
`--no-fc` drops the ImageNet classifier (the backbones' default use). The written file is read
back and shape-checked against the architecture before the command reports success.
"""

from __future__ import annotations

import argparse
import sys

from ctjax.errors import CTJaxError


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ctjax.weights", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="torchvision checkpoint → ctjax variables .npz")
  conv.add_argument("--arch", required=True,
                    choices=("vgg16", "vgg16_bn", "resnet50", "inception_v3"))
  conv.add_argument("--src", required=True, help=".pth/.pt, .safetensors or .npz state dict")
  conv.add_argument("--out", required=True, help="output .npz")
  conv.add_argument("--no-fc", action="store_true", help="drop the classifier head(s)")
  args = parser.parse_args(argv)

  # Imported here so that `--help` and argument errors stay instant.
  from ctjax.models import weights  # pylint: disable=g-import-not-at-top
  try:
    sd = weights.read_state_dict(args.src)
    variables = weights.convert_torchvision(sd, args.arch,
                                            include_fc=False if args.no_fc else None)
    has_fc = any(h in variables["params"] for h in weights.HEAD_SCOPES[args.arch])
    aux = {"aux_logits": True} if "AuxLogits" in variables["params"] else {}
    weights.check_variables(variables, args.arch, include_fc=has_fc, source=args.src, **aux)
    out = weights.save_variables(args.out, variables)
    n = weights.count_params(variables["params"])
  except CTJaxError as e:
    print(f"ctjax.weights: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}: {args.arch}, {n:,} parameters"
        f"{' (with classifier)' if has_fc else ''}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
