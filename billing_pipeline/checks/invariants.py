"""Checks that state a property of the billing data and report where it fails (ids only)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
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
    extra: Mapping[str, dg.MetadataValue] | None = None,
    description: str | None = None,
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
            **(extra or {}),
        },
        description=description,
    )


def bill_totals_match_lines(conn: Connection, nights: Sequence[date]) -> dg.AssetCheckResult:
    """Every bill's amount is the sum of its lines (units times fee, integer cents)."""
    if not nights:
        # No night was done (every practice failed, say on a locked bills table): no bill to
        # check, and no query to wait on the lock again, so the step still reports which
        # practices failed and why.
        return _result("bill_totals_match_lines", "bills", [], "mismatched_bill_ids", "mismatched")
    # Each of the nights' bills against the sum of its own lines (an index lookup per bill):
    # never an aggregate of every line ever written, whose plan depends on statistics that do
    # not know tonight's bills yet.
    total = (
        select(func.sum(m.BillLineRow.amount_cents))
        .where(m.BillLineRow.bill_id == m.Bill.id)
        .correlate(m.Bill)
        .scalar_subquery()
    )
    bad = conn.execute(
        select(m.Bill.id).where(
            and_(m.Bill.night.in_(list(nights)), func.coalesce(total, -1) != m.Bill.amount_cents)
        )
    ).scalars()
    return _result(
        "bill_totals_match_lines", "bills", list(bad), "mismatched_bill_ids", "mismatched"
    )


def no_bill_paid_twice(conn: Connection, nights: Sequence[date]) -> dg.AssetCheckResult:
    """No bill is paid by two succeeded AutoPay attempts, one of them made by the run's
    nights (a bill paid twice by attempts of other nights fails their own check)."""
    doubled: list[int] = []
    if nights:
        ours = (
            select(m.AutopayAttemptBill.bill_id)
            .join(m.AutopayAttempt, m.AutopayAttempt.id == m.AutopayAttemptBill.attempt_id)
            .where(and_(m.AutopayAttempt.status == "succeeded", m.AutopayAttempt.night.in_(nights)))
        )
        doubled = list(
            conn.execute(
                select(m.AutopayAttemptBill.bill_id)
                .join(m.AutopayAttempt, m.AutopayAttempt.id == m.AutopayAttemptBill.attempt_id)
                .where(
                    and_(
                        m.AutopayAttempt.status == "succeeded",
                        m.AutopayAttemptBill.bill_id.in_(ours),
                    )
                )
                .group_by(m.AutopayAttemptBill.bill_id)
                .having(func.count() > 1)
                .order_by(m.AutopayAttemptBill.bill_id)
            ).scalars()
        )
    return _result(
        "no_bill_paid_twice", "autopay_attempts", doubled, "bill_ids", "bills_paid_twice"
    )


def imported_sessions_have_cpt_codes(conn: Connection, met: Collection[str]) -> dg.AssetCheckResult:
    """Imported sessions without CPT codes are left out of automation: staff must bill them by
    hand, or add the code. Warns with the ids of the sessions the run's nights met without a
    CPT code (`met`), and says how many flagged sessions are still open overall (no CPT code
    yet, as their services stand now). A flag is resolved when staff add the codes: the
    session then bills on its next night (its flag stays in the history)."""
    flagged = list(
        conn.execute(
            select(m.CheckFlag.session_id).where(m.CheckFlag.check == IMPORTED_MISSING_CPT)
        ).scalars()
    )
    still_open = len(flagged) - len(sessions_with_cpt(conn, flagged))
    ids = sorted(set(met))
    return _result(
        "imported_sessions_have_cpt_codes",
        "eligible_sessions",
        ids,
        "session_ids",
        "flagged_sessions",
        dg.AssetCheckSeverity.WARN,
        {
            "open_overall": dg.MetadataValue.int(int(still_open)),
            # Shown as it is on the check's page (the JSON above hides behind "Show JSON").
            "sessions_to_bill_by_hand": dg.MetadataValue.text(sessions_text(ids)),
        },
        cpt_description(ids, still_open),
    )


def sessions_text(session_ids: Sequence[str]) -> str:
    """The sessions staff must bill by hand or give a CPT code, as one line of ids."""
    if not session_ids:
        return "none on these nights"
    shown = ", ".join(session_ids[:SHOWN])
    return shown + (f" ... and {len(session_ids) - SHOWN} more" if len(session_ids) > SHOWN else "")


def cpt_description(session_ids: Sequence[str], still_open: int) -> str:
    if not session_ids:
        return f"no imported session without a CPT code on these nights ({still_open} open overall)"
    shown = ", ".join(session_ids[:20]) + (" ..." if len(session_ids) > 20 else "")
    return (
        f"{len(session_ids)} imported session(s) without a CPT code, not billed: {shown} "
        f"({still_open} open overall)"
    )


def deliveries_never_early(conn: Connection, nights: Sequence[date]) -> dg.AssetCheckResult:
    """No document of the run's nights was shared before its due time."""
    early: list[int] = []
    if nights:
        early = list(
            conn.execute(
                select(m.Delivery.id)
                .where(
                    and_(
                        m.Delivery.night.in_(list(nights)),
                        m.Delivery.delivered_at.is_not(None),
                        m.Delivery.delivered_at < m.Delivery.scheduled_at,
                    )
                )
                .order_by(m.Delivery.id)
            ).scalars()
        )
    return _result("deliveries_never_early", "delivery_queue", early, "early_delivery_ids", "early")
