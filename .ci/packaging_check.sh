#!/usr/bin/env bash
# Packaging check: a fresh venv, `pip install .` (not editable), then the main commands from a
# directory outside the checkout — the package must not depend on the repository's layout.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
python -m pip install -q --upgrade pip
pip install -q "$repo"
cd "$work"
export JAX_PLATFORMS=cpu
python - <<'PY'
import ctjax, pathlib
assert "site-packages" in ctjax.__file__, ctjax.__file__   # the installed copy, not the checkout
PY
python -m ctjax.synth --layout rsna --scans 2 --size 32 --out s
python -m ctjax.train --config "$repo/configs/drct2_phantom.py:runlocal" --workdir w \
  --config.log.progress_bar=False
python -m ctjax.evaluate --workdir w --split test
python -m ctjax.synth --layout cq500 --scans 1 --seed 5 --size 64 --out scans
python -m ctjax.report --workdir w --scans scans --out reports
test -s reports/index.html
echo "packaging check: ok"
