"""The contract's public scenarios through `scenario load`, `simulate`, `report --json`,
judged by the contract's own check_report.py, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from tests.conftest import CONTRACT
from tests.contract.runner import check
from tests.simulated import Simulations

# `scenarios/next/` holds the contract's examples of rules the product is gaining (today
# "Changes over time"): they run with the others.
PUBLIC = sorted((CONTRACT / "scenarios").glob("*.expected.json")) + sorted(
    (CONTRACT / "scenarios" / "next").glob("*.expected.json")
)


@pytest.mark.slow
@pytest.mark.parametrize("expected_path", PUBLIC, ids=lambda p: p.name.split(".")[0])
def test_public_scenario_matches_expected_report(
    expected_path: Path, backend: str, simulations: Simulations, tmp_path: Path
) -> None:
    """`scenario load`, `simulate`, `report --json` in processes of their own, as the contract
    runs them (the simulation is shared with the PHI scan and `explain`'s tests)."""
    scenario = expected_path.with_name(expected_path.name.replace(".expected", ""))
    report = simulations.get(scenario, backend).report
    schema = __import__("json").loads((CONTRACT / "report.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert check(expected_path, report, tmp_path) == ""


def test_public_scenarios_are_present() -> None:
    assert len(PUBLIC) >= 4, f"no contract scenarios under {CONTRACT}"
    assert any(p.parent.name == "next" for p in PUBLIC), "scenarios/next/ is not run"
