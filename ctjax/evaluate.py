"""`python -m ctjax.evaluate`: the command lives in `ctjax.commands.evaluate`."""
import sys

from ctjax.commands.evaluate import main

if __name__ == "__main__":
  sys.exit(main())
