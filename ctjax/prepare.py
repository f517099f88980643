"""`python -m ctjax.prepare --config configs/X.py [--workdir DIR]`: decode a data set once.

Resolves `config.data.layout` / `config.data.root` (layout "phantom" generates its data first,
into DIR/data when root is empty), then writes the prepared cache (`ctjax.data.cache`) with
`config.data.num_workers` processes and a progress bar. A re-run skips finished shards; a
complete cache is reported and left alone. Training reads the cache, never DICOM. A full disk is
one line naming the cache folder, the space the cache needs and the space free; Ctrl-C keeps the
shards already written (the same command resumes).
"""

from __future__ import annotations

import json
import os
import sys

from ctjax import cli


def _cache_folder(config, workdir) -> str:
  """The cache folder `ensure_cache` writes (its base folder if that cannot be worked out)."""
  from ctjax.data import cache
  layout = cache.data_option(config, "layout")
  root = cache.data_option(config, "root") or (os.path.join(workdir, "data") if workdir else "")
  try:
    return str(cache.cache_path(cache.data_option(config, "cache_dir"), layout, root,
                                int(cache.data_option(config, "image_size")),
                                bool(cache.data_option(config, "lenient"))))
  except Exception:   # a cache key of other inputs: name the folder that holds the caches
    return cache.data_option(config, "cache_dir") or os.path.join(root, ".ctjax_cache")


def _cache_bytes(config, workdir) -> int | None:
  """int16 bytes of the whole cache: source slices × image_size² × 2 (None if unknown)."""
  from ctjax.data import cache, datasets
  try:
    layout = cache.data_option(config, "layout")
    root = cache.data_option(config, "root") or os.path.join(workdir or "", "data")
    ds = datasets.load(layout, root)
    size = int(cache.data_option(config, "image_size"))
    return sum(len(rec.files) for rec in ds.scans) * size * size * 2
  except Exception:
    return None


def _prepare(fv, config, _args) -> int:
  from ctjax import fileio
  from ctjax.data import cache   # not pipeline: prepare needs no Grain/JAX
  try:
    path = cache.ensure_cache(config, fv.workdir)
  except OSError as e:
    folder = _cache_folder(config, fv.workdir)
    if fileio.is_disk_full(e):
      raise fileio.disk_full_error(folder, _cache_bytes(config, fv.workdir),
                                   "writing the prepared cache", cause=e,
                                   needed_note="the whole cache; finished shards are kept and "
                                   "a re-run resumes") from e
    raise fileio.storage_error(e, getattr(e, "filename", None) or folder,
                               "writing the prepared cache") from e
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
