"""A night's steps for one account: eligible sessions, resolved settings, bills, superbills,
statements and their deliveries. Each function runs inside the caller's transaction and is
idempotent: run it twice, or beside another run, and nothing is made twice (the unique keys
refuse it and the caller retries the transaction, which then finds the work done)."""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from sqlalchemy import Connection

from billing_pipeline.db import models as m
from billing_pipeline.db import nightly as q
from billing_pipeline.db.eligibility import (
    Window,
    delete_nights,
    insert_decided,
    insert_decided_over,
    load_undecided,
    load_undecided_over,
    sql_decides,
)
from billing_pipeline.db.store import (
    accounts_changed_between,
    auto_bill_at,
    auto_bill_history,
    billed_session_ids,
    change_instants,
    listed_open_sessions,
    load_practices,
    load_sessions,
    load_sessions_of_accounts,
    services_changes,
)
from billing_pipeline.domain import calendar as cal
from billing_pipeline.domain.billing import bills_due, plan_bills
from billing_pipeline.domain.delivery import plan_delivery
from billing_pipeline.domain.documents import (
    StatementFacts,
    clients_needing_statements,
    plan_superbills,
    statement_month,
    superbill_month,
)
from billing_pipeline.domain.history import value_at
from billing_pipeline.domain.practice import AccountView, ClientView, Practice
from billing_pipeline.domain.schedule import STEP_RECORDS, Step
from billing_pipeline.domain.sessions import Session, needs_cpt_flag, why_not_eligible
from billing_pipeline.domain.settings import (
    AutopayDecision,
    DocumentType,
    autopay_decision,
    settings_warnings,
)

IMPORTED_MISSING_CPT = "imported_session_missing_cpt"
BILLS_NOT_MADE = "bills_not_made"
ELIGIBLE = "eligible_sessions"  # recorded in night_steps once the night's rows are written
RESOLVED = "resolved_settings"  # likewise: AutoPay charges by these rows
ELIGIBLE_NOT_LISTED = "eligible_sessions_not_listed"
SUPERBILLS, STATEMENTS = STEP_RECORDS[Step.BILLS][1:]


@dataclass
class NightFigures:
    """What one account's night did, for Dagster metadata (ids and numbers only)."""

    account_id: str
    night: date
    counts: Counter[str] = field(default_factory=Counter)
    amount_cents: int = 0
    ids: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n


def _by_zone(practices: Sequence[Practice]) -> dict[str, list[Practice]]:
    """Practices grouped by timezone, in their order: a zone's practices share the night's
    instants, so one query answers for all of them."""
    zones: dict[str, list[Practice]] = {}
    for p in practices:
        zones.setdefault(p.account.timezone, []).append(p)
    return zones


def _accounts_by_zone(accounts: Sequence[AccountView]) -> dict[str, list[AccountView]]:
    zones: dict[str, list[AccountView]] = {}
    for a in accounts:
        zones.setdefault(a.timezone, []).append(a)
    return zones


# {client id: (account id, the client's auto_bill as in force at the night's 00:00)}
AutoBill = Mapping[str, tuple[str, bool]]


def _auto_bill_of(practices: Sequence[Practice]) -> dict[str, tuple[str, bool]]:
    return {cid: (p.account.id, c.auto_bill) for p in practices for cid, c in p.clients.items()}


def eligible_for_nights(
    conn: Connection,
    practices: Sequence[Practice],
    night: date,
    *,
    undecided_only: bool = False,
) -> dict[str, tuple[list[Session], list[Session]]]:
    """{account id: (sessions this night bills, imported sessions without CPT codes it
    flags)}: the sessions of the night's look-back, with their services in force at the
    night's 00:00 (a CPT code added later is not seen by an earlier night). `undecided_only`:
    only the sessions that `db.eligibility.insert_decided` leaves to these rules."""
    accounts = [p.account for p in practices]
    return _eligible(conn, accounts, _auto_bill_of(practices), night, undecided_only)


