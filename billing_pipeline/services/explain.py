"""`billing-pipeline explain CLIENT_ID`: a client's settings on a night, and why each decision
falls the way it does, in words a practice manager understands. This is CLI output for staff,
so it may use short names; nothing here goes to logs or Dagster."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, select

from billing_pipeline.db import models as m
from billing_pipeline.db.autopay import AttemptForStaff, attempt_history, attempts_for_staff
from billing_pipeline.db.guard import hold_of
from billing_pipeline.db.store import (
    ACCOUNT,
    ACCOUNT_FIELDS,
    BILLING_CONTACT,
    CLIENT,
    CLIENT_FIELDS,
    CONTACT_FIELDS,
    SWITCH_DEFAULTS,
    billed_session_ids,
    defaults_history_of,
    field_history,
    load_practice,
    load_sessions,
)
from billing_pipeline.domain import calendar as cal
from billing_pipeline.domain.autopay import (
    MAX_DECLINES_IN_A_ROW,
    RETRY_WORDS,
    Outcome,
    PastAttempt,
    RetryBlock,
    Unsent,
    declines_in_a_row,
    retry_block,
)
from billing_pipeline.domain.billing import bills_due
from billing_pipeline.domain.documents import statement_month, superbill_month
from billing_pipeline.domain.history import Origin, sourced_value
from billing_pipeline.domain.money import dollars
from billing_pipeline.domain.sessions import INELIGIBLE_WORDS, needs_cpt_flag, why_not_eligible
from billing_pipeline.domain.settings import (
    BillCreation,
    DocumentType,
    defaults_at,
    settings_warnings,
    short_name,
)
from billing_pipeline.services.guard import hold_words
from billing_pipeline.services.nightly import decide_autopay

# Why an attempt is still pending (the code we noted) or ended as an error, for staff.
UNKNOWN_WORDS = {
    "stripe_unreachable": "Stripe did not answer in time",
    "stripe_server_error": "Stripe answered with a server error",
    "rate_limited": "Stripe asked us to slow down (429)",
    "stripe_processing": "Stripe is still processing the payment",
}
NOT_SENT_WORDS = {
    Unsent.AUTOPAY_NO_LONGER_RUNS.value: "AutoPay no longer runs for this client",
    Unsent.PAYMENT_METHOD_CHANGED.value: "the payment method changed since",
    Unsent.BALANCE_CHANGED.value: "the bills it covered changed since",
}


def _attempt_words(a: AttemptForStaff, declines: int, payment_method_now: str | None) -> str:
    """Why one AutoPay attempt ended as it did, in words for staff."""
    card = f"the {a.brand} card ending {a.last4}"
    code = a.failure_code
    if a.status == "succeeded":
        return f"charged successfully on {card}; the bills it covered are paid"
    if a.status == "declined":
        then = (
            "AutoPay stops charging this card until the payment method is replaced"
            if declines >= MAX_DECLINES_IN_A_ROW
            else "AutoPay tries again on the next night while a balance remains"
        )
        return (
            f"declined by the card issuer ({code or 'card_declined'}) on {card}; decline "
            f"{declines} of {MAX_DECLINES_IN_A_ROW} in a row on this card, so {then}"
        )
    if a.status == "requires_action":
        words = (
            f"the bank asked for the cardholder's authentication on {card}, which AutoPay "
            "cannot give while nobody is there; it is not retried until the payment method "
            "is replaced"
        )
        if payment_method_now and payment_method_now != a.payment_method_id:
            words += " (it has been replaced since)"
        return words
    if a.status == "pending":
        why = UNKNOWN_WORDS.get(code or "", "the run that sent it stopped, or is still running")
        return (
            f"outcome not known yet ({why}); the next run asks Stripe before anything is "
            "charged again"
        )
    # error
    if code in NOT_SENT_WORDS:
        return (
            "Stripe never received it (Stripe did not answer, or the run stopped first) and it "
            f"was not sent again because {NOT_SENT_WORDS[code]}; no money moved"
        )
    if code == "payment_intent_canceled":
        return "the payment was canceled in Stripe; no money moved"
    return f"Stripe refused the request ({code or 'unknown'}); no money moved"


class UnknownClient(LookupError):
    pass


def _minutes(n: int) -> str:
    if n == 0:
        return "as soon as they are made"
    if n % 60 == 0:
        hours = n // 60
        return f"{hours} hour{'s' if hours != 1 else ''} after they are made"
    return f"{n} minutes after they are made"


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."


def explain(conn: Connection, client_id: str, night: date | None = None) -> str:
    row = conn.execute(select(m.Client.__table__).where(m.Client.id == client_id)).first()
    if row is None:
        raise UnknownClient(f"client_id: no client {client_id!r} in the billing database")
    account_row = conn.execute(
        select(m.Account.__table__).where(m.Account.id == row.account_id)
    ).one()
    tz = account_row.timezone
    if night is None:
        night = cal.local_date(datetime.now(UTC), tz) - timedelta(days=1)
    # Settings are history: the night's bills read them at 00:00, its AutoPay at 00:30.
    bills_at, autopay_at = cal.bills_instant(night, tz), cal.autopay_instant(night, tz)
    practice = load_practice(conn, row.account_id, bills_at)
    at_autopay = load_practice(conn, row.account_id, autopay_at)
    account = practice.account
    client = practice.clients[client_id]
    contact_row = None
    contact_id = client.billing_contact_id or at_autopay.clients[client_id].billing_contact_id
    if contact_id:
        contact_row = conn.execute(
            select(m.BillingContact.__table__).where(m.BillingContact.id == contact_id)
        ).one()
    who = short_name(row.name)
    lines = [
        f"Client {client_id} ({who}) at {account_row.name}, night of {night.isoformat()} "
        f"(times in {tz}; bills at 00:00 and AutoPay at 00:30 on {night + timedelta(days=1)})",
        "",
    ]

    creation = account.bill_creation
    due = bills_due(creation, night)
    creation_words = {
        BillCreation.DAILY: "daily: every night bills that day's sessions, one bill each",
        BillCreation.MONTHLY: "monthly: one bill per client on the last night of the month",
        BillCreation.MANUAL: "manual: staff create bills by hand; automation makes none",
    }[creation]
    lines.append(f"Bill creation: {creation_words} (a practice setting; no client can change it).")
    if creation != BillCreation.MANUAL:
        lines.append(f"  This night {'makes bills' if due else 'makes no bills'}.")
    lines.append(
        "Automatic bills: "
        + (
            "on: the client's sessions are billed automatically."
            if client.auto_bill
            else "off: this client is left out of automatic bills."
        )
    )

    # Sessions the night meets
    sessions = load_sessions(
        conn,
        [client_id],
        cal.start_of_day(cal.lookback_start(night), tz),
        bills_at,
        at=bills_at,
    )
    billed = billed_session_ids(conn, [s.id for s in sessions])
    bill_of = (
        dict(
            conn.execute(
                select(m.BillSession.session_id, m.Bill.night)
                .join(m.Bill, m.Bill.id == m.BillSession.bill_id)
                .where(m.BillSession.session_id.in_(list(billed)))
            ).all()
        )
        if billed
        else {}
    )
    if sessions:
        lines.append("Sessions this night looks at (the 90 days up to the night):")
    for s in sessions:
        reason = why_not_eligible(s, tz, night, auto_bill=client.auto_bill, billed=s.id in billed)
        if reason is None:
            verdict = "billed tonight" if due else "waits for a night that makes bills"
        elif s.id in bill_of:
            made = bill_of[s.id]
            verdict = "billed tonight" if made == night else f"billed by the night of {made}"
        else:
            verdict = "not billed: " + INELIGIBLE_WORDS[reason]
        if needs_cpt_flag(s, tz, night):
            verdict += "; flagged for staff: imported from another EHR without CPT codes"
        lines.append(f"  {s.id} on {s.local_date(tz)}: {verdict}")

    # Superbills and statements
    month = superbill_month(night, account.superbill_day_of_month)
    lines.append(
        f"Superbills: {'on' if client.superbills_enabled else 'off'} in the client's settings; "
        f"the practice makes them on day {account.superbill_day_of_month} of each month "
        "(the last day in shorter months)"
        + (f"; this night makes those for {cal.month_key(*month)}." if month else ".")
    )
    if statement_month(night):
        lines.append("Statements: this night (the 1st) makes last month's statements.")

    # Sharing
    recipient = (
        f"the billing contact {short_name(contact_row.name)}" if contact_row else "the client"
    )
    for kind, label in (
        (DocumentType.BILL, "Bills"),
        (DocumentType.SUPERBILL, "Superbills"),
        (DocumentType.STATEMENT, "Statements"),
    ):
        if client.sharing.shares(kind):
            lines.append(
                f"{label} are shared with {recipient} "
                f"{_minutes(client.sharing.delay_minutes(kind))}."
            )
        else:
            lines.append(f"{label} are not shared automatically.")

    # AutoPay
    decision = decide_autopay(at_autopay, at_autopay.clients[client_id], night)
    payer_name = (
        contact_row.name if decision.payer_kind == "billing_contact" and contact_row else row.name
    )
    lines.append(_sentence(f"AutoPay: {decision.describe(payer_name)}"))
    if decision.runs and decision.card:
        block = retry_block(attempt_history(conn, client_id), decision.card.key)
        if block != RetryBlock.NONE:
            lines.append(f"  But AutoPay will not charge this card: {RETRY_WORDS[block]}.")
    hold = hold_of(conn, row.account_id, night)  # the anomaly guard (services/guard.py)
    if hold is not None:
        lines.append(_sentence(f"  {hold_words(hold)}"))
    lines.extend(
        f"Warning: {w.message}"
        for w in settings_warnings(
            client_id=client_id,
            bill_creation=creation,
            account_autopay=account.autopay_enabled,
            client_autopay=client.autopay_enabled,
            sharing=client.sharing,
        )
    )

    lines.extend(settings_origins(conn, row, night, bills_at, autopay_at, tz))

    attempts = attempts_for_staff(conn, client_id)
    if attempts:
        lines.append("AutoPay attempts:")
    streaks = declines_in_a_row([PastAttempt(a.night, a.card, Outcome(a.status)) for a in attempts])
    payment_method_now = decision.card.payment_method_id if decision.card else None
    for a, declines in zip(attempts, streaks, strict=True):
        local = a.attempted_at.astimezone(cal.zone(tz))
        lines.append(
            f"  {local:%Y-%m-%d %H:%M} for night {a.night}: {dollars(a.amount_cents)} "
            f"from the {a.payer.replace('_', ' ')}: "
            f"{_attempt_words(a, declines, payment_method_now)}"
        )
    return "\n".join(lines)


# --- Where each setting came from -------------------------------------------------------------

# Read at the night's AutoPay (00:30); every other setting at its bills (00:00).
AUTOPAY_FIELDS = frozenset({"autopay_enabled", "billing_contact_id", "payment_method_id"})


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    return str(value)


@dataclass(frozen=True)
class SettingSource:
    """One setting's value on a night and where it came from (`scope`: practice, client or
    billing_contact; `source`: words for staff)."""

    scope: str
    subject_id: str
    field: str
    value: object
    source: str


def setting_sources(
    conn: Connection,
    row: Row[*tuple[Any, ...]],
    night: date,
    bills_at: datetime,
    autopay_at: datetime,
    tz: str,
) -> list[SettingSource]:
    """Each setting's value on the night and where it came from: the practice's or the
    client's since creation (a sharing field: the account's new-client default in force at the
    client's creation, or the client's own), the billing contact's, or a change on a date."""

    def origin(
        subject: str, subject_id: str, name: str, initial: object, created: str
    ) -> tuple[object, str]:
        history = [c for f, c in field_history(conn, subject, subject_id) if f == name]
        at = autopay_at if name in AUTOPAY_FIELDS else bills_at
        found = sourced_value(initial, history, at)
        if found.origin == Origin.CHANGED and found.since is not None:
            when = found.since.astimezone(cal.zone(tz))
            return found.value, f"changed on {when:%Y-%m-%d %H:%M}"
        return found.value, created

    out: list[SettingSource] = []
    account = conn.execute(select(m.Account.__table__).where(m.Account.id == row.account_id)).one()
    for name in ACCOUNT_FIELDS:
        value, words = origin(
            ACCOUNT,
            account.id,
            name,
            getattr(account, name),
            "the practice's setting from the start",
        )
        out.append(SettingSource("practice", account.id, name, value, words))
    defaults = defaults_at(defaults_history_of(conn, row.account_id), row.created_at).as_dict()
    contact_id: object = None
    for name in CLIENT_FIELDS:
        initial = getattr(row, name)
        if name in defaults:
            created = (
                "the account's default for new clients when the client was created"
                if defaults[name] == initial
                else "the client's own, since creation"
            )
        elif name in SWITCH_DEFAULTS:
            created = (
                "the default for new clients"
                if SWITCH_DEFAULTS[name] == initial
                else "the client's own, since creation"
            )
        else:
            created = "since the client was created"
        value, words = origin(CLIENT, row.id, name, initial, created)
        out.append(SettingSource("client", row.id, name, value, words))
        if name == "billing_contact_id":
            contact_id = value
    if isinstance(contact_id, str):
        contact = conn.execute(
            select(m.BillingContact.__table__).where(m.BillingContact.id == contact_id)
        ).one()
        for name in CONTACT_FIELDS:
            value, words = origin(
                BILLING_CONTACT,
                contact_id,
                name,
                getattr(contact, name),
                "the billing contact's, since it was created",
            )
            out.append(SettingSource("billing_contact", contact_id, name, value, words))
    return out


def settings_origins(
    conn: Connection,
    row: Row[*tuple[Any, ...]],
    night: date,
    bills_at: datetime,
    autopay_at: datetime,
    tz: str,
) -> list[str]:
    """`setting_sources` as lines for staff."""
    lines = [
        f"Settings on the night of {night} (bills read them at 00:00, AutoPay at 00:30), "
        "and where each came from:"
    ]
    for s in setting_sources(conn, row, night, bills_at, autopay_at, tz):
        prefix = {"practice": "practice ", "client": "", "billing_contact": "billing contact "}
        lines.append(f"  {prefix[s.scope]}{s.field}: {_shown(s.value)} ({s.source})")
    return lines
