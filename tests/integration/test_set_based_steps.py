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
from billing_pipeline.db import nightly as q
from billing_pipeline.db.engine import make_engine
from billing_pipeline.db.store import (
    CLIENT,
    SERVICES,
    SESSION,
    NewChange,
    list_accounts,
    listed_open_sessions,
    load_practices,
    load_sessions_by_ids,
    record_changes,
)
from billing_pipeline.domain import calendar as cal
from billing_pipeline.domain.billing import plan_bills
from billing_pipeline.domain.sessions import Session
from billing_pipeline.domain.settings import BillCreation
from billing_pipeline.services.nightly import (
    create_bills_of,
    create_bills_over,
    eligible_for_nights,
    record_eligible_sessions_of,
    record_eligible_sessions_of_accounts,
    record_eligible_sessions_over,
    record_resolved_settings_of,
    record_resolved_settings_over,
)
from tests.conftest import as_role, create_pg_database, drop_pg_database

pytestmark = pytest.mark.postgres

NIGHT = date(2026, 11, 10)
EARLIER = datetime(2026, 11, 1, tzinfo=UTC)
LATER = datetime(2026, 11, 20, tzinfo=UTC)  # after the night: not in force for it


def _open_native_sessions(conn, n: int, before: datetime = LATER) -> list[tuple[str, str, str]]:
    """(session, client, account) of attended native sessions on no bill, one per client,
    starting before `before`."""
    rows = conn.execute(
        text(
            "SELECT DISTINCT ON (s.client_id) s.id, s.client_id, c.account_id FROM sessions s "
            "JOIN clients c ON c.id = s.client_id JOIN accounts a ON a.id = c.account_id "
            "WHERE s.status = 'attended' AND s.source = 'native' AND c.auto_bill "
            "AND NOT EXISTS (SELECT 1 FROM bill_sessions b WHERE b.session_id = s.id) "
            "AND s.starts_at < :before ORDER BY s.client_id, s.id LIMIT :n"
        ),
        {"n": n, "before": before.replace(tzinfo=None)},
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
            _bills_read_the_listed_sessions_as_before(conn, practices, new_fee)
            _listed_clients_read_as_in_the_whole_practice(conn, practices)
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


def _bills_read_the_listed_sessions_as_before(conn, practices, new_fee: str) -> None:
    """`bills` reads the night's listed sessions on no bill (`listed_open_sessions`, a join)
    exactly as the chunked reads did: the listed ids less the billed ones, each session with
    its services in force at the bills' instant (a services change in force replaces the
    rows). One listed session is billed first (in a savepoint, rolled back): it is left out."""
    tz_of = {p.account.id: p.account.timezone for p in practices}
    listed = q.eligible_session_ids_of(conn, list(tz_of), NIGHT)
    assert any(new_fee in ids for ids in listed.values())
    taken, owner = next((sid, a) for a, ids in listed.items() for sid in ids if sid != new_fee)
    at = cal.bills_instant(NIGHT, tz_of[owner])
    savepoint = conn.begin_nested()
    [session] = load_sessions_by_ids(conn, [taken], at)
    q.insert_bills(
        conn, NIGHT, [q.NewBill(owner, at, plan_bills(BillCreation.DAILY, NIGHT, [session])[0])]
    )
    found: dict[str, list[Session]] = {}
    for tz in set(tz_of.values()):
        ids = [a for a, z in tz_of.items() if z == tz]
        found.update(listed_open_sessions(conn, ids, NIGHT, cal.bills_instant(NIGHT, tz)))
    savepoint.rollback()
    for account_id, tz in tz_of.items():
        open_ids = [sid for sid in listed[account_id] if sid != taken]
        expected = load_sessions_by_ids(conn, open_ids, cal.bills_instant(NIGHT, tz))
        assert found[account_id] == expected
    every = {s.id: s for ss in found.values() for s in ss}
    assert len(every) > 100
    assert taken not in every
    assert [(x.cpt, x.fee_cents) for x in every[new_fee].services] == [("90837", 12345)]


def _listed_clients_read_as_in_the_whole_practice(conn, practices) -> None:
    """`bills` reads a practice with only the clients the night lists (`listed_on`): exactly
    those, each as the whole practice's read has it."""
    left_out = 0
    for practice in practices:
        account_id = practice.account.id
        at = cal.bills_instant(NIGHT, practice.account.timezone)
        whole = load_practices(conn, [account_id], at, cards=False)[account_id]
        listed = load_practices(conn, [account_id], at, cards=False, listed_on=NIGHT)[account_id]
        clients = set(
            conn.execute(
                select(m.EligibleSession.client_id).where(
                    m.EligibleSession.account_id == account_id, m.EligibleSession.night == NIGHT
                )
            ).scalars()
        )
        assert set(listed.clients) == clients
        assert listed.account == whole.account and listed.contacts == whole.contacts
        assert all(listed.clients[c] == whole.clients[c] for c in clients)
        left_out += len(whole.clients) - len(clients)
    assert left_out > 0  # clients without a listed session were not read


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


def test_a_range_of_nights_lists_and_flags_what_night_after_night_does() -> None:
    """A backfill's range done in a few statements (`record_eligible_sessions_over`) writes
    the same eligible rows, flags (each on its first night), steps done and figures as the
    nights done one after the other, also when a session's services and a client's
    `auto_bill` change in the middle of the range (in force for the later nights only)."""
    service_url = create_pg_database(migrated=True)
    owner = make_engine(as_role(service_url, "postgres"))
    service = make_engine(service_url)
    nights = [NIGHT - timedelta(days=d) for d in range(5, -1, -1)]
    middle = datetime.combine(NIGHT - timedelta(days=2), datetime.min.time(), UTC) + timedelta(
        hours=15
    )
    try:
        generate(owner, Size(accounts=8, sessions_per_night=20), NIGHT, history_days=8)
        with owner.begin() as conn:
            # Open sessions older than the range: in the look-back of each of its nights.
            picked = _open_native_sessions(conn, 6, middle - timedelta(days=5))
            (no_cpt, _, a1), (new_fee, _, a2), (before, _, a3) = picked[:3]
            (_, off_client, a4), (_, on_client, a5), (_, early_off, a6) = picked[3:]
            conn.execute(
                text("UPDATE clients SET auto_bill = false WHERE id = :c"), {"c": on_client}
            )
            record_changes(
                conn,
                [
                    NewChange(a1, SESSION, no_cpt, SERVICES, _services(None, 9000), middle),
                    NewChange(a2, SESSION, new_fee, SERVICES, _services("90837", 12345), middle),
                    NewChange(a3, SESSION, before, SERVICES, _services("90834", 777), EARLIER),
                    NewChange(a4, CLIENT, off_client, "auto_bill", False, middle),
                    NewChange(a5, CLIENT, on_client, "auto_bill", True, middle),
                    NewChange(a6, CLIENT, early_off, "auto_bill", False, EARLIER),
                ],
                EARLIER,
            )

        def done(ranged: bool) -> tuple[object, ...]:
            with service.connect() as conn:
                tx = conn.begin()
                accounts = list_accounts(conn)
                if ranged:
                    figures = record_eligible_sessions_over(conn, accounts, nights)
                else:
                    figures = []
                    for night in nights:
                        batch = [(a, cal.bills_instant(night, a.timezone)) for a in accounts]
                        figures += record_eligible_sessions_of_accounts(conn, batch, night)

                def rows(sql: str) -> list[tuple[object, ...]]:
                    return sorted(tuple(r) for r in conn.execute(text(sql)))

                found = (
                    rows(
                        "SELECT night, session_id, account_id, client_id, session_date, "
                        "amount_cents FROM eligible_sessions"
                    ),
                    rows(
                        'SELECT "check", session_id, account_id, client_id, first_night '
                        "FROM check_flags"
                    ),
                    rows("SELECT account_id, night, step, completed_at FROM night_steps"),
                    [
                        (f.account_id, f.night, dict(f.counts), f.amount_cents, f.ids)
                        for f in figures
                    ],
                )
                tx.rollback()
            return found

        night_by_night, ranged = done(False), done(True)
        listed, flags, steps, _ = ranged
        assert len({r[0] for r in listed}) == len(nights) and len(listed) > 200
        assert flags and len(steps) == 8 * len(nights)
        assert ranged == night_by_night
        fees = {(r[0], r[1]): r[5] for r in listed}
        assert fees[(nights[-1], new_fee)] == 2 * 12345  # in force from the middle on
        assert fees[(nights[0], new_fee)] != 2 * 12345
        assert (nights[-1], no_cpt) not in fees and (nights[0], no_cpt) in fees
        assert fees[(nights[0], before)] == 2 * 777
        clients = {(r[0], r[3]) for r in listed}
        assert (nights[0], off_client) in clients and (nights[-1], off_client) not in clients
        assert (nights[0], on_client) not in clients and (nights[-1], on_client) in clients
        assert not any(r[3] == early_off for r in listed)
    finally:
        owner.dispose()
        service.dispose()
        drop_pg_database(service_url)


def test_a_range_of_nights_resolves_the_settings_night_after_night_does() -> None:
    """`record_resolved_settings_over` reads a practice again only when a change takes
    effect since it was last read: its rows, steps done and figures equal those of the nights
    done one after the other (each practice read as of 00:00, AutoPay's decision as of
    00:30), with changes at a night's 00:00, between 00:00 and 00:30, and mid-day, and a card
    that expires at the end of the range's first month (rows of a practice left unchanged
    are the last night's only within a month)."""
    service_url = create_pg_database(migrated=True)
    owner = make_engine(as_role(service_url, "postgres"))
    service = make_engine(service_url)
    nights = [date(2026, 10, 28) + timedelta(days=d) for d in range(5)]  # Oct 28 .. Nov 1
    try:
        generate(owner, Size(accounts=6, sessions_per_night=20), NIGHT, history_days=2)
        with owner.begin() as conn:
            clients = conn.execute(
                text(
                    "SELECT c.id, c.account_id, a.timezone FROM clients c "
                    "JOIN accounts a ON a.id = c.account_id "
                    "JOIN payment_methods p ON p.id = c.payment_method_id "
                    "WHERE a.autopay_enabled AND c.autopay_enabled AND p.exp_year > 2026 "
                    "AND c.billing_contact_id IS NULL ORDER BY c.id LIMIT 4"
                )
            ).all()
            (c1, a1, tz1), (c2, a2, tz2), (c3, a3, _), (c4, a4, _) = clients
            # A client of a practice with no change at all: its rows are reused night after
            # night, but not across the month end that expires its card.
            c5 = conn.execute(
                text(
                    "SELECT c.id FROM clients c JOIN accounts a ON a.id = c.account_id "
                    "JOIN payment_methods p ON p.id = c.payment_method_id "
                    "WHERE a.autopay_enabled AND c.autopay_enabled AND p.exp_year > 2026 "
                    "AND c.billing_contact_id IS NULL AND c.account_id NOT IN (:a1, :a2, :a3, :a4) "
                    "AND NOT EXISTS (SELECT 1 FROM setting_changes x "
                    "WHERE x.account_id = c.account_id) ORDER BY c.id LIMIT 1"
                ),
                {"a1": a1, "a2": a2, "a3": a3, "a4": a4},
            ).scalar_one()
            conn.execute(
                text(
                    "UPDATE payment_methods SET exp_year = 2026, exp_month = 10 "
                    "WHERE id = (SELECT payment_method_id FROM clients WHERE id = :c)"
                ),
                {"c": c5},
            )
            second, third = nights[1], nights[2]
            at_midnight = cal.bills_instant(second, tz1)
            between = cal.bills_instant(third, tz2) + timedelta(minutes=15)
            record_changes(
                conn,
                [
                    NewChange(a1, CLIENT, c1, "autopay_enabled", False, at_midnight),
                    NewChange(a2, CLIENT, c2, "autopay_enabled", False, between),
                    NewChange(a3, CLIENT, c3, "share_bills", False, between + timedelta(hours=9)),
                    NewChange(a4, CLIENT, c4, "payment_method_id", None, EARLIER),
                    NewChange(a2, CLIENT, c2, "autopay_enabled", True, LATER),
                ],
                EARLIER,
            )

        def done(ranged: bool) -> tuple[object, ...]:
            with service.connect() as conn:
                tx = conn.begin()
                accounts = list_accounts(conn)
                if ranged:
                    figures = record_resolved_settings_over(conn, accounts, nights)
                else:
                    figures = []
                    for night in nights:
                        at = {a.id: cal.bills_instant(night, a.timezone) for a in accounts}
                        practices = [load_practices(conn, [a.id], at[a.id])[a.id] for a in accounts]
                        figures += record_resolved_settings_of(conn, practices, night, at)
                found = (
                    sorted(tuple(r) for r in conn.execute(select(m.ResolvedSettings.__table__))),
                    sorted(
                        tuple(r)
                        for r in conn.execute(
                            text("SELECT account_id, night, step, completed_at FROM night_steps")
                        )
                    ),
                    [
                        (f.account_id, f.night, dict(f.counts), f.amount_cents, f.ids)
                        for f in figures
                    ],
                )
                tx.rollback()
            return found

        night_by_night, ranged = done(False), done(True)
        assert ranged == night_by_night
        rows = {(r[0], r[1]): r for r in ranged[0]}
        assert len(rows) > 100 * len(nights)
        autopay = {(n, c): rows[(n, c)][6] for n in nights for c in (c1, c2, c5)}
        # AutoPay runs on the next local day: the card is good through October's last day.
        assert autopay[(nights[2], c5)] and not autopay[(nights[3], c5)]
        assert autopay[(nights[0], c1)] and not autopay[(second, c1)]
        assert autopay[(second, c2)] and not autopay[(third, c2)]  # at 00:30 of the third
    finally:
        owner.dispose()
        service.dispose()
        drop_pg_database(service_url)


def test_a_range_of_nights_bills_what_night_after_night_bills() -> None:
    """`create_bills_over` reads only the practices with eligible sessions on a night: the
    bills (with their sessions, lines and deliveries), steps done and figures equal those of
    the nights billed one after the other, over a month end (monthly practices bill) with a
    practice whose settings of one night were never resolved (not billed, flagged)."""
    service_url = create_pg_database(migrated=True)
    owner = make_engine(as_role(service_url, "postgres"))
    service = make_engine(service_url)
    last = date(2026, 11, 1)
    nights = [last - timedelta(days=d) for d in range(3, -1, -1)]  # Oct 29 .. Nov 1
    try:
        generate(owner, Size(accounts=8, sessions_per_night=20), last, history_days=6)
        with service.begin() as conn:
            accounts = list_accounts(conn)
            for night in nights:
                batch = [(a, cal.bills_instant(night, a.timezone)) for a in accounts]
                record_eligible_sessions_of_accounts(conn, batch, night)
                skipped = accounts[0].id if night == nights[1] else None
                practices = [
                    load_practices(conn, [a.id], at)[a.id] for a, at in batch if a.id != skipped
                ]
                record_resolved_settings_of(conn, practices, night)

        def done(ranged: bool) -> tuple[object, ...]:
            with service.connect() as conn:
                tx = conn.begin()
                accounts = list_accounts(conn)
                if ranged:
                    figures = create_bills_over(conn, accounts, nights, "run")
                else:
                    figures = []
                    for night in nights:
                        batch = []
                        for a in accounts:
                            at = cal.bills_instant(night, a.timezone)
                            batch.append((load_practices(conn, [a.id], at)[a.id], at))
                        figures += create_bills_of(conn, batch, night, "run")

                def rows(sql: str) -> list[tuple[object, ...]]:
                    return sorted(tuple(r) for r in conn.execute(text(sql)))

                found = (
                    rows(
                        "SELECT b.account_id, b.client_id, b.night, b.created_at, "
                        "b.amount_cents, b.status, string_agg(s.session_id, ',' ORDER BY "
                        "s.session_id) FROM bills b JOIN bill_sessions s ON s.bill_id = b.id "
                        "WHERE b.night >= '2026-10-29' GROUP BY b.id"
                    ),
                    rows(
                        "SELECT l.session_id, l.cpt, l.units, l.fee_cents, l.modifiers, "
                        "l.amount_cents FROM bill_lines l JOIN bills b ON b.id = l.bill_id "
                        "WHERE b.night >= '2026-10-29'"
                    ),
                    rows(
                        "SELECT d.document_type, d.account_id, d.client_id, d.night, "
                        "d.recipient, d.recipient_id, d.scheduled_at, d.wait_for_autopay "
                        "FROM deliveries d WHERE d.night >= '2026-10-29'"
                    ),
                    rows(
                        "SELECT account_id, night, step, completed_at, run_id FROM night_steps "
                        "WHERE step = 'bills'"
                    ),
                    [(f.account_id, f.night, dict(f.counts), f.amount_cents) for f in figures],
                )
                tx.rollback()
            return found

        night_by_night, ranged = done(False), done(True)
        assert ranged == night_by_night
        bills, _, deliveries, steps, figures = ranged
        assert {b[2] for b in bills} == set(nights)
        assert len(bills) > 100 and deliveries
        assert len(steps) == 8 * len(nights) - 1
        assert sum(f[2].get("eligible_sessions_not_listed", 0) for f in figures) == 1
    finally:
        owner.dispose()
        service.dispose()
        drop_pg_database(service_url)
