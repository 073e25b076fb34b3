"""The billing database's tables.

Constraints carry the invariants so that no code path can break them: a session is on at most
one bill (`bill_sessions.session_id` is unique); one superbill and one statement per client per
month; one delivery per document; an AutoPay attempt per deterministic key, and at most one
attempt in flight per client (a partial unique index on pending attempts).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from billing_pipeline.db.types import UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# --- Practice, people, payment methods -------------------------------------------------------


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    npi: Mapped[str | None] = mapped_column(String(10))
    tax_id: Mapped[str | None] = mapped_column(String(32))
    address: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(40))
    provider_name: Mapped[str | None] = mapped_column(String(200))
    provider_credentials: Mapped[str | None] = mapped_column(String(100))
    provider_npi: Mapped[str | None] = mapped_column(String(10))
    provider_license_number: Mapped[str | None] = mapped_column(String(64))
    provider_taxonomy: Mapped[str | None] = mapped_column(String(32))
    bill_creation: Mapped[str] = mapped_column(String(16))
    superbill_day_of_month: Mapped[int] = mapped_column(Integer)
    autopay_enabled: Mapped[bool] = mapped_column(Boolean)
    __table_args__ = (
        CheckConstraint("bill_creation IN ('daily','monthly','manual')", name="bill_creation"),
        CheckConstraint("superbill_day_of_month BETWEEN 1 AND 31", name="superbill_day"),
    )


class SharingColumns:
    share_bills: Mapped[bool] = mapped_column(Boolean)
    bill_delay_minutes: Mapped[int] = mapped_column(Integer)
    share_superbills: Mapped[bool] = mapped_column(Boolean)
    superbill_delay_minutes: Mapped[int] = mapped_column(Integer)
    share_statements: Mapped[bool] = mapped_column(Boolean)
    statement_delay_minutes: Mapped[int] = mapped_column(Integer)


class AccountSharingDefaults(SharingColumns, Base):
    """Each version of an account's new-client sharing defaults, in full, from `effective_at`."""

    __tablename__ = "account_sharing_defaults"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("account_id", "effective_at"),)


class PaymentMethod(Base):
    """A card on file in Stripe. Never a card number: Stripe ids, brand, last4, expiry."""

    __tablename__ = "payment_methods"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    owner_type: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str] = mapped_column(ID)
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    stripe_payment_method_id: Mapped[str] = mapped_column(String(255))
    brand: Mapped[str] = mapped_column(String(32))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int] = mapped_column(Integer)
    exp_year: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Stripe's fingerprint of the card number (the same number gives the same fingerprint):
    # with the owner and the expiry it tells a replaced card from identical details re-entered.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    __table_args__ = (
        CheckConstraint("owner_type IN ('client','billing_contact')", name="owner_type"),
        CheckConstraint("exp_month BETWEEN 1 AND 12", name="exp_month"),
    )


class BillingContact(Base):
    __tablename__ = "billing_contacts"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    autopay_enabled: Mapped[bool] = mapped_column(Boolean)
    payment_method_id: Mapped[str | None] = mapped_column(ForeignKey("payment_methods.id"))


class Client(SharingColumns, Base):
    """A client and their own Billing Settings (the sharing columns are the client's own,
    seeded from the account defaults in force at `created_at`)."""

    __tablename__ = "clients"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    date_of_birth: Mapped[date | None] = mapped_column(Date)
    address: Mapped[str | None] = mapped_column(Text)
    insurance_member_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    billing_contact_id: Mapped[str | None] = mapped_column(ForeignKey("billing_contacts.id"))
    payment_method_id: Mapped[str | None] = mapped_column(ForeignKey("payment_methods.id"))
    auto_bill: Mapped[bool] = mapped_column(Boolean)
    superbills_enabled: Mapped[bool] = mapped_column(Boolean)
    autopay_enabled: Mapped[bool] = mapped_column(Boolean)


