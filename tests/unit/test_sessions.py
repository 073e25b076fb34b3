"""Sessions: what a night bills, what it leaves out, and what it flags.

A session is eligible when it is attended, its client has auto_bill, it has at least one
service with a CPT code, its local date is on or before the night (and no more than 90 days
before), and it is on no bill yet. Imported sessions with no CPT code are flagged.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.domain.sessions import (
    INELIGIBLE_WORDS,
    Ineligible,
    Service,
    Session,
    SessionSource,
    SessionStatus,
    needs_cpt_flag,
    sessions_in_month,
    why_not_eligible,
)

LA = "America/Los_Angeles"
NY = "America/New_York"
NIGHT = date(2026, 11, 3)

CPT = Service("90834", 1, 15000)
NO_CPT = Service(None, 1, 2500)
EMPTY_CPT = Service("", 1, 2500)


def session(
    starts_at: str = "2026-11-03T10:00:00-08:00",
    *,
    status: SessionStatus = SessionStatus.ATTENDED,
    source: SessionSource = SessionSource.NATIVE,
    services: tuple[Service, ...] = (CPT,),
    sid: str = "s-1",
    client_id: str = "cl-1",
) -> Session:
    return Session(
        id=sid,
        client_id=client_id,
        starts_at=datetime.fromisoformat(starts_at),
        status=status,
        source=source,
        place_of_service="11",
        services=services,
    )


# --- Services -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "fee_cents", "amount"),
    [(1, 15000, 15000), (2, 15000, 30000), (4, 2599, 10396), (99, 100_000_000, 9_900_000_000)],
)
def test_service_amount_is_units_times_fee(units: int, fee_cents: int, amount: int) -> None:
    assert Service("90837", units, fee_cents).amount_cents == amount


@pytest.mark.parametrize(
    ("cpt", "billable"), [("90834", True), ("9083F", True), (None, False), ("", False)]
)
def test_a_service_is_billable_only_with_a_cpt_code(cpt: str | None, billable: bool) -> None:
    assert Service(cpt, 1, 100).billable is billable


def test_only_services_with_a_cpt_code_are_billed() -> None:
    s = session(services=(CPT, NO_CPT, Service("90785", 2, 2000), EMPTY_CPT))
    assert s.billable_services == (CPT, Service("90785", 2, 2000))
    assert s.billable_amount_cents == 15000 + 2 * 2000
    assert s.has_cpt


@pytest.mark.parametrize(
    ("services", "has_cpt"),
    [((CPT,), True), ((NO_CPT, CPT), True), ((NO_CPT,), False), ((), False), ((EMPTY_CPT,), False)],
)
def test_has_cpt(services: tuple[Service, ...], has_cpt: bool) -> None:
    assert session(services=services).has_cpt is has_cpt


@pytest.mark.parametrize(
    ("status", "services", "kind"),
    [
        (SessionStatus.ATTENDED, (CPT,), True),
        (SessionStatus.ATTENDED, (NO_CPT,), False),
        (SessionStatus.CANCELLED, (CPT,), False),
        (SessionStatus.NO_SHOW, (CPT,), False),
    ],
)
def test_billable_kind_is_attended_with_a_cpt_code(
    status: SessionStatus, services: tuple[Service, ...], kind: bool
) -> None:
    assert session(status=status, services=services).billable_kind is kind


@given(
    services=st.lists(
        st.builds(
            Service,
            st.one_of(st.none(), st.just(""), st.sampled_from(["90834", "90837", "90785"])),
            st.integers(1, 99),
            st.integers(0, 100_000_000),
        ),
        max_size=6,
    )
)
def test_billable_amount_is_the_sum_over_cpt_services_only(services: list[Service]) -> None:
    s = session(services=tuple(services))
    assert s.billable_amount_cents == sum(x.units * x.fee_cents for x in services if x.cpt)
    assert s.has_cpt is any(x.cpt for x in services)
    assert all(x.cpt for x in s.billable_services)


# --- Eligibility -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "auto_bill", "billed", "reason"),
    [
        ({}, True, False, None),
        ({"status": SessionStatus.CANCELLED}, True, False, Ineligible.NOT_ATTENDED),
        ({"status": SessionStatus.NO_SHOW}, True, False, Ineligible.NOT_ATTENDED),
        ({}, False, False, Ineligible.CLIENT_EXCLUDED),
        ({"services": (NO_CPT,)}, True, False, Ineligible.NO_CPT),
        ({"services": ()}, True, False, Ineligible.NO_CPT),
        ({"services": (NO_CPT, CPT)}, True, False, None),
        ({"starts_at": "2026-11-04T00:00:00-08:00"}, True, False, Ineligible.AFTER_NIGHT),
        ({"starts_at": "2026-11-03T23:59:59-08:00"}, True, False, None),
        ({"starts_at": "2026-08-05T10:00:00-07:00"}, True, False, None),  # 90 days before
        ({"starts_at": "2026-08-04T10:00:00-07:00"}, True, False, Ineligible.BEYOND_LOOKBACK),
        ({}, True, True, Ineligible.ALREADY_BILLED),
        # Imported sessions that do have a CPT code are billed like any other.
        ({"source": SessionSource.IMPORTED}, True, False, None),
        ({"source": SessionSource.IMPORTED, "services": (NO_CPT,)}, True, False, Ineligible.NO_CPT),
    ],
)
def test_why_not_eligible(
    kwargs: dict[str, object], auto_bill: bool, billed: bool, reason: Ineligible | None
) -> None:
    got = why_not_eligible(session(**kwargs), LA, NIGHT, auto_bill=auto_bill, billed=billed)  # type: ignore[arg-type]  # parametrized keywords of mixed types
    assert got == reason


def test_first_reason_wins() -> None:
    s = session("2026-12-01T10:00:00-08:00", status=SessionStatus.CANCELLED, services=(NO_CPT,))
    assert why_not_eligible(s, LA, NIGHT, auto_bill=False, billed=True) == Ineligible.NOT_ATTENDED
    s = session("2026-12-01T10:00:00-08:00", services=(NO_CPT,))
    assert why_not_eligible(s, LA, NIGHT, auto_bill=False, billed=True) == (
        Ineligible.CLIENT_EXCLUDED
    )
    assert why_not_eligible(s, LA, NIGHT, auto_bill=True, billed=True) == Ineligible.NO_CPT
    s = session("2026-12-01T10:00:00-08:00")
    assert why_not_eligible(s, LA, NIGHT, auto_bill=True, billed=True) == Ineligible.AFTER_NIGHT


@pytest.mark.parametrize(
    ("tz", "night", "reason"),
    [
        # 23:30 Pacific on 3 Nov: the night of 3 Nov in Los Angeles...
        (LA, date(2026, 11, 3), None),
        # ...but 02:30 on 4 Nov in New York: after New York's night of 3 Nov.
        (NY, date(2026, 11, 3), Ineligible.AFTER_NIGHT),
        (NY, date(2026, 11, 4), None),
    ],
)
def test_the_session_date_is_local_to_the_account(
    tz: str, night: date, reason: Ineligible | None
) -> None:
    s = session("2026-11-03T23:30:00-08:00")
    assert why_not_eligible(s, tz, night, auto_bill=True, billed=False) == reason


def test_every_reason_has_words() -> None:
    assert set(INELIGIBLE_WORDS) == set(Ineligible)
    assert "90 days" in INELIGIBLE_WORDS[Ineligible.BEYOND_LOOKBACK]
    assert "auto_bill" in INELIGIBLE_WORDS[Ineligible.CLIENT_EXCLUDED]


@given(
    status=st.sampled_from(list(SessionStatus)),
    source=st.sampled_from(list(SessionSource)),
    cpt=st.booleans(),
    days_before=st.integers(-10, 120),
    auto_bill=st.booleans(),
    billed=st.booleans(),
)
def test_eligible_iff_every_condition_holds(
    status: SessionStatus,
    source: SessionSource,
    cpt: bool,
    days_before: int,
    auto_bill: bool,
    billed: bool,
) -> None:
    day = NIGHT - timedelta(days=days_before)
    s = session(
        f"{day.isoformat()}T12:00:00-08:00",
        status=status,
        source=source,
        services=(CPT,) if cpt else (NO_CPT,),
    )
    eligible = (
        status == SessionStatus.ATTENDED
        and auto_bill
        and cpt
        and 0 <= days_before <= 90
        and not billed
    )
    got = why_not_eligible(s, LA, NIGHT, auto_bill=auto_bill, billed=billed)
    assert (got is None) is eligible


# --- Imported sessions without a CPT code ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "night", "flagged"),
    [
        ({"source": SessionSource.IMPORTED, "services": (NO_CPT,)}, NIGHT, True),
        ({"source": SessionSource.IMPORTED, "services": ()}, NIGHT, True),
        ({"source": SessionSource.IMPORTED, "services": (EMPTY_CPT,)}, NIGHT, True),
        # Any status: the contract flags every imported session with no CPT code a night meets.
        (
            {
                "source": SessionSource.IMPORTED,
                "services": (NO_CPT,),
                "status": SessionStatus.CANCELLED,
            },
            NIGHT,
            True,
        ),
        (
            {
                "source": SessionSource.IMPORTED,
                "services": (NO_CPT,),
                "status": SessionStatus.NO_SHOW,
            },
            NIGHT,
            True,
        ),
        # Not imported, or with a CPT code: never flagged.
        ({"source": SessionSource.NATIVE, "services": (NO_CPT,)}, NIGHT, False),
        ({"source": SessionSource.IMPORTED, "services": (CPT,)}, NIGHT, False),
        ({"source": SessionSource.IMPORTED, "services": (NO_CPT, CPT)}, NIGHT, False),
        # Not met by the night: after it, or beyond the look-back.
        ({"source": SessionSource.IMPORTED, "services": (NO_CPT,)}, date(2026, 11, 2), False),
        ({"source": SessionSource.IMPORTED, "services": (NO_CPT,)}, date(2027, 2, 1), True),
        ({"source": SessionSource.IMPORTED, "services": (NO_CPT,)}, date(2027, 2, 2), False),
    ],
)
def test_needs_cpt_flag(kwargs: dict[str, object], night: date, flagged: bool) -> None:
    # The session is on 3 Nov 2026; 1 Feb 2027 is 90 days later, 2 Feb 91.
    assert needs_cpt_flag(session(**kwargs), LA, night) is flagged  # type: ignore[arg-type]  # parametrized keywords of mixed types


def test_a_flagged_session_is_never_eligible() -> None:
    s = session(source=SessionSource.IMPORTED, services=(NO_CPT,))
    assert needs_cpt_flag(s, LA, NIGHT)
    assert why_not_eligible(s, LA, NIGHT, auto_bill=True, billed=False) == Ineligible.NO_CPT


@given(
    status=st.sampled_from(list(SessionStatus)),
    source=st.sampled_from(list(SessionSource)),
    cpt=st.booleans(),
    days_before=st.integers(-10, 120),
)
def test_needs_cpt_flag_property(
    status: SessionStatus, source: SessionSource, cpt: bool, days_before: int
) -> None:
    day = NIGHT - timedelta(days=days_before)
    s = session(
        f"{day.isoformat()}T12:00:00-08:00",
        status=status,
        source=source,
        services=(CPT,) if cpt else (NO_CPT,),
    )
    expected = source == SessionSource.IMPORTED and not cpt and 0 <= days_before <= 90
    assert needs_cpt_flag(s, LA, NIGHT) is expected


# --- Sessions of a local month -----------------------------------------------------------------


def test_sessions_in_month_uses_the_account_zone() -> None:
    late_october = session("2026-10-31T22:30:00-04:00", sid="s-1031")  # 02:30Z on 1 Nov
    november = session("2026-11-02T10:00:00-05:00", sid="s-1102")
    early = session("2026-10-01T00:00:00-04:00", sid="s-1001")
    all_sessions = [november, late_october, early]
    assert [s.id for s in sessions_in_month(all_sessions, NY, 2026, 10)] == ["s-1031", "s-1001"]
    assert [s.id for s in sessions_in_month(all_sessions, NY, 2026, 11)] == ["s-1102"]
    assert [s.id for s in sessions_in_month(all_sessions, "UTC", 2026, 11)] == [
        "s-1102",
        "s-1031",
    ]
    assert sessions_in_month(all_sessions, NY, 2025, 10) == []
