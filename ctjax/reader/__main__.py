"""`python -m ctjax.reader`: the command lives in `ctjax.commands.reader`."""
import sys

from ctjax.commands.reader import main

if __name__ == "__main__":
  sys.exit(main())
