"""`python -m ctjax.prepare --config configs/X.py [--workdir DIR]`: decode a data set once.

Resolves `config.data.layout` / `config.data.root` (layout "phantom" generates its data first,
into DIR/data when root is empty), then writes the prepared cache (`ctjax.data.cache`) with
`config.data.num_workers` processes and a progress bar. A re-run skips finished shards; a
complete cache is reported and left alone. Training reads the cache, never DICOM.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from ctjax.errors import CTJaxError

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "workdir (phantom data go to WORKDIR/data when "
                               "config.data.root is empty)")


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  config = _CONFIG.value
  try:
    from ctjax.data import cache   # not pipeline: prepare needs no Grain/JAX
    path = cache.ensure_cache(config, _WORKDIR.value)
    manifest = json.loads((path / "manifest.json").read_text())
  except CTJaxError as e:
    print(f"ctjax.prepare: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"cache {path}: {manifest['num_scans']} scans, {manifest['num_slices']} slices at "
        f"{manifest['image_size']} px, labels {manifest['labels']}"
        + (f", {len(manifest['failures'])} scan(s) failed" if manifest["failures"] else ""))


if __name__ == "__main__":
  app.run(main)
