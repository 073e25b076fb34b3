"""Synthetic practices for the scale bench, written in bulk (PostgreSQL COPY).

A size is a number of practices and sessions per practice and night. Each practice has a
timezone from a mix of zones, a bill creation (mostly daily, some monthly, a few manual), about
2.5 clients per nightly session (seen a couple of times a week), clinicians seeing about 20
sessions a week, some billing contacts, cards on 40 % of clients (some that decline, some
expired), a few settings changed over time (`setting_changes`), cancelled and no-show
sessions, and imported history without CPT codes. The days before the bench night are already
billed for daily practices (their sessions are on bills), as a production database would be;
monthly and manual practices' sessions stay open, so their eligible lists grow as in
production.

Data never goes through the scenario loader: that is row by row and registers cards in Stripe.
The rows are made in Python (seeded, deterministic) and copied in with COPY FROM STDIN.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

ZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Phoenix",
    "America/Anchorage",
    "Pacific/Honolulu",
    "Europe/London",
    "Asia/Kolkata",
    "Australia/Sydney",
)
CPT_FEES = (("90834", 15000), ("90837", 18000), ("90791", 20000), ("90847", 16000))


@dataclass(frozen=True)
class Size:
    accounts: int
    sessions_per_night: int  # per practice


SIZES = {
    "practice": Size(accounts=1, sessions_per_night=100),
    "group": Size(accounts=50, sessions_per_night=100),
    "ehr": Size(accounts=2000, sessions_per_night=50),
}


@dataclass(frozen=True)
class Generated:
    accounts: int
    clients: int
    sessions: int
    night_sessions: int
    billed_history: int
    setting_changes: int


def _naive_utc(d: date, t: time, tz: str) -> datetime:
    return datetime.combine(d, t, ZoneInfo(tz)).astimezone(UTC).replace(tzinfo=None)


class _Tables:
    """Rows per table, each a list of tuples in the COPY's column order."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {}

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        self.rows.setdefault(table, []).append(row)


COLUMNS: dict[str, Sequence[str]] = {
    "accounts": (
        "id",
        "name",
        "timezone",
        "bill_creation",
        "superbill_day_of_month",
        "autopay_enabled",
    ),
    "account_sharing_defaults": (
        "account_id",
        "effective_at",
        "share_bills",
        "bill_delay_minutes",
        "share_superbills",
        "superbill_delay_minutes",
        "share_statements",
        "statement_delay_minutes",
    ),
    "payment_methods": (
        "id",
        "account_id",
        "owner_type",
        "owner_id",
        "stripe_customer_id",
        "stripe_payment_method_id",
        "brand",
        "last4",
        "exp_month",
        "exp_year",
        "created_at",
        "fingerprint",
    ),
    "billing_contacts": ("id", "account_id", "name", "email", "autopay_enabled"),
    "clients": (
        "id",
        "account_id",
        "name",
        "email",
        "created_at",
        "billing_contact_id",
        "payment_method_id",
        "auto_bill",
        "superbills_enabled",
        "autopay_enabled",
        "share_bills",
        "bill_delay_minutes",
        "share_superbills",
        "superbill_delay_minutes",
        "share_statements",
        "statement_delay_minutes",
    ),
    "setting_changes": (
        "account_id",
        "subject",
        "subject_id",
        "field",
        "value",
        "effective_at",
        "recorded_at",
    ),
    "sessions": ("id", "client_id", "starts_at", "status", "source", "place_of_service"),
    "session_services": ("session_id", "position", "cpt", "units", "fee_cents", "modifiers"),
    "bills": ("id", "account_id", "client_id", "night", "created_at", "amount_cents", "status"),
    "bill_sessions": ("session_id", "bill_id"),
    "bill_lines": (
        "bill_id",
        "session_id",
        "cpt",
        "units",
        "fee_cents",
        "modifiers",
        "amount_cents",
    ),
}
# Parents first (foreign keys).
ORDER = (
    "accounts",
    "account_sharing_defaults",
    "payment_methods",
    "billing_contacts",
    "clients",
    "setting_changes",
    "sessions",
    "session_services",
    "bills",
    "bill_sessions",
    "bill_lines",
)