def _eligible(
    conn: Connection,
    accounts: Sequence[AccountView],
    auto_bill: AutoBill,
    night: date,
    undecided_only: bool,
) -> dict[str, tuple[list[Session], list[Session]]]:
    found: dict[str, tuple[list[Session], list[Session]]] = {a.id: ([], []) for a in accounts}
    for tz, group in _accounts_by_zone(accounts).items():
        midnight = cal.bills_instant(night, tz)
        ids = [a.id for a in group]
        start = cal.start_of_day(cal.lookback_start(night), tz)
        if undecided_only:
            sessions = load_undecided(conn, ids, start, midnight, midnight)
        else:
            # A native session on a bill is neither billed again nor flagged: not read.
            sessions = load_sessions_of_accounts(
                conn, ids, start, midnight, at=midnight, leave_out_billed_native=True
            )
        billed = billed_session_ids(conn, [s.id for s in sessions])
        for s in sessions:
            account_id, bills_client = auto_bill[s.client_id]
            eligible, flagged = found[account_id]
            why = why_not_eligible(s, tz, night, auto_bill=bills_client, billed=s.id in billed)
            if why is None:
                eligible.append(s)
            if needs_cpt_flag(s, tz, night):
                flagged.append(s)
    return found


def _decided_in_sql(
    conn: Connection, accounts: Sequence[AccountView], night: date
) -> dict[str, tuple[int, int]]:
    """The common case's eligible sessions written by the database (`db.eligibility`), per
    zone: {account id: (rows, cents)}."""
    written: dict[str, tuple[int, int]] = {}
    for tz, group in _accounts_by_zone(accounts).items():
        start = cal.start_of_day(cal.lookback_start(night), tz)
        written.update(
            insert_decided(
                conn, [a.id for a in group], night, tz, start, cal.bills_instant(night, tz)
            )
        )
    return written


def eligible_for_night(
    conn: Connection, practice: Practice, night: date
) -> tuple[list[Session], list[Session]]:
    """(sessions this night bills, imported sessions without CPT codes it flags)."""
    return eligible_for_nights(conn, [practice], night)[practice.account.id]


def record_eligible_sessions(conn: Connection, practice: Practice, night: date) -> NightFigures:
    """Replace the night's eligible-session rows for the account and flag imported sessions
    without CPT codes (each flagged once, on the first night that meets it)."""
    return record_eligible_sessions_of(conn, [practice], night)[0]


def record_eligible_sessions_of(
    conn: Connection, practices: Sequence[Practice], night: date
) -> list[NightFigures]:
    """`record_eligible_sessions` for several practices in a few statements: one read of
    their sessions per zone, one DELETE and one INSERT of the rows, one of the flags."""
    accounts = [p.account for p in practices]
    return _record_eligible(conn, accounts, _auto_bill_of(practices), night)


def record_eligible_sessions_of_accounts(
    conn: Connection, batch: Sequence[tuple[AccountView, datetime]], night: date
) -> list[NightFigures]:
    """`record_eligible_sessions_of` reading of each practice (as of its instant in `batch`,
    the night's 00:00) only its clients' `auto_bill`, all that eligibility reads of it."""
    at_of: dict[datetime, list[str]] = {}
    for account, at in batch:
        at_of.setdefault(at, []).append(account.id)
    auto_bill: dict[str, tuple[str, bool]] = {}
    for at, ids in at_of.items():
        auto_bill.update(auto_bill_at(conn, ids, at))
    return _record_eligible(conn, [a for a, _ in batch], auto_bill, night)


def _record_eligible(
    conn: Connection, accounts: Sequence[AccountView], auto_bill: AutoBill, night: date
) -> list[NightFigures]:
    in_sql = sql_decides(conn)
    found = _eligible(conn, accounts, auto_bill, night, undecided_only=in_sql)
    rows: list[dict[str, object]] = []
    for account in accounts:
        rows.extend(
            _eligible_row(night, s, account.id, account.timezone) for s in found[account.id][0]
        )
    q.replace_rows(conn, m.EligibleSession, [a.id for a in accounts], night, rows)
    written = _decided_in_sql(conn, accounts, night) if in_sql else {}
    all_flagged = [s.id for a in accounts for s in found[a.id][1]]
    known = q.flagged_session_ids(conn, IMPORTED_MISSING_CPT, all_flagged)
    flags: list[dict[str, object]] = []
    out = []
    for account in accounts:
        eligible, flagged = found[account.id]
        figures, new_flags = _eligible_figures(
            account.id, night, eligible, flagged, known, written.get(account.id)
        )
        out.append(figures)
        flags.extend(new_flags)
    q.insert_flags(conn, flags)
    q.mark_steps(
        conn,
        [(a.id, cal.bills_instant(night, a.timezone)) for a in accounts],
        night,
        ELIGIBLE,
        None,
    )
    return out


