"""`python -m ctjax.weights`: the command lives in `ctjax.commands.weights`."""
import sys

from ctjax.commands.weights import main

if __name__ == "__main__":
  sys.exit(main())