def _practice(
    tables: _Tables,
    rng: random.Random,
    a: int,
    size: Size,
    night: date,
    history_days: int,
    billed_cadences: Collection[str] = ("daily",),
) -> tuple[int, int, int, int]:
    """One practice's rows; (clients, sessions, billed history sessions, setting changes)."""
    account_id = f"acct-{a:05d}"
    tz = ZONES[a % len(ZONES)]
    roll = rng.random()
    bill_creation = "daily" if roll < 0.8 else "monthly" if roll < 0.95 else "manual"
    created = datetime(2024, 1, 1, 12)  # naive UTC, as stored
    tables.add(
        "accounts",
        (account_id, f"Practice {a}", tz, bill_creation, 1 + a % 28, rng.random() < 0.9),
    )
    tables.add("account_sharing_defaults", (account_id, created, True, 60, True, 60, True, 60))
    n_clients = max(1, round(size.sessions_per_night * 2.5))
    clients: list[str] = []
    changes = 0
    contacts: list[str] = []
    for c in range(n_clients):
        client_id = f"cl-{a:05d}-{c:05d}"
        clients.append(client_id)
        contact_id = None
        if rng.random() < 0.08:
            contact_id = f"bc-{a:05d}-{c:05d}"
            contacts.append(contact_id)
            tables.add(
                "billing_contacts",
                (contact_id, account_id, "Contact", "contact@example.invalid", True),
            )
        card_id = None
        if rng.random() < 0.4:
            card_id = f"pm-{a:05d}-{c:05d}"
            declines = rng.random() < 0.05
            expired = rng.random() < 0.03
            tables.add(
                "payment_methods",
                (
                    card_id,
                    account_id,
                    "client",
                    client_id,
                    f"cus_bench{a}x{c}",
                    "pm_card_chargeDeclined" if declines else "pm_card_visa",
                    "visa",
                    "0002" if declines else "4242",
                    12,
                    2024 if expired else 2030,
                    created,
                    f"fp{a}x{c}",
                ),
            )
        autopay = card_id is not None and rng.random() < 0.8
        tables.add(
            "clients",
            (
                client_id,
                account_id,
                "Client",
                "client@example.invalid",
                created,
                contact_id,
                card_id,
                rng.random() < 0.95,
                rng.random() < 0.2,
                autopay,
                True,
                rng.choice((0, 60, 120)),
                True,
                60,
                True,
                60,
            ),
        )
        if rng.random() < 0.03:  # AutoPay switched some days before the night
            when = _naive_utc(night - timedelta(days=rng.randint(1, 20)), time(15), tz)
            tables.add(
                "setting_changes",
                (
                    account_id,
                    "client",
                    client_id,
                    "autopay_enabled",
                    json.dumps(not autopay),
                    when,
                    when,
                ),
            )
            changes += 1
    sessions = billed = 0
    clinicians = max(1, size.sessions_per_night * 5 // 20)  # ~20 sessions a week each
    for back in range(history_days, -1, -1):
        day = night - timedelta(days=back)
        for s in range(size.sessions_per_night):
            session_id = f"s-{a:05d}-{day:%m%d}-{s:04d}"
            client_id = clients[rng.randrange(len(clients))]
            starts = _naive_utc(day, time(8 + (s % clinicians) % 11, rng.choice((0, 30))), tz)
            roll = rng.random()
            status = "attended" if roll < 0.92 else "cancelled" if roll < 0.97 else "no_show"
            imported = back > 0 and rng.random() < 0.02
            tables.add(
                "sessions",
                (session_id, client_id, starts, status, "imported" if imported else "native", "11"),
            )
            sessions += 1
            cpt, fee = CPT_FEES[rng.randrange(len(CPT_FEES))]
            tables.add(
                "session_services",
                (session_id, 0, None if imported else cpt, 1, fee, ""),
            )
            # Earlier nights already ran (for daily practices): their sessions are billed.
            billed_before = back > 0 and bill_creation in billed_cadences
            if billed_before and status == "attended" and not imported:
                bill_id = len(tables.rows.get("bills", ())) + 1
                at = _naive_utc(day + timedelta(days=1), time(0), tz)
                tables.add("bills", (bill_id, account_id, client_id, day, at, fee, "open"))
                tables.add("bill_sessions", (session_id, bill_id))
                tables.add("bill_lines", (bill_id, session_id, cpt, 1, fee, "", fee))
                billed += 1
    return len(clients), sessions, billed, changes


def _copy(raw: Any, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow(["\\N" if v is None else v for v in row])
    buf.seek(0)
    cursor = raw.cursor()
    cursor.copy_expert(
        f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buf
    )
    cursor.close()


def generate(
    engine: Engine,
    size: Size,
    night: date,
    *,
    history_days: int = 7,
    seed: int = 12,
    billed_cadences: Collection[str] = ("daily",),
) -> Generated:
    """Write `size`'s practices into an empty, migrated PostgreSQL database (a superuser or
    the owner's login: COPY into tables under row-level security needs one). The days before
    the night are billed for the practices of `billed_cadences` (bill creation), as if their
    nights had run; the others' sessions stay open."""
    rng = random.Random(seed)
    totals = [0, 0, 0, 0]
    raw = engine.raw_connection()
    try:
        # Practices in batches of 100 (fewer with a longer history): memory stays bounded by
        # a batch, not the size.
        per_batch = max(1, 700 // max(history_days, 7))
        for first in range(0, size.accounts, per_batch):
            tables = _Tables()
            offset = _next_bill_id(raw)
            for a in range(first, min(first + per_batch, size.accounts)):
                done = _practice(tables, rng, a, size, night, history_days, billed_cadences)
                totals = [x + y for x, y in zip(totals, done, strict=True)]
            for table in ORDER:
                rows = tables.rows.get(table, [])
                if table in ("bills", "bill_sessions", "bill_lines"):
                    rows = [_shift_bill_id(table, r, offset) for r in rows]
                _copy(raw, table, COLUMNS[table], rows)
            raw.commit()
        cursor = raw.cursor()
        cursor.execute("SELECT setval('bills_id_seq', (SELECT coalesce(max(id), 1) FROM bills))")
        raw.commit()
        cursor.execute("ANALYZE")
        raw.commit()
        cursor.close()
    finally:
        raw.close()
    clients, sessions, billed, changes = totals
    return Generated(
        size.accounts,
        clients,
        sessions,
        size.accounts * size.sessions_per_night,
        billed,
        changes,
    )


def _next_bill_id(raw: Any) -> int:
    cursor = raw.cursor()
    cursor.execute("SELECT coalesce(max(id), 0) FROM bills")
    found = int(cursor.fetchone()[0])
    cursor.close()
    return found


def _shift_bill_id(table: str, row: tuple[Any, ...], offset: int) -> tuple[Any, ...]:
    if table == "bills":
        return (row[0] + offset, *row[1:])
    if table == "bill_sessions":
        return (row[0], row[1] + offset)
    return (row[0] + offset, *row[1:])
