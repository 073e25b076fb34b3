"""The alerts of failed Dagster runs (`run_alerts`): one per run, ids only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from billing_pipeline.db import models as m


@dataclass(frozen=True)
class RunAlert:
    """A failed run as staff are told about it: the job, its partitions, the practice ids
    (empty: every practice), the steps that failed with their error types."""

    run_id: str
    job_name: str
    partitions: str
    account_ids: tuple[str, ...]
    failed_steps: tuple[str, ...]
    message: str


def record_alert(conn: Connection, alert: RunAlert, at: datetime, email_status: str) -> bool:
    """Record the alert once per run; False when the run already has one (a sensor tick
    that ran again after a crash)."""
    found = conn.execute(select(m.RunAlert.id).where(m.RunAlert.run_id == alert.run_id)).first()
    if found is not None:
        return False
    conn.execute(
        insert(m.RunAlert).values(
            at=at,
            run_id=alert.run_id,
            job_name=alert.job_name[:200],
            partitions=alert.partitions[:100],
            account_ids=",".join(alert.account_ids),
            failed_steps="\n".join(alert.failed_steps),
            message=alert.message,
            email_status=email_status,
        )
    )
    return True


def set_email_status(conn: Connection, run_id: str, status: str) -> None:
    conn.execute(update(m.RunAlert).where(m.RunAlert.run_id == run_id).values(email_status=status))


def alert_rows(conn: Connection) -> list[dict[str, object]]:
    """Every alert, oldest first."""
    rows = conn.execute(select(m.RunAlert.__table__).order_by(m.RunAlert.id)).mappings()
    return [dict(r) for r in rows]
