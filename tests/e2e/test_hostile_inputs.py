"""tests.e2e.hostile_inputs: three quick cases through the real commands, recorded in the
table with the exit status, the last stderr line and no path of the machine it ran on."""

import json

from tests.e2e import hostile_inputs


def test_quick_cases_make_a_table(tmp_path):
  out, js = tmp_path / "table.md", tmp_path / "cases.json"
  assert hostile_inputs.main(["--only", "config_missing,unknown_override,slope_nan",
                              "--out", str(out), "--json", str(js),
                              "--keep", str(tmp_path / "work")]) == 0
  cases = {c["case"]: c for c in json.loads(js.read_text())["cases"]}
  assert sorted(cases) == ["config_missing", "slope_nan", "unknown_override"]
  assert cases["config_missing"]["exit"] == 2
  assert cases["config_missing"]["last_line"] == (
      "error: W/cases/config_missing/nope.py: no such config file "
      "(--config W/cases/config_missing/nope.py:runlocal)")
  assert cases["unknown_override"]["exit"] == 2
  assert "unknown config field 'bogus'" in cases["unknown_override"]["last_line"]
  assert isinstance(cases["slope_nan"]["exit"], int)
  table = out.read_text()
  rows = [ln for ln in table.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
  assert len(rows) == 3 and all(row.count(" | ") >= 6 for row in rows)
  assert str(tmp_path) not in table and "W/cases/config_missing/nope.py" in table
