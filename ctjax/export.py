"""`python -m ctjax.export`: the command lives in `ctjax.commands.export`."""
import sys

from ctjax.commands.export import main

if __name__ == "__main__":
  sys.exit(main())