def _eligible_row(night: date, s: Session, account_id: str, tz: str) -> dict[str, object]:
    """The `eligible_sessions` row of a session the night found billable."""
    return {
        "night": night,
        "session_id": s.id,
        "account_id": account_id,
        "client_id": s.client_id,
        "session_date": s.local_date(tz),
        "amount_cents": s.billable_amount_cents,
    }


def _eligible_figures(
    account_id: str,
    night: date,
    eligible: Sequence[Session],
    flagged: Sequence[Session],
    known: Collection[str],
    written: tuple[int, int] | None,
) -> tuple[NightFigures, list[dict[str, object]]]:
    """A practice's night of eligible sessions: its figures (with the rows and cents the
    database decided, `written`), and a flag row for each imported session without CPT codes
    not flagged before (`known`)."""
    new_flags = [s for s in flagged if s.id not in known]
    rows: list[dict[str, object]] = [
        {
            "check": IMPORTED_MISSING_CPT,
            "session_id": s.id,
            "account_id": account_id,
            "client_id": s.client_id,
            "first_night": night,
        }
        for s in new_flags
    ]
    in_db, cents = written or (0, 0)
    figures = NightFigures(account_id, night)
    figures.add("eligible_sessions", len(eligible) + in_db)
    figures.add("imported_sessions_missing_cpt", len(flagged))
    figures.add("new_flags", len(new_flags))
    figures.amount_cents = cents + sum(s.billable_amount_cents for s in eligible)
    figures.ids = [s.id for s in flagged]
    return figures, rows


def autopay_run_date(practice: Practice, night: date) -> date:
    """The local date on which the night's AutoPay runs (a card expires by it)."""
    tz = practice.account.timezone
    return cal.local_date(cal.autopay_instant(night, tz), tz)


