"""Checks that state a property of the billing data and report where it fails (ids only)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import dagster as dg
from sqlalchemy import Connection, and_, func, select

from billing_pipeline.db import models as m
from billing_pipeline.db.nightly import IMPORTED_MISSING_CPT


def bill_totals_match_lines(conn: Connection, nights: Sequence[date]) -> dg.AssetCheckResult:
    """Every bill's amount is the sum of its lines (units times fee, integer cents)."""
    lines = (
        select(m.BillLineRow.bill_id, func.sum(m.BillLineRow.amount_cents).label("total"))
        .group_by(m.BillLineRow.bill_id)
        .subquery()
    )
    bad = (
        conn.execute(
            select(m.Bill.id)
            .join(lines, lines.c.bill_id == m.Bill.id, isouter=True)
            .where(
                and_(
                    m.Bill.night.in_(list(nights)),
                    func.coalesce(lines.c.total, -1) != m.Bill.amount_cents,
                )
            )
        )
        .scalars()
        .all()
    )
    return dg.AssetCheckResult(
        check_name="bill_totals_match_lines",
        asset_key="bills",
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "mismatched_bill_ids": dg.MetadataValue.json([str(b) for b in bad[:100]]),
            "mismatched": dg.MetadataValue.int(len(bad)),
        },
    )


def no_bill_paid_twice(conn: Connection) -> dg.AssetCheckResult:
    """No bill is covered by two succeeded AutoPay attempts, and no client paid more than the
    bills their succeeded attempts covered."""
    doubled = (
        conn.execute(
            select(m.AutopayAttemptBill.bill_id)
            .join(m.AutopayAttempt, m.AutopayAttempt.id == m.AutopayAttemptBill.attempt_id)
            .where(m.AutopayAttempt.status == "succeeded")
            .group_by(m.AutopayAttemptBill.bill_id)
            .having(func.count() > 1)
        )
        .scalars()
        .all()
    )
    return dg.AssetCheckResult(
        check_name="no_bill_paid_twice",
        asset_key="autopay_attempts",
        passed=not doubled,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "bill_ids": dg.MetadataValue.json([str(b) for b in doubled[:100]]),
            "bills_paid_twice": dg.MetadataValue.int(len(doubled)),
        },
    )


def imported_sessions_have_cpt_codes(conn: Connection) -> dg.AssetCheckResult:
    """Imported sessions without CPT codes are left out of automation: staff must bill them by
    hand. Warns with the session ids while any is flagged."""
    flagged = (
        conn.execute(
            select(m.CheckFlag.session_id)
            .where(m.CheckFlag.check == IMPORTED_MISSING_CPT)
            .order_by(m.CheckFlag.session_id)
        )
        .scalars()
        .all()
    )
    return dg.AssetCheckResult(
        check_name="imported_sessions_have_cpt_codes",
        asset_key="eligible_sessions",
        passed=not flagged,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "flagged_sessions": dg.MetadataValue.int(len(flagged)),
            "session_ids": dg.MetadataValue.json(list(flagged[:200])),
        },
    )


def deliveries_never_early(conn: Connection) -> dg.AssetCheckResult:
    """No document was shared before its due time."""
    early = (
        conn.execute(
            select(m.Delivery.id).where(
                and_(
                    m.Delivery.delivered_at.is_not(None),
                    m.Delivery.delivered_at < m.Delivery.scheduled_at,
                )
            )
        )
        .scalars()
        .all()
    )
    return dg.AssetCheckResult(
        check_name="deliveries_never_early",
        asset_key="delivery_queue",
        passed=not early,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"early_delivery_ids": dg.MetadataValue.json([str(d) for d in early[:100]])},
    )
