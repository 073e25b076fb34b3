"""Delivery: shared when the client shares that kind, at creation plus the client's delay in
exact minutes (also across a daylight-saving change), to the billing contact when there is one,
else to the client. A bill is shared as it stands at delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.domain.calendar import autopay_instant, bills_instant
from billing_pipeline.domain.delivery import PlannedDelivery, bill_status_at, plan_delivery
from billing_pipeline.domain.settings import DocumentType, Sharing

LA = ZoneInfo("America/Los_Angeles")
BILL, SUPERBILL, STATEMENT = DocumentType.BILL, DocumentType.SUPERBILL, DocumentType.STATEMENT


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def sharing(delay: int = 60, *, share: bool = True) -> Sharing:
    return Sharing(share, delay, share, delay, share, delay)


# --- Exact minutes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created_at", "delay", "due", "local_due"),
    [
        # Fall back: 00:00 PDT on 1 Nov + 1440 minutes is 23:00 PST on 1 Nov, not midnight.
        ("2026-11-01T07:00Z", 1440, "2026-11-02T07:00Z", "2026-11-01T23:00:00-08:00"),
        # Spring forward: 00:00 PST on 8 Mar + 1440 minutes is 01:00 PDT on 9 Mar.
        ("2026-03-08T08:00Z", 1440, "2026-03-09T08:00Z", "2026-03-09T01:00:00-07:00"),
        # 60 minutes across the fall-back hour: 01:30 PDT + 60 = 01:30 PST.
        ("2026-11-01T08:30Z", 60, "2026-11-01T09:30Z", "2026-11-01T01:30:00-08:00"),
        # 60 minutes across spring forward: 01:30 PST + 60 = 03:30 PDT.
        ("2026-03-08T09:30Z", 60, "2026-03-08T10:30Z", "2026-03-08T03:30:00-07:00"),
        ("2026-10-21T07:00Z", 60, "2026-10-21T08:00Z", "2026-10-21T01:00:00-07:00"),
        ("2026-10-21T07:00Z", 0, "2026-10-21T07:00Z", "2026-10-21T00:00:00-07:00"),
        ("2026-10-21T07:00Z", 10080, "2026-10-28T07:00Z", "2026-10-28T00:00:00-07:00"),
        # A week across fall back: one hour earlier on the wall clock.
        ("2026-10-30T07:00Z", 10080, "2026-11-06T07:00Z", "2026-11-05T23:00:00-08:00"),
    ],
)
def test_due_at_creation_plus_exact_minutes(
    created_at: str, delay: int, due: str, local_due: str
) -> None:
    planned = plan_delivery(BILL, utc(created_at), sharing(delay), has_billing_contact=False)
    assert planned is not None
    assert planned.scheduled_at == utc(due)
    assert planned.scheduled_at.astimezone(LA).isoformat() == local_due


def test_creation_time_with_any_offset_is_the_same_instant() -> None:
    local = datetime(2026, 11, 1, 0, 0, tzinfo=timezone(timedelta(hours=-7)))
    planned = plan_delivery(STATEMENT, local, sharing(1440), has_billing_contact=False)
    assert planned is not None
    assert planned.scheduled_at == utc("2026-11-02T07:00Z")
    assert planned.scheduled_at.tzinfo == UTC


def test_naive_creation_time_is_refused() -> None:
    with pytest.raises(ValueError, match="created_at"):
        plan_delivery(BILL, datetime(2026, 11, 1), sharing(), has_billing_contact=False)


@given(
    created_at=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
    ),
    delay=st.integers(0, 10080),
    kind=st.sampled_from(list(DocumentType)),
)
def test_due_is_always_exactly_delay_minutes_later(
    created_at: datetime, delay: int, kind: DocumentType
) -> None:
    planned = plan_delivery(kind, created_at, sharing(delay), has_billing_contact=False)
    assert planned is not None
    assert planned.scheduled_at - created_at == timedelta(minutes=delay)
    assert planned.document_type == kind


# --- Whether and to whom -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DocumentType))
def test_nothing_is_shared_when_the_client_does_not_share_that_kind(kind: DocumentType) -> None:
    assert (
        plan_delivery(
            kind, utc("2026-10-21T07:00Z"), sharing(share=False), has_billing_contact=True
        )
        is None
    )


@pytest.mark.parametrize(
    ("share_bills", "share_superbills", "share_statements"),
    [(True, False, False), (False, True, False), (False, False, True)],
)
def test_each_kind_has_its_own_switch_and_delay(
    share_bills: bool, share_superbills: bool, share_statements: bool
) -> None:
    s = Sharing(share_bills, 10, share_superbills, 20, share_statements, 30)
    created = utc("2026-10-21T07:00Z")
    got = {
        kind: plan_delivery(kind, created, s, has_billing_contact=False) for kind in DocumentType
    }
    expected = {
        BILL: (share_bills, 10),
        SUPERBILL: (share_superbills, 20),
        STATEMENT: (share_statements, 30),
    }
    for kind, (on, minutes) in expected.items():
        planned = got[kind]
        if on:
            assert planned is not None
            assert planned.scheduled_at == created + timedelta(minutes=minutes)
        else:
            assert planned is None


@pytest.mark.parametrize(
    ("has_contact", "recipient"), [(True, "billing_contact"), (False, "client")]
)
@pytest.mark.parametrize("kind", list(DocumentType))
def test_recipient_is_the_contact_when_there_is_one(
    kind: DocumentType, has_contact: bool, recipient: str
) -> None:
    planned = plan_delivery(
        kind, utc("2026-11-01T04:00Z"), sharing(0), has_billing_contact=has_contact
    )
    assert planned is not None
    assert planned.recipient == recipient


# --- Waiting for AutoPay ---------------------------------------------------------------------

CREATED = utc("2026-10-21T07:00Z")
AUTOPAY = CREATED + timedelta(minutes=30)


@pytest.mark.parametrize(
    ("kind", "delay", "autopay_at", "wait"),
    [
        (BILL, 0, AUTOPAY, False),  # due before AutoPay runs
        (BILL, 29, AUTOPAY, False),
        (BILL, 30, AUTOPAY, True),  # due at the AutoPay minute: waits for it
        (BILL, 60, AUTOPAY, True),
        (BILL, 1440, AUTOPAY, True),
        (BILL, 60, None, False),  # no AutoPay that night
        (BILL, 60, CREATED, False),  # AutoPay not after creation
        (BILL, 60, CREATED - timedelta(minutes=1), False),
        (BILL, 60, CREATED + timedelta(minutes=61), False),  # AutoPay after the due time
        (SUPERBILL, 60, AUTOPAY, False),  # only bills wait
        (STATEMENT, 60, AUTOPAY, False),
    ],
)
def test_wait_for_autopay(
    kind: DocumentType, delay: int, autopay_at: datetime | None, wait: bool
) -> None:
    planned = plan_delivery(
        kind, CREATED, sharing(delay), has_billing_contact=False, autopay_at=autopay_at
    )
    assert planned is not None
    assert planned.wait_for_autopay is wait
    # Waiting never moves the scheduled minute.
    assert planned.scheduled_at == CREATED + timedelta(minutes=delay)


def test_a_night_bill_with_the_real_instants() -> None:
    night = datetime(2026, 10, 31).date()
    tz = "America/Los_Angeles"
    planned = plan_delivery(
        BILL,
        bills_instant(night, tz),
        sharing(60),
        has_billing_contact=True,
        autopay_at=autopay_instant(night, tz),
    )
    assert planned == PlannedDelivery(BILL, "billing_contact", utc("2026-11-01T08:00Z"), True)


# --- A bill as it stands at delivery -----------------------------------------------------------

DELIVERY = utc("2026-10-21T08:00Z")


@pytest.mark.parametrize(
    ("paid_at", "status"),
    [
        (None, "open"),
        (utc("2026-10-21T07:30Z"), "paid"),
        (DELIVERY, "paid"),  # paid exactly at the delivery instant counts as paid
        (DELIVERY - timedelta(microseconds=1), "paid"),
        (DELIVERY + timedelta(microseconds=1), "open"),
        (utc("2026-10-22T07:30Z"), "open"),
        # The same instant written with another offset.
        (datetime.fromisoformat("2026-10-21T01:00:00-07:00"), "paid"),
    ],
)
def test_bill_status_at_delivery(paid_at: datetime | None, status: str) -> None:
    assert bill_status_at(paid_at, DELIVERY) == status


def test_bill_status_refuses_naive_instants() -> None:
    with pytest.raises(ValueError):
        bill_status_at(datetime(2026, 10, 21, 8), DELIVERY)
    with pytest.raises(ValueError):
        bill_status_at(DELIVERY, datetime(2026, 10, 21, 8))


@given(
    delay=st.integers(0, 240),
    paid_after_minutes=st.one_of(st.none(), st.integers(0, 300)),
)
def test_bill_is_paid_at_delivery_iff_paid_by_then(
    delay: int, paid_after_minutes: int | None
) -> None:
    planned = plan_delivery(BILL, CREATED, sharing(delay), has_billing_contact=False)
    assert planned is not None
    paid_at = (
        None if paid_after_minutes is None else CREATED + timedelta(minutes=paid_after_minutes)
    )
    expected = "paid" if paid_after_minutes is not None and paid_after_minutes <= delay else "open"
    assert bill_status_at(paid_at, planned.scheduled_at) == expected
