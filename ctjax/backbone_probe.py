"""`python -m ctjax.backbone_probe`: the command lives in `ctjax.commands.backbone_probe`."""
import sys

from ctjax.commands.backbone_probe import main

if __name__ == "__main__":
  sys.exit(main())
