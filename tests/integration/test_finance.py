"""Finance's figures (finance_daily) of a public scenario's month equal those computed from
`report --json` of the same data, exported through `billing-pipeline finance export --month
--csv`; and the export is an audited read.

The shared simulation is not written to: its SQLite database is copied (SQLite's backup API)
and finance_daily runs on the copy, over the month, the way a single-run backfill does."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from billing_pipeline.db import models as m
from billing_pipeline.db.engine import dispose_engines, get_engine
from billing_pipeline.db.finance import COLUMNS, FIGURES
from billing_pipeline.definitions import defs
from tests.conftest import CONTRACT
from tests.contract.runner import cli_in_process
from tests.simulated import Simulations

SCENARIO = CONTRACT / "scenarios" / "monthly_billing_contacts.json"
MONTH, FIRST, LAST = "2026-10", date(2026, 10, 1), date(2026, 10, 31)


def night_of(instant: str, zone: str) -> date:
    """A step made at 00:00 or 00:30 local belongs to the night before."""
    local = datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(ZoneInfo(zone))
    return local.date() - timedelta(days=1)


def figures_from_report(report: dict[str, Any], doc: dict[str, Any]) -> dict[tuple, dict]:
    zone = {a["id"]: a["timezone"] for a in doc["accounts"]}
    account = {c["id"]: c["account_id"] for c in doc["clients"]}
    rows: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIGURES, 0))
    billed: dict[tuple, int] = defaultdict(int)
    collected: dict[tuple, int] = defaultdict(int)
    night_of_document: dict[str, date] = {}
    for bill in report["bills"]:
        a = account[bill["client_id"]]
        night = night_of(bill["created_at"], zone[a])
        night_of_document[bill["id"]] = night
        rows[a, night]["bills"] += 1
        rows[a, night]["bills_cents"] += bill["amount_cents"]
        billed[a, night] += bill["amount_cents"]
    for kind in ("superbills", "statements"):
        for document in report[kind]:
            a = account[document["client_id"]]
            night_of_document[document["id"]] = night_of(document["created_at"], zone[a])
    for attempt in report["autopay_attempts"]:
        a = account[attempt["client_id"]]
        row = rows[a, night_of(attempt["attempted_at"], zone[a])]
        if attempt["outcome"] == "succeeded":
            row["charges_succeeded"] += 1
            row["collected_cents"] += attempt["amount_cents"]
            collected[a, night_of(attempt["attempted_at"], zone[a])] += attempt["amount_cents"]
        elif attempt["outcome"] == "declined":
            row["charges_declined"] += 1
            row["declined_cents"] += attempt["amount_cents"]
        elif attempt["outcome"] == "requires_action":
            row["charges_requires_action"] += 1
    for delivery in report["deliveries"]:
        if delivery["delivered_at"]:
            a = account[delivery["client_id"]]
            rows[a, night_of_document[delivery["document_id"]]]["documents_shared"] += 1
    out = {}
    for a in zone:
        night = FIRST
        while night <= LAST:
            row = dict(rows[a, night])
            row["open_balance_cents"] = sum(
                v for (x, n), v in billed.items() if x == a and n <= night
            ) - sum(v for (x, n), v in collected.items() if x == a and n <= night)
            out[a, night] = row
            night += timedelta(days=1)
    return out


@pytest.mark.slow
def test_the_finance_table_of_a_month_equals_the_figures_of_report_json(
    simulations: Simulations, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = simulations.get(SCENARIO, "sqlite")
    source = sim.env["BILLING_DATABASE_URL"].split("///", 1)[1]
    copy = tmp_path / "billing.db"
    with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    url = f"sqlite:///{copy}"
    env = {
        "BILLING_DATABASE_URL": url,
        "DAGSTER_HOME": str(tmp_path),
        "BILLING_DATA_DIR": str(tmp_path / "data"),
        "STRIPE_API_KEY": "sk_test_unused",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import dagster as dg

    with dg.instance_for_test() as instance:
        run = defs.resolve_job_def("finance_daily_job").execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": FIRST.isoformat(),
                "dagster/asset_partition_range_end": LAST.isoformat(),
            },
        )
    assert run.success
    # One materialisation per night of the range, each with its own night's table of figures
    # (a row per practice), never the batch's.
    materializations = run.asset_materializations_for_node("finance_daily")
    assert len(materializations) == 31
    for materialization in materializations:
        table = materialization.metadata["finance"]
        assert [c.name for c in table.schema.columns] == list(COLUMNS)
        assert len(table.records) == len(sim.doc["accounts"])
        nights = {record.data["night"] for record in table.records}
        assert nights == {materialization.partition}, (nights, materialization.partition)

    exported = cli_in_process(env, "finance", "export", "--month", MONTH, "--csv")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert rows and list(rows[0]) == list(COLUMNS)
    got = {
        (r["account_id"], date.fromisoformat(r["night"])): {k: int(r[k]) for k in FIGURES}
        for r in rows
    }
    expected = figures_from_report(sim.report, sim.doc)
    assert got == expected
    # Something happened in the month: bills, charges of each kind the scenario has, shares.
    assert sum(r["bills"] for r in got.values()) > 0
    assert sum(r["documents_shared"] for r in got.values()) > 0

    # The export is a read like `report`: its audit row was written.
    engine = get_engine(url)
    with engine.connect() as conn:
        audited = conn.execute(
            select(func.count()).where(m.AuditLog.action == "finance_export")
        ).scalar_one()
    assert audited == 1
    # The readable form says dollars.
    shown = cli_in_process(env, "finance", "export", "--month", MONTH)
    assert shown.returncode == 0 and "$" in shown.stdout
    dispose_engines()