class SettingChange(Base):
    """History, not overwrites: a value of a record's field in force from `effective_at` on
    (the contract's "Changes over time"). The record's own row holds the value it started
    with; each step reads the last change at or before its own instant (domain/history.py).

    `value` is JSON: a switch, a number of minutes, an id (billing contact, payment method) or
    null, or a session's services. One change per field of a record per instant.
    """

    __tablename__ = "setting_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    subject: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(ID)
    field: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(Text)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When the change was written (wall clock): history of the history, for finance.
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("subject", "subject_id", "field", "effective_at"),
        CheckConstraint(
            "subject IN ('account','client','billing_contact','session')", name="subject"
        ),
        Index("ix_setting_changes_subject", "subject", "subject_id", "effective_at"),
    )


class Diagnosis(Base):
    __tablename__ = "diagnoses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    icd10_code: Mapped[str] = mapped_column(String(8))
    __table_args__ = (UniqueConstraint("client_id", "position"),)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), index=True)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    place_of_service: Mapped[str | None] = mapped_column(String(2))
    __table_args__ = (
        CheckConstraint("status IN ('attended','cancelled','no_show')", name="status"),
        CheckConstraint("source IN ('native','imported')", name="source"),
        Index("ix_sessions_client_id_starts_at", "client_id", "starts_at"),
    )


class SessionService(Base):
    __tablename__ = "session_services"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    cpt: Mapped[str | None] = mapped_column(String(5))
    units: Mapped[int] = mapped_column(Integer)
    fee_cents: Mapped[int] = mapped_column(Integer)
    modifiers: Mapped[str] = mapped_column(String(16), default="")
    __table_args__ = (
        UniqueConstraint("session_id", "position"),
        CheckConstraint("units >= 1", name="units"),
        CheckConstraint("fee_cents >= 0", name="fee"),
    )


# --- What each night computes ----------------------------------------------------------------


class NightStep(Base):
    """A step of a night finished for an account: AutoPay waits for the night's bills."""

    __tablename__ = "night_steps"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    night: Mapped[date] = mapped_column(Date, primary_key=True)
    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    completed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    run_id: Mapped[str | None] = mapped_column(String(64))


class NightStepTry(Base):
    """The launches of a practice's night step by the `launch_due_nights` sensor, and the
    last failure a run recorded for it (an error type or a message safe to show, never PHI):
    the sensor retries with a backoff up to a bounded number of tries, the ledger shows it."""

    __tablename__ = "night_step_tries"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    night: Mapped[date] = mapped_column(Date, primary_key=True)
    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    last_launched_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_run_key: Mapped[str | None] = mapped_column(String(160))
    last_error: Mapped[str | None] = mapped_column(String(300))
    last_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PaymentReconciliation(Base):
    """Finance's table: one row per PaymentIntent (or attempt) on which Stripe and our books
    disagree for a night, with both sides' figures. The night's rows are replaced each time
    it is reconciled: no row means the night agrees."""

    __tablename__ = "payment_reconciliations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    night: Mapped[date] = mapped_column(Date, index=True)
    account_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(24))
    payment_intent_id: Mapped[str] = mapped_column(String(255))
    attempt_id: Mapped[str] = mapped_column(String(32))
    stripe_amount_cents: Mapped[int | None] = mapped_column(Integer)
    our_amount_cents: Mapped[int | None] = mapped_column(Integer)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EligibleSession(Base):
    """The sessions a night found billable (before billing them)."""

    __tablename__ = "eligible_sessions"
    night: Mapped[date] = mapped_column(Date, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    session_date: Mapped[date] = mapped_column(Date)
    amount_cents: Mapped[int] = mapped_column(Integer)
    # Read by practice and night (migration 0012).
    __table_args__ = (Index("ix_eligible_sessions_account_id_night", "account_id", "night"),)


class ResolvedSettings(SharingColumns, Base):
    """Each client's settings as a night applied them, with AutoPay's decision and reason."""

    __tablename__ = "resolved_settings"
    night: Mapped[date] = mapped_column(Date, primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    bill_creation: Mapped[str] = mapped_column(String(16))
    auto_bill: Mapped[bool] = mapped_column(Boolean)
    superbills_enabled: Mapped[bool] = mapped_column(Boolean)
    autopay_runs: Mapped[bool] = mapped_column(Boolean)
    autopay_reason: Mapped[str] = mapped_column(String(40))
    payer: Mapped[str] = mapped_column(String(16))
    payer_id: Mapped[str | None] = mapped_column(String(64))
    payer_payment_method_id: Mapped[str | None] = mapped_column(String(64))
    # Read by practice and night (migration 0012).
    __table_args__ = (Index("ix_resolved_settings_account_id_night", "account_id", "night"),)


class Bill(Base):
    __tablename__ = "bills"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), index=True)
    night: Mapped[date] = mapped_column(Date, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    amount_cents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(8), default="open")
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (
        CheckConstraint("status IN ('open','paid')", name="status"),
        CheckConstraint("amount_cents >= 0", name="amount"),
    )


