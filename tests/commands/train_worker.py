"""`python -m ctjax.train` on the tiny stand-in task (tests/support/stand_ins.py), as a program:
argv are the command's own flags; the config is `stand_ins.tiny_config()` (overridden as
--config.a.b=value). Spawned by tests/commands/test_compile_and_profile.py."""

import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CONFIG = '''
from tests.support import stand_ins

def get_config(arg=None):
  return stand_ins.tiny_config(**{"train.num_epochs": 1, "evals.val.every_steps": 0,
                                  "checkpoint.every_steps": 0, "log.tensorboard": False})
'''


def main(argv) -> int:
  from ctjax.commands import train as train_cli
  from ctjax.inference import model_card
  from ctjax.train import loop
  from tests.support import stand_ins
  trained = loop.train_and_evaluate

  def tiny(config, workdir, **kwargs):
    return trained(config, workdir, task=stand_ins.TinyTask(), data=stand_ins.MemoryData(),
                   **kwargs)

  loop.train_and_evaluate = tiny
  model_card.write_card = lambda workdir: "MODEL_CARD.md"   # the tiny task has no card
  config = pathlib.Path(argv[argv.index("--workdir") + 1] + ".config.py")
  config.parent.mkdir(parents=True, exist_ok=True)
  config.write_text(CONFIG)
  return train_cli.main(["--config", str(config), *argv])


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
