"""The AutoPay anomaly guard in the Dagster UI: the practices' nights it held in a run."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from billing_pipeline.services.guard import HELD_BY_GUARD
from billing_pipeline.services.nightly import NightFigures

AUTOPAY_NIGHTS_LOOK_USUAL = "autopay_nights_look_usual"


def autopay_nights_look_usual_spec(asset: str) -> dg.AssetCheckSpec:
    """Not blocking on purpose: the hold itself stops the held practice's charges (and its
    bills wait to be shared); failing the step would stop every other practice's deliveries."""
    return dg.AssetCheckSpec(
        AUTOPAY_NIGHTS_LOOK_USUAL,
        asset=asset,
        description="No practice's night looked unlike its own history (number of charges or "
        "total at a multiple of its trailing median, or a client above the cap). A held night "
        "is named here; nothing was charged for it until staff release it with "
        "`billing-pipeline autopay release ACCOUNT NIGHT`.",
    )


def autopay_nights_look_usual(asset: str, figures: Sequence[NightFigures]) -> dg.AssetCheckResult:
    held = sorted(
        {f"{f.account_id} {f.night.isoformat()}" for f in figures if f.counts.get(HELD_BY_GUARD)}
    )
    return dg.AssetCheckResult(
        check_name=AUTOPAY_NIGHTS_LOOK_USUAL,
        asset_key=asset,
        passed=not held,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"held": dg.MetadataValue.json(held)},
        description=(
            "held, nothing charged until released: " + ", ".join(held) if held else "no night held"
        ),
    )