class BillSession(Base):
    """A session is on at most one bill: the unique key is the invariant itself."""

    __tablename__ = "bill_sessions"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey("bills.id"), index=True)


class BillLineRow(Base):
    __tablename__ = "bill_lines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey("bills.id"), index=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"))
    cpt: Mapped[str] = mapped_column(String(5))
    units: Mapped[int] = mapped_column(Integer)
    fee_cents: Mapped[int] = mapped_column(Integer)
    modifiers: Mapped[str] = mapped_column(String(16), default="")
    amount_cents: Mapped[int] = mapped_column(Integer)


class AutopayAttempt(Base):
    """Written as `pending` and committed before Stripe is called; the outcome after."""

    __tablename__ = "autopay_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), index=True)
    night: Mapped[date] = mapped_column(Date, index=True)
    payer: Mapped[str] = mapped_column(String(16))
    payer_id: Mapped[str] = mapped_column(ID)
    payment_method_id: Mapped[str] = mapped_column(ForeignKey("payment_methods.id"))
    amount_cents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    failure_code: Mapped[str | None] = mapped_column(String(64))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Wall-clock time of the claim (attempted_at is the night's, logical in a simulation):
    # reconciliation leaves a pending attempt alone while another run may still be calling.
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Who holds the attempt while it is pending (a run's owner token) and until when its lease
    # runs; a dead owner's attempts are settled by the next run at once (services/autopay.py).
    owner: Mapped[str | None] = mapped_column(String(160))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount"),
        CheckConstraint(
            "status IN ('pending','succeeded','declined','requires_action','error')",
            name="status",
        ),
        # At most one attempt in flight per client: two runs cannot both be charging them.
        Index(
            "uq_autopay_attempts_one_pending_per_client",
            "client_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
    )


class AutopayAttemptBill(Base):
    __tablename__ = "autopay_attempt_bills"
    attempt_id: Mapped[int] = mapped_column(ForeignKey("autopay_attempts.id"), primary_key=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey("bills.id"), primary_key=True)


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("autopay_attempts.id"), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    paid_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stripe_payment_intent_id: Mapped[str] = mapped_column(String(255), unique=True)


class MonthlyDocumentColumns:
    """What a superbill and a statement share: made on a night, one per client per month."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    month: Mapped[str] = mapped_column(String(7))
    night: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[UniqueConstraint]:
        # Made for each table: a constraint belongs to one table.
        return (UniqueConstraint("client_id", "month"),)


class Superbill(MonthlyDocumentColumns, Base):
    __tablename__ = "superbills"


class SuperbillSession(Base):
    __tablename__ = "superbill_sessions"
    superbill_id: Mapped[int] = mapped_column(ForeignKey("superbills.id"), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)


class Statement(MonthlyDocumentColumns, Base):
    __tablename__ = "statements"
    # sort_order: after the shared columns, where the table has it (a mixin's come last).
    open_balance_cents: Mapped[int] = mapped_column(Integer, sort_order=1)


class DocumentFile(Base):
    """A rendered PDF, stored once by the SHA-256 of its bytes (content-addressed)."""

    __tablename__ = "document_files"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    byte_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Document(Base):
    """A rendering of a bill, superbill or statement: one per distinct content (`content_key`
    digests everything the document shows and the templates' version), so a document is
    rendered once per content; a bill paid after it was first shared has a second one."""

    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    document_type: Mapped[str] = mapped_column(String(16))
    document_id: Mapped[int] = mapped_column(Integer)
    content_key: Mapped[str] = mapped_column(String(64))
    content_sha256: Mapped[str] = mapped_column(ForeignKey("document_files.sha256"))
    byte_size: Mapped[int] = mapped_column(Integer)
    # Superbills: the required fields it lacks, comma-separated (empty when complete).
    missing_fields: Mapped[str] = mapped_column(String(400), default="", server_default="")
    rendered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("document_type", "document_id", "content_key"),
        CheckConstraint("document_type IN ('bill','superbill','statement')", name="type"),
    )


class Delivery(Base):
    """One delivery per document: queued with the document, shared once when due."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    document_type: Mapped[str] = mapped_column(String(16))
    document_id: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    night: Mapped[date] = mapped_column(Date)
    recipient: Mapped[str] = mapped_column(String(16))
    recipient_id: Mapped[str] = mapped_column(ID)
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    wait_for_autopay: Mapped[bool] = mapped_column(Boolean, default=False)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bill_status_at_delivery: Mapped[str | None] = mapped_column(String(8))
    # A bill shared while an AutoPay attempt on it was still unsettled (it had waited past the
    # limit) is shared again when that attempt pays it.
    shared_before_outcome: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    reshare_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reshared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The notification email (sent once the portal share is made): pending until an SMTP
    # server accepts it; a failure is retried with backoff (real time) and after the
    # notifier's limit the email is `failed` and shown to staff. No address: `no_address`.
    email_status: Mapped[str | None] = mapped_column(String(16))
    email_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    email_next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_last_error: Mapped[str | None] = mapped_column(String(200))
    email_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("document_type", "document_id"),
        CheckConstraint(
            "email_status IN ('pending','sent','failed','no_address')", name="email_status"
        ),
        CheckConstraint("document_type IN ('bill','superbill','statement')", name="type"),
        CheckConstraint("recipient IN ('client','billing_contact')", name="recipient"),
    )


class PortalShare(Base):
    """The client portal: a document shared with its recipient (one row per delivery)."""

    __tablename__ = "portal_shares"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"))
    # 0: the first share; 1: the bill shared again once its AutoPay outcome was known.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    bill_status: Mapped[str | None] = mapped_column(String(8))
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(16))
    recipient_id: Mapped[str] = mapped_column(ID)
    document_type: Mapped[str] = mapped_column(String(16))
    document_id: Mapped[int] = mapped_column(Integer)
    shared_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The PDF shared (document_files.sha256), once rendered: at the share, or when first
    # asked for where rendering at the share is off (simulations).
    content_sha256: Mapped[str | None] = mapped_column(ForeignKey("document_files.sha256"))
    __table_args__ = (UniqueConstraint("delivery_id", "revision"),)


class CheckFlag(Base):
    """A session automation left out for staff to handle (listed once, however many nights)."""

    __tablename__ = "check_flags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    check: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    first_night: Mapped[date] = mapped_column(Date)
    __table_args__ = (UniqueConstraint("check", "session_id"),)


# --- The AutoPay anomaly guard (issue 13) -----------------------------------------------------


class AutopayGuardSettings(Base):
    """An account's guard thresholds (`domain.guard.GuardSettings`); no row: the defaults."""

    __tablename__ = "autopay_guard_settings"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    multiple_percent: Mapped[int] = mapped_column(Integer)
    min_nights: Mapped[int] = mapped_column(Integer)
    window_nights: Mapped[int] = mapped_column(Integer)
    min_extra_charges: Mapped[int] = mapped_column(Integer)
    min_extra_cents: Mapped[int] = mapped_column(Integer)
    client_cap_cents: Mapped[int] = mapped_column(Integer)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    changed_by: Mapped[str] = mapped_column(String(120))


class AutopayHold(Base):
    """A practice's night that the guard held: nothing is charged for it until staff release
    it (who and when are kept). Reasons are codes and figures (counts, cents), never names."""

    __tablename__ = "autopay_holds"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    night: Mapped[date] = mapped_column(Date, primary_key=True)
    held_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reasons: Mapped[str] = mapped_column(String(200))
    details: Mapped[str] = mapped_column(Text)  # JSON: figures, medians, words for staff
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_by: Mapped[str | None] = mapped_column(String(120))


class SummaryRecipient(Base):
    """Where a practice's evening summary goes (a staff address, not a client's) and at which
    local hour; no row: no summary."""

    __tablename__ = "summary_recipients"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    staff_email: Mapped[str] = mapped_column(String(320))
    summary_hour: Mapped[int] = mapped_column(Integer)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EveningSummary(Base):
    """One evening summary per practice and night: claimed before it is sent, marked sent."""

    __tablename__ = "evening_summaries"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    night: Mapped[date] = mapped_column(Date, primary_key=True)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message_id: Mapped[str] = mapped_column(String(200))


# --- Access: who may see which practice, and who saw what ------------------------------------


class PracticeStaff(Base):
    """A staff database login and a practice it may work in (PostgreSQL row-level security:
    a staff transaction sees the practice it sets only when its login is mapped to it)."""

    __tablename__ = "practice_staff"
    db_login: Mapped[str] = mapped_column(String(63), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)


class AuditLog(Base):
    """One read of client data (or a refused attempt): who, when, which practice, which client
    ids (never names), what, the outcome. Append-only: each row's `row_hash` covers its fields
    and the previous row's hash (db/audit.py), so an edited or deleted row breaks the chain."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    # A JSON list of client ids, sorted.
    client_ids: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(200))
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


# --- Finance and failures (issue 11) ------------------------------------------------------------


class FinanceDaily(Base):
    """Finance's figures of a practice's night (the `finance_daily` asset): bills made, what
    AutoPay collected and could not, the open balance after the night's AutoPay and the
    documents shared. Integer cents; a night's rows are replaced when it is computed again."""

    __tablename__ = "finance_daily"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    night: Mapped[date] = mapped_column(Date, primary_key=True, index=True)
    bills: Mapped[int] = mapped_column(Integer)
    bills_cents: Mapped[int] = mapped_column(BigInteger)
    collected_cents: Mapped[int] = mapped_column(BigInteger)
    charges_succeeded: Mapped[int] = mapped_column(Integer)
    charges_declined: Mapped[int] = mapped_column(Integer)
    declined_cents: Mapped[int] = mapped_column(BigInteger)
    charges_requires_action: Mapped[int] = mapped_column(Integer)
    open_balance_cents: Mapped[int] = mapped_column(BigInteger)
    documents_shared: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RunAlert(Base):
    """A Dagster run that failed, recorded by the run-failure sensor once per run: the job,
    its partitions and the practice ids it covered, the steps that failed, and whether the
    alert email went out. Ids only, never a client's data."""

    __tablename__ = "run_alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    job_name: Mapped[str] = mapped_column(String(200))
    partitions: Mapped[str] = mapped_column(String(100))
    account_ids: Mapped[str] = mapped_column(Text)  # comma-separated; empty: every practice
    failed_steps: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    # `sent`, `failed` (SMTP refused or unreachable) or `not_configured` (no SMTP host).
    email_status: Mapped[str] = mapped_column(String(16))
