"""`python -m ctjax.prepare`: the command lives in `ctjax.commands.prepare`."""
import sys

from ctjax.commands.prepare import main

if __name__ == "__main__":
  sys.exit(main())
