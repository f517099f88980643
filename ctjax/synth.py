"""`python -m ctjax.synth`: the command lives in `ctjax.commands.synth`."""
import sys

from ctjax.commands.synth import main

if __name__ == "__main__":
  sys.exit(main())
