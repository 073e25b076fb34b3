"""The night's steps done set-based give what the Python rules give.

- eligible_sessions: the rows PostgreSQL writes for the common case (db/eligibility.py) are
  exactly those the rules (domain/sessions.py) choose, with the same dates and amounts, also
  when settings changed over time: sessions whose services changed, in force or not yet, and
  clients whose `auto_bill` was switched either way are left to the rules.
- resolved_settings: a practice read as of 00:00 is read again for AutoPay's 00:30 only when a
  change falls between.

Real PostgreSQL as the service role under row-level security; practices from the bench's
generator (native, imported and already billed sessions in several zones)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select, text

from bench.synthetic import Size, generate
from billing_pipeline.db import models as m
from billing_pipeline.db.engine import make_engine
from billing_pipeline.db.store import (
    CLIENT,
    SERVICES,
    SESSION,
    NewChange,
    list_accounts,
    load_practices,
    record_changes,
)
from billing_pipeline.domain import calendar as cal
from billing_pipeline.services.nightly import (
    eligible_for_nights,
    record_eligible_sessions_of,
    record_resolved_settings_of,
)
from tests.conftest import as_role, create_pg_database, drop_pg_database

pytestmark = pytest.mark.postgres

NIGHT = date(2026, 11, 10)
EARLIER = datetime(2026, 11, 1, tzinfo=UTC)
LATER = datetime(2026, 11, 20, tzinfo=UTC)  # after the night: not in force for it


def _open_native_sessions(conn, n: int) -> list[tuple[str, str, str]]:
    """(session, client, account) of attended native sessions on no bill, one per client."""
    rows = conn.execute(
        text(
            "SELECT DISTINCT ON (s.client_id) s.id, s.client_id, c.account_id FROM sessions s "
            "JOIN clients c ON c.id = s.client_id JOIN accounts a ON a.id = c.account_id "
            "WHERE s.status = 'attended' AND s.source = 'native' AND c.auto_bill "
            "AND NOT EXISTS (SELECT 1 FROM bill_sessions b WHERE b.session_id = s.id) "
            "ORDER BY s.client_id, s.id LIMIT :n"
        ),
        {"n": n},
    ).all()
    assert len(rows) == n
    return [tuple(r) for r in rows]


def _services(cpt: str | None, fee_cents: int) -> list[dict[str, object]]:
    return [{"cpt": cpt, "units": 2, "fee_cents": fee_cents, "modifiers": ["95"]}]


def test_the_database_chooses_the_sessions_the_python_rules_choose() -> None:
    service_url = create_pg_database(migrated=True)
    owner = make_engine(as_role(service_url, "postgres"))
    service = make_engine(service_url)
    try:
        generate(owner, Size(accounts=6, sessions_per_night=20), NIGHT, history_days=3)
        with owner.begin() as conn:
            picked = _open_native_sessions(conn, 5)
            (no_cpt, _, a1), (new_fee, _, a2), (later, _, a3) = picked[:3]
            (_, off_client, a4), (_, on_client, a5) = picked[3:]
            conn.execute(
                text("UPDATE clients SET auto_bill = false WHERE id = :c"), {"c": on_client}
            )
            record_changes(
                conn,
                [
                    NewChange(a1, SESSION, no_cpt, SERVICES, _services(None, 9000), EARLIER),
                    NewChange(a2, SESSION, new_fee, SERVICES, _services("90837", 12345), EARLIER),
                    NewChange(a3, SESSION, later, SERVICES, _services(None, 1), LATER),
                    NewChange(a4, CLIENT, off_client, "auto_bill", False, EARLIER),
                    NewChange(a5, CLIENT, on_client, "auto_bill", True, EARLIER),
                ],
                EARLIER,
            )
        with service.begin() as conn:
            practices = []
            for account in list_accounts(conn):
                at = cal.bills_instant(NIGHT, account.timezone)
                practices.append(load_practices(conn, [account.id], at)[account.id])
            reference = eligible_for_nights(conn, practices, NIGHT)
            figures = record_eligible_sessions_of(conn, practices, NIGHT)
            written = {
                tuple(r)
                for r in conn.execute(
                    select(
                        m.EligibleSession.session_id,
                        m.EligibleSession.account_id,
                        m.EligibleSession.client_id,
                        m.EligibleSession.session_date,
                        m.EligibleSession.amount_cents,
                    ).where(m.EligibleSession.night == NIGHT)
                )
            }
        tz = {p.account.id: p.account.timezone for p in practices}
        expected = {
            (s.id, account_id, s.client_id, s.local_date(tz[account_id]), s.billable_amount_cents)
            for account_id, (eligible, _) in reference.items()
            for s in eligible
        }
        assert len(expected) > 100
        assert written == expected
        listed = {row[0]: row[4] for row in written}
        assert no_cpt not in listed  # its CPT code was removed before the night
        assert listed[new_fee] == 2 * 12345  # the services in force replaced the row's
        assert later in listed  # a change after the night is not in force for it
        assert not any(row[2] == off_client for row in written)
        assert any(row[2] == on_client for row in written)
        assert sum(f.counts["eligible_sessions"] for f in figures) == len(expected)
        assert sum(f.amount_cents for f in figures) == sum(row[4] for row in expected)
    finally:
        owner.dispose()
        service.dispose()
        drop_pg_database(service_url)


def test_resolved_settings_read_again_at_autopay_only_when_a_change_falls_between() -> None:
    """The night's practices are read as of 00:00; AutoPay's decision is as of 00:30. A
    practice with no change in between is not read again: its rows equal those of a second
    read, and a client whose AutoPay switch changed at 00:15 gets the 00:30 decision."""
    service_url = create_pg_database(migrated=True)
    owner = make_engine(as_role(service_url, "postgres"))
    service = make_engine(service_url)
    try:
        generate(owner, Size(accounts=4, sessions_per_night=20), NIGHT, history_days=1)
        with owner.begin() as conn:
            switched, account_id, tz = conn.execute(
                text(
                    "SELECT c.id, c.account_id, a.timezone FROM clients c "
                    "JOIN accounts a ON a.id = c.account_id "
                    "JOIN payment_methods p ON p.id = c.payment_method_id "
                    "WHERE a.autopay_enabled AND c.autopay_enabled AND p.exp_year > 2026 "
                    "AND c.billing_contact_id IS NULL AND NOT EXISTS (SELECT 1 FROM "
                    "setting_changes x WHERE x.subject_id = c.id) ORDER BY c.id LIMIT 1"
                )
            ).one()
            between = cal.bills_instant(NIGHT, tz) + timedelta(minutes=15)
            record_changes(
                conn,
                [NewChange(account_id, CLIENT, switched, "autopay_enabled", False, between)],
                between,
            )

        def rows(loaded_at: bool) -> set[tuple[object, ...]]:
            with service.connect() as conn:
                tx = conn.begin()
                batch = []
                for account in list_accounts(conn):
                    at = cal.bills_instant(NIGHT, account.timezone)
                    batch.append((load_practices(conn, [account.id], at)[account.id], at))
                record_resolved_settings_of(
                    conn,
                    [p for p, _ in batch],
                    NIGHT,
                    {p.account.id: at for p, at in batch} if loaded_at else None,
                )
                found = {
                    tuple(r)
                    for r in conn.execute(
                        select(m.ResolvedSettings.__table__).where(
                            m.ResolvedSettings.night == NIGHT
                        )
                    )
                }
                tx.rollback()
            return found

        reused, read_again = rows(True), rows(False)
        assert len(reused) > 100
        assert reused == read_again
        decision = {r[1]: (r[6], r[7]) for r in reused}  # client_id: autopay_runs, reason
        assert decision[switched] == (False, "client_autopay_off")
    finally:
        owner.dispose()
        service.dispose()
        drop_pg_database(service_url)