def record_eligible_sessions_over(
    conn: Connection, accounts: Sequence[AccountView], nights: Sequence[date]
) -> list[NightFigures]:
    """`record_eligible_sessions_of_accounts` for many nights (a backfill's range, in order)
    on PostgreSQL, with the same rows, flags, steps done and figures as night after night,
    in a few statements for the whole range instead of a few per night and zone:

    - the sessions `db.eligibility` decides: every night's rows in one `INSERT ... SELECT`
      (`insert_decided_over`);
    - the others (imported, services changed, `auto_bill` switched) read once for the whole
      look-back of the range, with their services as created, every services change and every
      `auto_bill` change of their clients; each night then applies the Python rules
      (`why_not_eligible`, `needs_cpt_flag`) to the sessions of its window, with the services
      and `auto_bill` in force at its 00:00, as `record_eligible_sessions_of_accounts` does.

    Bills are not written by this step, so the billed sessions are the same for every night
    of the range: they are read once. A session is flagged on the first night of the range
    that meets it, unless flagged before. Figures: night by night, in the order of
    `accounts`."""
    if not accounts or not nights:
        return []
    nights = sorted(nights)
    ids = [a.id for a in accounts]
    windows: list[Window] = []
    for tz in _accounts_by_zone(accounts):
        for night in nights:
            start = cal.start_of_day(cal.lookback_start(night), tz)
            windows.append((night, tz, start, cal.bills_instant(night, tz)))
    delete_nights(conn, ids, nights)
    written = insert_decided_over(conn, ids, windows)
    first = min(w[2] for w in windows)
    last = max(w[3] for w in windows)
    undecided = load_undecided_over(conn, ids, first, last)
    changes = services_changes(conn, [s.id for s in undecided])
    billed = billed_session_ids(conn, [s.id for s in undecided])
    auto_bill = auto_bill_history(conn, ids)
    rows: list[dict[str, object]] = []
    found: dict[tuple[str, date], tuple[list[Session], list[Session]]] = {}
    for tz, group in _accounts_by_zone(accounts).items():
        in_zone = {a.id for a in group}
        sessions = [s for s in undecided if auto_bill[s.client_id][0] in in_zone]
        for night in nights:
            for a in group:
                found[(a.id, night)] = ([], [])
            start = cal.start_of_day(cal.lookback_start(night), tz)
            midnight = cal.bills_instant(night, tz)
            for as_created in sessions:
                if not start <= as_created.starts_at < midnight:
                    continue
                account_id, created, switched = auto_bill[as_created.client_id]
                history = changes.get(as_created.id)
                s = (
                    replace(as_created, services=value_at(as_created.services, history, midnight))
                    if history
                    else as_created
                )
                bills_client = value_at(created, switched, midnight) if switched else created
                eligible, flagged = found[(account_id, night)]
                why = why_not_eligible(s, tz, night, auto_bill=bills_client, billed=s.id in billed)
                if why is None:
                    eligible.append(s)
                    rows.append(_eligible_row(night, s, account_id, tz))
                if needs_cpt_flag(s, tz, night):
                    flagged.append(s)
    q.insert_eligible_rows(conn, rows)
    known = q.flagged_session_ids(
        conn, IMPORTED_MISSING_CPT, {s.id for e, f in found.values() for s in f}
    )
    flags: list[dict[str, object]] = []
    out = []
    for night in nights:
        for account in accounts:
            eligible, flagged = found[(account.id, night)]
            figures, new_flags = _eligible_figures(
                account.id, night, eligible, flagged, known, written.get((account.id, night))
            )
            out.append(figures)
            flags.extend(new_flags)
            known.update(s.id for s in flagged)  # flagged once, on its first night
    q.insert_flags(conn, flags)
    for night in nights:
        q.mark_steps(
            conn,
            [(a.id, cal.bills_instant(night, a.timezone)) for a in accounts],
            night,
            ELIGIBLE,
            None,
        )
    return out


def decide_autopay(
    practice: Practice, client: ClientView, night: date, run_date: date | None = None
) -> AutopayDecision:
    """`run_date`: `autopay_run_date(practice, night)`, when the caller has it already."""
    if run_date is None:
        run_date = autopay_run_date(practice, night)
    contact = practice.contact_of(client)
    return autopay_decision(
        account_autopay=practice.account.autopay_enabled,
        client=client.party(),
        billing_contact=contact.party() if contact else None,
        run_date=run_date,
    )


def record_resolved_settings(conn: Connection, practice: Practice, night: date) -> NightFigures:
    """Write each client's settings as this night applies them (`practice` as of its 00:00),
    with AutoPay's decision as of its 00:30 (the switches, contact and card in force then)."""
    return record_resolved_settings_of(conn, [practice], night)[0]


def record_resolved_settings_of(
    conn: Connection,
    practices: Sequence[Practice],
    night: date,
    loaded_at: Mapping[str, datetime] | None = None,
) -> list[NightFigures]:
    """`record_resolved_settings` for several practices: each read again as of its 00:30
    (five queries per zone), one DELETE and one INSERT of all their rows. `loaded_at`: the
    instant each practice was read as of; one with no change in force from an instant between
    it and 00:30 is the same practice then, and is not read again."""
    at_autopay: dict[str, Practice] = {}
    for tz, group in _by_zone(practices).items():
        autopay_at = cal.autopay_instant(night, tz)
        again = [p.account.id for p in group]
        if loaded_at is not None:
            same = [p for p in group if loaded_at.get(p.account.id, autopay_at) < autopay_at]
            since = min((loaded_at[p.account.id] for p in same), default=autopay_at)
            changed = accounts_changed_between(
                conn, [p.account.id for p in same], since, autopay_at
            )
            at_autopay.update({p.account.id: p for p in same if p.account.id not in changed})
            again = [a for a in again if a not in at_autopay]
        at_autopay.update(load_practices(conn, again, autopay_at))
    rows, out = _resolved_rows(practices, at_autopay, night)
    q.replace_rows(conn, m.ResolvedSettings, [p.account.id for p in practices], night, rows)
    q.mark_steps(
        conn,
        [(p.account.id, cal.bills_instant(night, p.account.timezone)) for p in practices],
        night,
        RESOLVED,
        None,
    )
    return out


