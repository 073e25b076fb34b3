"""The night's assets, named once, in the order a night runs them. Jobs, the code location and
the test harnesses take their selections from here."""

from __future__ import annotations

import dagster as dg

from billing_pipeline.assets.autopay import autopay_attempts, statements
from billing_pipeline.assets.billing import bills, superbills
from billing_pipeline.assets.delivery import delivery_queue
from billing_pipeline.assets.reconciliation import payment_reconciliations
from billing_pipeline.assets.sessions import eligible_sessions, resolved_settings

NIGHT_CHAIN: tuple[dg.AssetsDefinition, ...] = (
    eligible_sessions,
    resolved_settings,
    bills,
    superbills,
    autopay_attempts,
    statements,
    delivery_queue,
    payment_reconciliations,
)
# 00:00 in each practice's zone, and 00:30 (AutoPay and what waits for it).
AT_MIDNIGHT = (eligible_sessions, resolved_settings, bills, superbills, statements)
AT_AUTOPAY = (autopay_attempts, delivery_queue, payment_reconciliations)


def chain_through(last: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    """The chain's assets up to and including `last`, in order."""
    return list(NIGHT_CHAIN[: NIGHT_CHAIN.index(last) + 1])
