"""Our own scenarios (tests/scenarios/*.json) through `scenario load`, `simulate`, `report --json`,
judged by the contract's check_report.py, on SQLite and on PostgreSQL.

Each NAME.expected.json was worked out by hand from the contract's rules (its `_notes` say how),
never copied from the program's output. Together the files cover every rule of the contract:
see each scenario's `description`.

When the program and a hand-worked expectation disagree and the contract sides with the
expectation, the case is listed in KNOWN_BUGS (xfail, strict) with the rule it breaks.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import CONTRACT
from tests.contract.runner import check, how, run_scenario

OWN_DIR = Path(__file__).resolve().parents[1] / "scenarios"
OWN = sorted(OWN_DIR.glob("*.expected.json"))
REPORT_LISTS = ("bills", "autopay_attempts", "superbills", "statements", "deliveries", "flags")

# scenario name -> why the program is wrong (contract rule, expected vs got)
KNOWN_BUGS: dict[str, str] = {}


def _name(expected_path: Path) -> str:
    return expected_path.name.split(".")[0]


def _scenario_of(expected_path: Path) -> Path:
    return expected_path.with_name(expected_path.name.replace(".expected", ""))


def _case(expected_path: Path):
    name = _name(expected_path)
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] if name in KNOWN_BUGS else []
    return pytest.param(expected_path, id=name, marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize("expected_path", [_case(p) for p in OWN])
def test_own_scenario_matches_expected_report(
    expected_path: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    report = run_scenario(cli_env, _scenario_of(expected_path), expected_path, in_process=True)
    schema = json.loads((CONTRACT / "report.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert check(expected_path, report, tmp_path) == ""


def test_own_scenarios_are_present() -> None:
    assert len(OWN) >= 10, f"expected our own scenarios under {OWN_DIR}"


@pytest.mark.parametrize("expected_path", OWN, ids=_name)
def test_own_scenario_files_are_well_formed(expected_path: Path) -> None:
    """Each scenario obeys the contract's schema; each expectation names all six lists and a
    `_how` with a valid date range."""
    schema = json.loads((CONTRACT / "scenario.schema.json").read_text())
    scenario = json.loads(_scenario_of(expected_path).read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(
        scenario
    )
    expected = json.loads(expected_path.read_text())
    assert expected["_how"].startswith("billing-pipeline simulate --from ")
    first, last = how(expected)
    assert first <= last
    assert sorted(k for k in expected if not k.startswith("_")) == sorted(REPORT_LISTS)
    session_ids = {s["id"] for s in scenario["sessions"]}
    client_ids = {c["id"] for c in scenario["clients"]}
    for name in REPORT_LISTS:
        for item in expected[name]:
            if "client_id" in item:
                assert item["client_id"] in client_ids, item
            named = list(item.get("session_ids", []))
            if "session_id" in item:
                named.append(item["session_id"])
            assert set(named) <= session_ids, item
