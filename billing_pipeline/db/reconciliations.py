"""Finance's payment_reconciliations table: the night's disagreements between Stripe and our
books, replaced each time the night is reconciled. Takes the caller's Connection, never
commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import Connection, and_, delete, insert

from billing_pipeline.db import models as m
from billing_pipeline.domain.autopay import DriftRow


def replace_reconciliations(
    conn: Connection,
    account_ids: Sequence[str],
    drift: Sequence[tuple[date, DriftRow]],
    nights: Sequence[date],
    checked_at: datetime,
) -> None:
    """These practices' rows for these nights, replaced by `drift` (none: the nights agree)."""
    t = m.PaymentReconciliation
    conn.execute(
        delete(t).where(and_(t.night.in_(list(nights)), t.account_id.in_(list(account_ids))))
    )
    if drift:
        conn.execute(
            insert(t),
            [
                {
                    "night": night,
                    "account_id": row.account_id,
                    "kind": row.kind,
                    "payment_intent_id": row.payment_intent_id,
                    "attempt_id": row.attempt_id,
                    "stripe_amount_cents": row.stripe_amount_cents,
                    "our_amount_cents": row.our_amount_cents,
                    "checked_at": checked_at,
                }
                for night, row in drift
            ],
        )