def record_resolved_settings_over(
    conn: Connection, accounts: Sequence[AccountView], nights: Sequence[date]
) -> list[NightFigures]:
    """`record_resolved_settings_of` for many nights (a backfill's range, in order), each
    practice read as of each night's 00:00 and AutoPay's 00:30 as there, but read again only
    when a change takes effect between the instant it was last read as of and the next one
    (`store.change_instants`: one query for the range): a practice's read depends on its
    instant only through the changes in force then (`load_practices`). The rows, steps done
    and figures are those of the nights done one after the other."""
    if not accounts or not nights:
        return []
    nights = sorted(nights)
    ids = [a.id for a in accounts]
    zones = _accounts_by_zone(accounts)
    earliest = min(cal.bills_instant(nights[0], tz) for tz in zones)
    latest = max(cal.autopay_instant(nights[-1], tz) for tz in zones)
    changes_at = change_instants(conn, ids, earliest, latest)
    held: dict[str, tuple[Practice, datetime]] = {}

    def as_of(group: Sequence[AccountView], at: datetime) -> dict[str, Practice]:
        again = []
        for a in group:
            found = held.get(a.id)
            if found is None or found[1] > at or _changed(changes_at.get(a.id, []), found[1], at):
                again.append(a.id)
            else:
                held[a.id] = (found[0], at)  # the same practice at `at`
        held.update({a: (p, at) for a, p in load_practices(conn, again, at).items()})
        return {a.id: held[a.id][0] for a in group}

    # A practice's rows are a function of the practice at 00:00, at 00:30 and the month of
    # AutoPay's run date (a card is good through its expiry month): while these stay the
    # same objects and month, the night's rows are the last ones with the night changed.
    last: dict[str, tuple[Practice, Practice, tuple[int, int], list[dict[str, object]]]] = {}
    last_figures: dict[str, NightFigures] = {}
    out: list[NightFigures] = []
    for night in nights:
        at_midnight: dict[str, Practice] = {}
        at_autopay: dict[str, Practice] = {}
        for tz, group in zones.items():
            at_midnight.update(as_of(group, cal.bills_instant(night, tz)))
            at_autopay.update(as_of(group, cal.autopay_instant(night, tz)))
        rows: list[dict[str, object]] = []
        figures: list[NightFigures] = []
        for a in ids:
            midnight, autopay = at_midnight[a], at_autopay[a]
            run_date = autopay_run_date(autopay, night)
            month = (run_date.year, run_date.month)
            held_rows = last.get(a)
            if (
                held_rows is not None
                and held_rows[0] is midnight
                and held_rows[1] is autopay
                and held_rows[2] == month
            ):
                mine = [{**r, "night": night} for r in held_rows[3]]
                was = last_figures[a]
                one = NightFigures(a, night, Counter(was.counts), was.amount_cents, list(was.ids))
            else:
                mine, [one] = _resolved_rows([midnight], {a: autopay}, night)
            last[a] = (midnight, autopay, month, mine)
            last_figures[a] = one
            rows.extend(mine)
            figures.append(one)
        q.replace_rows(conn, m.ResolvedSettings, ids, night, rows)
        q.mark_steps(
            conn,
            [(a.id, cal.bills_instant(night, a.timezone)) for a in accounts],
            night,
            RESOLVED,
            None,
        )
        out.extend(figures)
    return out


def _changed(instants: Sequence[datetime], after: datetime, upto: datetime) -> bool:
    """Whether one of these instants (in order) falls in (after, upto]."""
    i = bisect_right(instants, after)
    return i < len(instants) and instants[i] <= upto


