"""Checks that state a property of the billing data and report where it fails (ids only)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import dagster as dg
from sqlalchemy import Connection, and_, func, select

from billing_pipeline.db import models as m
from billing_pipeline.db.store import sessions_with_cpt
from billing_pipeline.services.nightly import IMPORTED_MISSING_CPT

SHOWN = 100  # offending ids listed in a check's metadata; the count says how many in all


def _result(
    check: str,
    asset: str,
    offenders: Sequence[object],
    ids_key: str,
    count_key: str,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    """A check that passes when nothing offends; ids (never names) and a count otherwise."""
    return dg.AssetCheckResult(
        check_name=check,
        asset_key=asset,
        passed=not offenders,
        severity=severity,
        metadata={
            ids_key: dg.MetadataValue.json([str(o) for o in offenders[:SHOWN]]),
            count_key: dg.MetadataValue.int(len(offenders)),
        },
    )


def bill_totals_match_lines(conn: Connection, nights: Sequence[date]) -> dg.AssetCheckResult:
    """Every bill's amount is the sum of its lines (units times fee, integer cents)."""
    if not nights:
        # No night was done (every practice failed, say on a locked bills table): no bill to
        # check, and no query to wait on the lock again, so the step still reports which
        # practices failed and why.
        return _result("bill_totals_match_lines", "bills", [], "mismatched_bill_ids", "mismatched")
    lines = (
        select(m.BillLineRow.bill_id, func.sum(m.BillLineRow.amount_cents).label("total"))
        .group_by(m.BillLineRow.bill_id)
        .subquery()
    )
    bad = conn.execute(
        select(m.Bill.id)
        .join(lines, lines.c.bill_id == m.Bill.id, isouter=True)
        .where(
            and_(
                m.Bill.night.in_(list(nights)),
                func.coalesce(lines.c.total, -1) != m.Bill.amount_cents,
            )
        )
    ).scalars()
    return _result(
        "bill_totals_match_lines", "bills", list(bad), "mismatched_bill_ids", "mismatched"
    )


def no_bill_paid_twice(conn: Connection) -> dg.AssetCheckResult:
    """No bill is covered by two succeeded AutoPay attempts, and no client paid more than the
    bills their succeeded attempts covered."""
    doubled = conn.execute(
        select(m.AutopayAttemptBill.bill_id)
        .join(m.AutopayAttempt, m.AutopayAttempt.id == m.AutopayAttemptBill.attempt_id)
        .where(m.AutopayAttempt.status == "succeeded")
        .group_by(m.AutopayAttemptBill.bill_id)
        .having(func.count() > 1)
    ).scalars()
    return _result(
        "no_bill_paid_twice", "autopay_attempts", list(doubled), "bill_ids", "bills_paid_twice"
    )


def imported_sessions_have_cpt_codes(conn: Connection) -> dg.AssetCheckResult:
    """Imported sessions without CPT codes are left out of automation: staff must bill them by
    hand, or add the code. Warns with the session ids while any flagged session still has no
    CPT code; one given a code since is resolved (its flag stays in the history)."""
    flagged = list(
        conn.execute(
            select(m.CheckFlag.session_id)
            .where(m.CheckFlag.check == IMPORTED_MISSING_CPT)
            .order_by(m.CheckFlag.session_id)
        ).scalars()
    )
    resolved = sessions_with_cpt(conn, flagged)
    return _result(
        "imported_sessions_have_cpt_codes",
        "eligible_sessions",
        [sid for sid in flagged if sid not in resolved],
        "session_ids",
        "flagged_sessions",
        dg.AssetCheckSeverity.WARN,
    )


def deliveries_never_early(conn: Connection) -> dg.AssetCheckResult:
    """No document was shared before its due time."""
    early = conn.execute(
        select(m.Delivery.id).where(
            and_(
                m.Delivery.delivered_at.is_not(None),
                m.Delivery.delivered_at < m.Delivery.scheduled_at,
            )
        )
    ).scalars()
    return _result(
        "deliveries_never_early", "delivery_queue", list(early), "early_delivery_ids", "early"
    )
