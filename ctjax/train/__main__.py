"""`python -m ctjax.train`: the command lives in `ctjax.commands.train`."""
import sys

from ctjax.commands.train import main

if __name__ == "__main__":
  sys.exit(main())