def _resolved_rows(
    practices: Sequence[Practice], at_autopay: Mapping[str, Practice], night: date
) -> tuple[list[dict[str, object]], list[NightFigures]]:
    """The night's `resolved_settings` rows of these practices (as of 00:00) and their
    figures, with AutoPay's decision taken on the practice as of 00:30."""
    rows: list[dict[str, object]] = []
    out = []
    for practice in practices:
        account = practice.account
        figures = NightFigures(account.id, night)
        later = at_autopay[account.id]
        run_date = autopay_run_date(later, night)  # one per practice, not per client
        n = 0
        for client in practice.clients.values():
            decision = decide_autopay(later, later.clients[client.id], night, run_date)
            rows.append(
                {
                    "night": night,
                    "client_id": client.id,
                    "account_id": account.id,
                    "bill_creation": account.bill_creation.value,
                    "auto_bill": client.auto_bill,
                    "superbills_enabled": client.superbills_enabled,
                    "autopay_runs": decision.runs,
                    "autopay_reason": decision.reason.value,
                    "payer": decision.payer_kind,
                    "payer_id": decision.payer.id,
                    "payer_payment_method_id": decision.card.payment_method_id
                    if decision.card
                    else None,
                    **client.sharing.as_dict(),
                }
            )
            n += 1
            figures.add(f"autopay_{decision.reason.value}")
            warnings = settings_warnings(
                client_id=client.id,
                bill_creation=account.bill_creation,
                account_autopay=account.autopay_enabled,
                client_autopay=client.autopay_enabled,
                sharing=client.sharing,
            )
            figures.add("settings_warnings", len(warnings))
            figures.ids.extend(w.client_id for w in warnings)
        figures.add("clients", n)
        out.append(figures)
    return rows, out


def _planned_delivery(
    practice: Practice,
    client: ClientView,
    kind: DocumentType,
    document_id: int,
    night: date,
    created_at: datetime,
) -> dict[str, object] | None:
    """The delivery row of a new document, or None when it is not shared."""
    planned = plan_delivery(
        kind,
        created_at,
        client.sharing,
        has_billing_contact=client.billing_contact_id is not None,
        autopay_at=cal.autopay_instant(night, practice.account.timezone),
    )
    if planned is None:
        return None
    return {
        "document_type": kind.value,
        "document_id": document_id,
        "account_id": practice.account.id,
        "client_id": client.id,
        "night": night,
        "recipient": planned.recipient,
        "recipient_id": client.billing_contact_id or client.id,
        "scheduled_at": planned.scheduled_at,
        "wait_for_autopay": planned.wait_for_autopay,
    }


def _queue_delivery(
    conn: Connection,
    practice: Practice,
    client: ClientView,
    kind: DocumentType,
    document_id: int,
    night: date,
    created_at: datetime,
) -> bool:
    row = _planned_delivery(practice, client, kind, document_id, night, created_at)
    if row is None:
        return False
    q.insert_delivery(conn, **row)
    return True


def create_bills(
    conn: Connection,
    practice: Practice,
    night: date,
    created_at: datetime,
    run_id: str | None = None,
) -> NightFigures:
    """Bill the sessions of the night's `eligible_sessions` rows (its input: eligibility is
    decided there, once), daily or monthly at month end, leaving out any that a bill took
    since (an earlier night of the same run, or another run); queue each bill's delivery in
    the same transaction, then mark the night's bills step done."""
    return create_bills_of(conn, [(practice, created_at)], night, run_id)[0]


