"""The set-based steps do many practices per transaction; a practice whose data breaks a step
still fails alone: its batch is rolled back and done again one practice per transaction, so
the others' rows are written and the check names that practice only (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

import dagster as dg
import pytest
from sqlalchemy import Engine

from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.chain import chain_through
from billing_pipeline.db import models as m
from billing_pipeline.domain.billing import PlannedBill
from billing_pipeline.domain.sessions import Session
from billing_pipeline.domain.settings import BillCreation
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.services import nightly
from tests.assets.test_assets import accounts_with, add_practice, metadata, url_of

NIGHT = "2026-11-10"
PRACTICES = ("acct-a", "acct-b", "acct-c")


@pytest.fixture
def same_zone(engine: Engine) -> Engine:
    """Three daily practices in one zone (one batch, one read per zone), a session each."""
    for account_id in PRACTICES:
        add_practice(engine, account_id, "America/New_York", datetime(2026, 11, 10, 15, tzinfo=UTC))
    return engine


@pytest.mark.slow
def test_a_practice_that_breaks_the_batch_fails_alone(
    same_zone: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned = nightly.plan_bills

    def breaks_on_b(
        creation: BillCreation, night: date, eligible: Sequence[Session]
    ) -> list[PlannedBill]:
        if any(s.client_id == "cl-acct-b" for s in eligible):
            raise ValueError("bad data of acct-b")
        return planned(creation, night, eligible)

    monkeypatch.setattr(nightly, "plan_bills", breaks_on_b)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            chain_through(bills),
            partition_key=NIGHT,
            instance=instance,
            resources={
                "db": BillingDatabase(url=url_of(same_zone)),
                "clock": Clock(mode="logical", until_date="2026-12-31"),
            },
            raise_on_error=False,
        )
    assert accounts_with(same_zone, m.EligibleSession) == set(PRACTICES)
    assert accounts_with(same_zone, m.Bill) == {"acct-a", "acct-c"}
    assert accounts_with(same_zone, m.Delivery) == {"acct-a", "acct-c"}
    failed = [
        e.metadata["failed_practices"].value
        for e in result.get_asset_check_evaluations()
        if e.asset_key.to_user_string() == "bills" and e.check_name == "every_practice_done"
    ]
    assert failed == [{"acct-b": f"{NIGHT}: ValueError"}]
    assert set(metadata(result)["bills"]["per_practice"]) == {"acct-a", "acct-c"}


@pytest.mark.slow
def test_a_range_is_done_in_few_statements_on_postgresql_and_night_by_night_on_sqlite(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill's range of three nights: PostgreSQL bills it with the range work, SQLite night
    by night (one writer at a time: a range would hold its lock for the whole range), and both
    bill each night's session once."""
    from billing_pipeline.assets import billing as billing_assets

    for day in (8, 9, 10):
        add_practice(
            engine, f"acct-{day}", "America/New_York", datetime(2026, 11, day, 15, tzinfo=UTC)
        )
    ranges: list[list[date]] = []
    over = billing_assets.create_bills_over

    def counted(conn, accounts, nights, run_id):  # type: ignore[no-untyped-def]  # test spy
        ranges.append(list(nights))
        return over(conn, accounts, nights, run_id)

    monkeypatch.setattr(billing_assets, "create_bills_over", counted)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            chain_through(bills),
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": "2026-11-08",
                "dagster/asset_partition_range_end": "2026-11-10",
            },
            resources={
                "db": BillingDatabase(url=url_of(engine)),
                "clock": Clock(mode="logical", until_date="2026-12-31"),
            },
        )
    assert result.success
    postgres = engine.dialect.name == "postgresql"
    assert ranges == ([[date(2026, 11, d) for d in (8, 9, 10)]] if postgres else []), ranges
    assert accounts_with(engine, m.Bill) == {"acct-8", "acct-9", "acct-10"}
