"""`python -m ctjax.predict`: the command lives in `ctjax.commands.predict`."""
import sys

from ctjax.commands.predict import main

if __name__ == "__main__":
  sys.exit(main())