def create_bills_of(
    conn: Connection,
    practices: Sequence[tuple[Practice, datetime]],
    night: date,
    run_id: str | None = None,
) -> list[NightFigures]:
    """`create_bills` for several practices (each with its bills instant): a few statements
    for all of them, whatever their number of bills. Reads no card (the bills asset reads
    the practices without them)."""
    ids = [p.account.id for p, _ in practices]
    done = q.steps_done(conn, ids, night, [ELIGIBLE, RESOLVED])
    ready = [
        (p, at)
        for p, at in practices
        if (p.account.id, ELIGIBLE) in done and (p.account.id, RESOLVED) in done
    ]
    # A practice that bills nothing tonight (monthly before month end, manual) plans no bill:
    # its listed sessions are not read.
    due = [p for p, _ in ready if bills_due(p.account.bill_creation, night)]
    sessions: dict[str, list[Session]] = {p.account.id: [] for p, _ in ready}
    for tz, group in _by_zone(due).items():
        # The listed sessions on no bill yet, with their services as in force at the bills'
        # instant, as eligibility read them.
        sessions.update(
            listed_open_sessions(
                conn, [p.account.id for p in group], night, cal.bills_instant(night, tz)
            )
        )
    new = [
        q.NewBill(p.account.id, at, bill)
        for p, at in ready
        for bill in plan_bills(p.account.bill_creation, night, sessions[p.account.id])
    ]
    # All the bills, then all their deliveries: a few statements, not four per bill.
    bill_ids = q.insert_bills(conn, night, new)
    by_id = {p.account.id: p for p, _ in practices}
    figures = {a: NightFigures(a, night) for a in ids}
    deliveries = []
    for bill_id, made in zip(bill_ids, new, strict=True):
        practice = by_id[made.account_id]
        f = figures[made.account_id]
        f.add("bills")
        f.amount_cents += made.bill.amount_cents
        f.ids.append(str(bill_id))
        client = practice.clients[made.bill.client_id]
        row = _planned_delivery(
            practice, client, DocumentType.BILL, bill_id, night, made.created_at
        )
        if row is not None:
            deliveries.append(row)
            f.add("deliveries_queued")
    q.insert_deliveries(conn, deliveries)
    ready_ids = {p.account.id for p, _ in ready}
    for practice, _ in practices:
        if practice.account.id not in ready_ids:
            # The night's eligible sessions or settings were not written (that step failed
            # for the practice): nothing is billed and the step is not done, so it runs again.
            figures[practice.account.id].add(ELIGIBLE_NOT_LISTED)
    q.mark_steps(conn, [(p.account.id, at) for p, at in ready], night, Step.BILLS, run_id)
    return [figures[a] for a in ids]


def create_bills_over(
    conn: Connection,
    accounts: Sequence[AccountView],
    nights: Sequence[date],
    run_id: str | None = None,
) -> list[NightFigures]:
    """`create_bills_of` for many nights (a backfill's range, in order, in the caller's
    transaction: a night's bills are seen by the next one), reading as of each night's 00:00
    (without cards) only the practices with `eligible_sessions` rows that night: one without
    plans no bill whatever its settings, and its night is what `create_bills_of` does for it
    (the step marked done once the night's eligible sessions and settings are, else the
    figure `eligible_sessions_not_listed`)."""
    out: list[NightFigures] = []
    for night in sorted(nights):
        listed = q.accounts_listed(conn, [a.id for a in accounts], night)
        figures: dict[str, NightFigures] = {}
        for tz, group in _accounts_by_zone([a for a in accounts if a.id in listed]).items():
            at = cal.bills_instant(night, tz)
            practices = load_practices(
                conn, [a.id for a in group], at, cards=False, listed_on=night
            )
            made = create_bills_of(conn, [(practices[a.id], at) for a in group], night, run_id)
            figures.update({f.account_id: f for f in made})
        rest = [a for a in accounts if a.id not in listed]
        done = q.steps_done(conn, [a.id for a in rest], night, [ELIGIBLE, RESOLVED])
        ready = []
        for a in rest:
            figures[a.id] = NightFigures(a.id, night)
            if (a.id, ELIGIBLE) in done and (a.id, RESOLVED) in done:
                ready.append((a.id, cal.bills_instant(night, a.timezone)))
            else:
                figures[a.id].add(ELIGIBLE_NOT_LISTED)
        q.mark_steps(conn, ready, night, Step.BILLS, run_id)
        out.extend(figures[a.id] for a in accounts)
    return out


