"""`python -m ctjax.tables`: the command lives in `ctjax.commands.tables`."""
import sys

from ctjax.commands.tables import main

if __name__ == "__main__":
  sys.exit(main())
