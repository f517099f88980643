"""`python -m ctjax.prepare --config configs/X.py [--workdir DIR] [--qa] [--qa_csv FILE]`.

Resolves `config.data.layout` / `config.data.root` (layout "phantom" generates its data first,
into DIR/data when root is empty), then writes the prepared cache (`ctjax.data.cache`) with
`config.data.num_workers` processes and a progress bar. A re-run skips finished shards; a
complete cache built from the same label and DICOM files is reported and left alone, a stale one
is rebuilt (`config.data.stale_cache`), and damaged shards (size, or with `--checksum` SHA-1,
differing from the manifest) are rebuilt — only those. Training reads the cache, never DICOM.

It prints the cache's size, the adapter's counts (files skipped in lenient mode and why, files
without labels, labels without DICOM) and, for CQ500, how many series each series policy keeps
(`ctjax.data.series_policy`). `--qa` prints the per-series QA table (`ctjax.data.qa`; always
written to <cache>/qa.csv and qa.jsonl), `--qa_csv FILE` copies the CSV there.
A full disk is one line naming the cache folder, the space the cache needs and the space free;
Ctrl-C keeps the shards already written (the same command resumes).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import flags

from ctjax.commands import cli


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_bool("qa", False, "print the per-series QA table", flag_values=fv)
  flags.DEFINE_string("qa_csv", None, "write the QA table as CSV to this file", flag_values=fv)
  flags.DEFINE_bool("checksum", False, "also compare every shard's SHA-1 with the manifest "
                    "(reads the whole cache) and rebuild those that differ", flag_values=fv)


def summary_lines(manifest: dict) -> list[str]:
  """What prepare reports about a cache, one line each."""
  rep = manifest.get("dataset_report", {})
  lines = [f"cache: {manifest['num_scans']} scans, {manifest['num_slices']} slices at "
           f"{manifest['image_size']} px, labels {manifest['labels']}"
           + (f", {len(manifest['failures'])} scan(s) failed" if manifest["failures"] else "")]
  if "policy_counts" in rep:
    counts = rep["policy_counts"]
    total = len(rep.get("series", []))
    lines.append(f"series policy {rep.get('series_policy')}: {counts[rep['series_policy']]} of "
                 f"{total} series kept; per policy: "
                 + ", ".join(f"{k} {v}" for k, v in counts.items())
                 + " (DrCT2 paper, Table 1: 1,181 CQ500 scans of 490 patients; its rule is not "
                 "stated)")
  if rep.get("skipped"):
    ex = rep["skipped_examples"][0]
    lines.append(f"skipped {rep['skipped']} unreadable file(s) (lenient): "
                 + ", ".join(f"{k} {v}" for k, v in rep["skipped_by_error"].items())
                 + f"; e.g. {ex['reason']}")
  for key, what in (("unlabelled_files", "DICOM file(s)/folder(s) without labels"),
                    ("labels_without_dicom", "labelled name(s) without DICOM")):
    if rep.get(key):
      lines.append(f"{rep[key]} {what} left out (e.g. {', '.join(rep[key + '_examples'][:3])})")
  return lines


def _cache_folder(config, workdir) -> str:
  """The cache folder `ensure_cache` writes (its base folder if that cannot be worked out)."""
  from ctjax.data import cache
  layout = cache.data_option(config, "layout")
  root = cache.data_option(config, "root") or (os.path.join(workdir, "data") if workdir else "")
  try:
    return str(cache.cache_path(cache.data_option(config, "cache_dir"), layout, root,
                                int(cache.data_option(config, "image_size")),
                                bool(cache.data_option(config, "lenient")),
                                cache._content_options(layout, config)))  # noqa: SLF001
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
  from ctjax.data import cache, qa   # not pipeline: prepare needs no Grain/JAX
  try:
    path = cache.ensure_cache(config, fv.workdir, repair=True, checksum=fv.checksum)
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
  lines = summary_lines(manifest)
  print(f"{path}: " + lines[0])
  for line in lines[1:]:
    print("  " + line)
  rows = qa.read(path)
  flagged = [r for r in rows if r.get("flags")]
  if flagged:
    counts = {f: sum(f in r["flags"].split(";") for r in rows) for f in qa.FLAGS}
    fixed = sum(r.get("intercept_fixed") or 0 for r in rows)
    print(f"  QA: {len(flagged)} of {len(rows)} series flagged: "
          + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
          + (f" (RSNA 12-bit intercept fix on {fixed} slices)" if fixed else "")
          + f"; table: {path / 'qa.csv'} (--qa prints it)")
  if fv.qa:
    print(qa.format_table(rows))
  if fv.qa_csv:
    out = pathlib.Path(fv.qa_csv)
    try:
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_text(qa.to_csv(rows))
    except OSError as e:
      raise cli.UsageError(f"--qa_csv {out}: cannot write ({e.strerror})") from e
    print(f"QA table: {out} ({len(rows)} series)")
  return 0


def main(argv=None) -> int:
  return cli.run(_prepare, argv, prog="ctjax.prepare", config=cli.REQUIRED,
                 workdir=cli.OPTIONAL, extra_flags=_flags,
                 workdir_help="phantom data go to WORKDIR/data when config.data.root is empty")


if __name__ == "__main__":
  sys.exit(main())
