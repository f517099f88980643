"""`python -m ctjax.distill`: the command lives in `ctjax.commands.distill`."""
import sys

from ctjax.commands.distill import main

if __name__ == "__main__":
  sys.exit(main())
