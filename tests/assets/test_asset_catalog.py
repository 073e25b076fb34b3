"""The asset graph reads as the business does: every table asset shows its columns (the
billing table it writes), its kinds say what it touches (the billing database, Stripe, PDFs),
each has owners and a domain tag, and finance's figures are in their own group."""

from __future__ import annotations

import warnings

import dagster as dg
import pytest

from billing_pipeline.db import models as m
from billing_pipeline.definitions import defs

TABLES = {
    "eligible_sessions": m.EligibleSession,
    "resolved_settings": m.ResolvedSettings,
    "bills": m.Bill,
    "superbills": m.Superbill,
    "autopay_attempts": m.AutopayAttempt,
    "statements": m.Statement,
    "delivery_queue": m.Delivery,
    "payment_reconciliations": m.PaymentReconciliation,
    "finance_daily": m.FinanceDaily,
}
KINDS = {
    "autopay_attempts": {"postgres", "stripe"},
    "payment_reconciliations": {"postgres", "stripe"},
    "bills": {"postgres", "pdf"},
    "superbills": {"postgres", "pdf"},
    "statements": {"postgres", "pdf"},
    "delivery_queue": {"postgres", "pdf"},
    "finance_daily": {"postgres", "pandas"},
}
# Writes nothing: a dry run of the night, shown as a table in its metadata.
NO_TABLE = {"night_preview"}


@pytest.fixture(autouse=True)
def _quiet_beta_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")


def specs() -> dict[str, dg.AssetSpec]:
    return {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}


def test_every_table_asset_shows_the_columns_of_its_table() -> None:
    found = specs()
    assert set(TABLES) <= set(found)
    for name, spec in found.items():
        if name in NO_TABLE:
            continue
        schema = spec.metadata.get("dagster/column_schema")
        assert isinstance(schema, dg.TableSchema), name
        names = [c.name for c in schema.columns]
        assert len(names) == len(set(names)) and names, name
        if name in TABLES:
            assert names == [c.name for c in TABLES[name].__table__.columns], name
            cents = [c for c in schema.columns if c.name.endswith("_cents")]
            assert all(c.type == "int" for c in cents), name


def test_kinds_owners_groups_and_tags_say_what_each_asset_is() -> None:
    for name, spec in specs().items():
        assert "postgres" in spec.kinds, name
        assert spec.kinds == KINDS.get(name, {"postgres"}), name
        assert spec.owners and all(o.startswith("team:") for o in spec.owners), name
        assert spec.tags.get("domain"), name
    found = specs()
    assert found["finance_daily"].group_name == "finance"
    assert "team:finance" in found["payment_reconciliations"].owners
    assert found["bills"].group_name == "billing"


def test_finance_daily_runs_at_18_utc_for_yesterdays_service_date() -> None:
    from datetime import UTC, datetime

    from billing_pipeline.schedules import finance_daily_schedule

    assert finance_daily_schedule.cron_schedule == "0 18 * * *"
    assert finance_daily_schedule.execution_timezone == "UTC"
    assert finance_daily_schedule.job_name == "finance_daily_job"
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 4, 18, tzinfo=UTC)
    )
    request = finance_daily_schedule(context)
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2026-11-03"
    assert request.run_key == "finance_daily:2026-11-03"
