"""night_preview in Dagster: materialising it for a night writes nothing to the billing
database, charges nothing, and its table says what the night then makes."""

from __future__ import annotations

import dagster as dg
import pytest
from sqlalchemy import Engine

from billing_pipeline.assets.chain import NIGHT_CHAIN
from billing_pipeline.assets.preview import night_preview
from billing_pipeline.resources.payments import Payments
from billing_pipeline.scenario.load import load_scenario
from tests.assets.test_assets import SCENARIOS, metadata, resources, snapshot
from tests.conftest import LocalStripe


@pytest.fixture
def stripe(localstripe: LocalStripe) -> Payments:
    return Payments(api_key="sk_test_x", api_base=localstripe.url)


@pytest.fixture
def loaded(engine: Engine, stripe: Payments) -> Engine:
    load_scenario(SCENARIOS / "daily_autopay.json", engine, stripe)
    return engine


@pytest.mark.slow
def test_night_preview_writes_nothing_and_its_table_is_the_night(
    loaded: Engine, stripe: Payments
) -> None:
    engine, payments = loaded, stripe
    before = snapshot(engine)
    with dg.instance_for_test() as instance:
        previewed = dg.materialize(
            [night_preview],
            partition_key="2026-11-03",
            instance=instance,
            resources={"db": resources(engine, payments)["db"]},
        )
        assert previewed.success
        assert snapshot(engine) == before, "night_preview wrote to the billing database"
        table = previewed.get_asset_materialization_events()[0].materialization.metadata["preview"]
        [row] = [r.data for r in table.value.records]
        evaluation = previewed.get_asset_check_evaluations()[0]
        assert evaluation.passed and evaluation.check_name == "autopay_nights_look_usual"

        night = dg.materialize(
            NIGHT_CHAIN,
            partition_key="2026-11-03",
            instance=instance,
            resources=resources(engine, payments),
        )
        assert night.success
    meta = metadata(night)
    assert row["account_id"] == "acct-sunrise" and row["night"] == "2026-11-03"
    assert row["bills"] == meta["bills"]["bills"] > 0
    assert row["bills_cents"] == meta["bills"]["amount_cents"]
    assert row["autopay_charges"] == meta["autopay_attempts"]["attempts"] == 1
    assert row["autopay_cents"] == meta["autopay_attempts"]["amount_cents"]
    assert row["guard_would_hold"] is False
