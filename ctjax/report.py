"""`python -m ctjax.report`: the command lives in `ctjax.commands.report`."""
import sys

from ctjax.commands.report import main

if __name__ == "__main__":
  sys.exit(main())