def create_superbills(
    conn: Connection, practice: Practice, night: date, created_at: datetime
) -> NightFigures:
    """On the superbill day, one superbill per client with superbills on, for last month.
    Only once the night's bills are made (the 00:00 step goes in order), then recorded done."""
    figures = NightFigures(practice.account.id, night)
    if not q.step_done(conn, practice.account.id, night, Step.BILLS):
        figures.add(BILLS_NOT_MADE)
        return figures
    q.mark_step(conn, practice.account.id, night, SUPERBILLS, created_at, None)
    month = superbill_month(night, practice.account.superbill_day_of_month)
    if month is None:
        return figures
    tz = practice.account.timezone
    start, end = cal.month_bounds(*month, tz)
    enabled = [c for c in practice.clients.values() if c.superbills_enabled]
    by_client: dict[str, list[Session]] = {}
    for s in load_sessions(conn, [c.id for c in enabled], start, end, at=created_at):
        by_client.setdefault(s.client_id, []).append(s)
    existing = q.clients_with_document(
        conn, m.Superbill, practice.account.id, cal.month_key(*month)
    )
    planned = plan_superbills(by_client, {c.id: c.superbills_enabled for c in enabled}, tz, month)
    for sb in planned:
        if sb.client_id in existing:
            continue
        sb_id = q.insert_superbill(
            conn, practice.account.id, sb.client_id, sb.month, night, created_at, sb.session_ids
        )
        figures.add("superbills")
        figures.ids.append(str(sb_id))
        client = practice.clients[sb.client_id]
        if _queue_delivery(
            conn, practice, client, DocumentType.SUPERBILL, sb_id, night, created_at
        ):
            figures.add("deliveries_queued")
    return figures


def create_statements(
    conn: Connection, practice: Practice, night: date, created_at: datetime
) -> NightFigures:
    """At 00:00 on the 1st: a statement for last month for each client with a bill or a
    payment in it, or an open balance now (after this night's bills, which must be made: the
    step is then recorded done)."""
    figures = NightFigures(practice.account.id, night)
    if not q.step_done(conn, practice.account.id, night, Step.BILLS):
        figures.add(BILLS_NOT_MADE)
        return figures
    q.mark_step(conn, practice.account.id, night, STATEMENTS, created_at, None)
    month = statement_month(night)
    client_ids = list(practice.clients)
    if month is None or not client_ids:
        return figures
    start, end = cal.month_bounds(*month, practice.account.timezone)
    bills = q.bills_made_in(conn, client_ids, start, end)
    payments = q.payments_made_in(conn, client_ids, start, end)
    balances = q.open_balance_at(conn, client_ids, created_at)
    facts = [
        StatementFacts(cid, bills.get(cid, 0), payments.get(cid, 0), balances.get(cid, 0))
        for cid in client_ids
    ]
    month_text = cal.month_key(*month)
    existing = q.clients_with_document(conn, m.Statement, practice.account.id, month_text)
    for client_id in clients_needing_statements(facts):
        if client_id in existing:
            continue
        st_id = q.insert_statement(
            conn,
            practice.account.id,
            client_id,
            month_text,
            night,
            created_at,
            balances.get(client_id, 0),
        )
        figures.add("statements")
        figures.ids.append(str(st_id))
        client = practice.clients[client_id]
        if _queue_delivery(
            conn, practice, client, DocumentType.STATEMENT, st_id, night, created_at
        ):
            figures.add("deliveries_queued")
    return figures


def release_deliveries(conn: Connection, account_id: str, night: date) -> NightFigures:
    """After the night's AutoPay: bills held for it may now be shared. If that AutoPay did not
    run (it failed, or was skipped), they stay held: a bill is never shared before AutoPay."""
    return release_deliveries_of(conn, [account_id], night)[0]


def release_deliveries_of(
    conn: Connection, account_ids: Sequence[str], night: date
) -> list[NightFigures]:
    """`release_deliveries` for several practices in four statements."""
    done = q.steps_done(conn, account_ids, night, [Step.AUTOPAY])
    ran = [a for a in account_ids if (a, str(Step.AUTOPAY)) in done]
    held = q.held_deliveries_of(conn, [a for a in account_ids if a not in ran], night)
    released = q.release_held_deliveries_of(conn, ran, night)
    kinds = q.deliveries_by_type_of(conn, ran, night)
    out = []
    for account_id in account_ids:
        figures = NightFigures(account_id, night)
        if account_id not in released:
            figures.add("held_autopay_not_run", held[account_id])
        else:
            figures.add("released_after_autopay", released[account_id])
            for kind, n in kinds[account_id].items():
                figures.add(f"{kind}_deliveries", n)
        out.append(figures)
    return out
