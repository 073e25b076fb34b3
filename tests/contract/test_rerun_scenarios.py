"""Re-running is harmless and the clock can be advanced a night at a time (contract: "Running a
date twice, or a range that overlaps one already run, creates nothing twice and charges no one
twice"), on SQLite and on PostgreSQL, with our richest scenario: autopay_retries (declines and
their stop, an authentication-required card, payments, bills shared paid and open, statements on
the 1st, superbills on day 2, a delivery still pending at the end, a flagged imported session).
"""

from __future__ import annotations

import json
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.contract.runner import (
    REPORT_LISTS,
    check,
    cli_in_process,
    how,
    report_multisets,
    report_of,
    run_scenario,
    second_env,
    simulate_in_process,
)

OWN_DIR = Path(__file__).resolve().parents[1] / "scenarios"
SCENARIO = OWN_DIR / "autopay_retries.json"
EXPECTED = OWN_DIR / "autopay_retries.expected.json"
FIRST, LAST = how(json.loads(EXPECTED.read_text()))
# Our own document ids differ between two databases; everything else must not.
ID_KEYS = ("id", "document_id")


def _simulate(env: dict[str, str], first: str, last: str) -> None:
    assert simulate_in_process(env, first, last) == []


def _lists(report: dict[str, Any]) -> dict[str, list[str]]:
    """The six lists, each as sorted canonical JSON items (ids included)."""
    return {
        name: sorted(json.dumps(item, sort_keys=True) for item in report[name])
        for name in REPORT_LISTS
    }


def _payment_intents(env: dict[str, str]) -> int:
    """How many PaymentIntents the Stripe server holds (localstripe: total_count of the list)."""
    request = urllib.request.Request(
        f"{env['STRIPE_API_BASE']}/v1/payment_intents?limit=1",
        headers={"Authorization": f"Bearer {env['STRIPE_API_KEY']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.load(response)["total_count"])


@pytest.mark.slow
def test_running_again_and_overlapping_ranges_change_nothing(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    single = run_scenario(cli_env, SCENARIO, EXPECTED, in_process=True)
    assert check(EXPECTED, single, tmp_path) == ""
    charged = _payment_intents(cli_env)
    assert charged >= len(single["autopay_attempts"]) > 0

    _simulate(cli_env, FIRST, LAST)  # the same range again
    assert _lists(report_of(cli_env, run=cli_in_process)) == _lists(single)

    # Overlapping ranges: one that starts two nights earlier (nights with nothing of their own)
    # and ends inside the range, one inside it across the 1st and the superbill day.
    start = (date.fromisoformat(FIRST) - timedelta(days=2)).isoformat()
    _simulate(cli_env, start, "2026-11-30")
    _simulate(cli_env, "2026-11-30", "2026-12-02")
    again = report_of(cli_env, run=cli_in_process)
    assert _lists(again) == _lists(single)
    assert check(EXPECTED, again, tmp_path) == ""
    assert _payment_intents(cli_env) == charged, "a re-run called Stripe to charge again"


@pytest.mark.slow
def test_night_by_night_gives_the_same_report_as_one_range(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    loaded = cli_in_process(cli_env, "scenario", "load", str(SCENARIO))
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    night = date.fromisoformat(FIRST)
    while night <= date.fromisoformat(LAST):
        _simulate(cli_env, night.isoformat(), night.isoformat())
        night += timedelta(days=1)
    nightly = report_of(cli_env, run=cli_in_process)
    assert check(EXPECTED, nightly, tmp_path) == ""

    with second_env(cli_env, tmp_path) as other:
        whole = run_scenario(other, SCENARIO, EXPECTED, in_process=True)
    assert report_multisets(nightly, ID_KEYS) == report_multisets(whole, ID_KEYS)
