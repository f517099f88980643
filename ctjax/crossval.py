"""`python -m ctjax.crossval`: the command lives in `ctjax.commands.crossval`."""
import sys

from ctjax.commands.crossval import main

if __name__ == "__main__":
  sys.exit(main())
