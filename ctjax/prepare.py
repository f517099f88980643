"""`python -m ctjax.prepare --config configs/X.py [--workdir DIR]`: decode a data set once.

Resolves `config.data.layout` / `config.data.root` (layout "phantom" generates its data first,
into DIR/data when root is empty), then writes the prepared cache (`ctjax.data.cache`) with
`config.data.num_workers` processes and a progress bar. A re-run skips finished shards; a
complete cache is reported and left alone. Training reads the cache, never DICOM.
"""

from __future__ import annotations

import json
import sys

from ctjax import cli


def _prepare(fv, config, _args) -> int:
  from ctjax.data import cache   # not pipeline: prepare needs no Grain/JAX
  path = cache.ensure_cache(config, fv.workdir)
  manifest = json.loads((path / "manifest.json").read_text())
  print(f"cache {path}: {manifest['num_scans']} scans, {manifest['num_slices']} slices at "
        f"{manifest['image_size']} px, labels {manifest['labels']}"
        + (f", {len(manifest['failures'])} scan(s) failed" if manifest["failures"] else ""))
  return 0


def main(argv=None) -> int:
  return cli.run(_prepare, argv, prog="ctjax.prepare", config=cli.REQUIRED,
                 workdir=cli.OPTIONAL,
                 workdir_help="phantom data go to WORKDIR/data when config.data.root is empty")


if __name__ == "__main__":
  sys.exit(main())
