"""Bills: daily one per eligible session; monthly one per client on the last night of a month;
manual none. Only services with a CPT code become bill lines; an amount is units x fee."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.domain.billing import BillLine, PlannedBill, bills_due, plan_bills
from billing_pipeline.domain.sessions import Service, Session, SessionSource, SessionStatus
from billing_pipeline.domain.settings import BillCreation

DAILY, MONTHLY, MANUAL = BillCreation.DAILY, BillCreation.MONTHLY, BillCreation.MANUAL


def session(
    sid: str,
    client_id: str,
    day: date,
    services: tuple[Service, ...] = (Service("90834", 1, 15000),),
    hour: int = 10,
) -> Session:
    return Session(
        id=sid,
        client_id=client_id,
        starts_at=datetime(day.year, day.month, day.day, hour, tzinfo=UTC),
        status=SessionStatus.ATTENDED,
        source=SessionSource.NATIVE,
        place_of_service="11",
        services=services,
    )


LILY_1 = session(
    "s-lily-1005", "cl-lily", date(2026, 10, 5), (Service("90834", 1, 15000, ("95",)),)
)
LILY_2 = session(
    "s-lily-1019",
    "cl-lily",
    date(2026, 10, 19),
    (Service("90834", 1, 15000), Service("90785", 1, 2000), Service(None, 1, 9999)),
)
OMAR = session("s-omar-1010", "cl-omar", date(2026, 10, 10), (Service("90837", 2, 10000),))


# --- When bills are due -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("creation", "night", "due"),
    [
        (DAILY, date(2026, 11, 3), True),
        (DAILY, date(2026, 10, 31), True),
        (MONTHLY, date(2026, 10, 31), True),
        (MONTHLY, date(2026, 10, 30), False),
        (MONTHLY, date(2026, 11, 1), False),
        (MONTHLY, date(2026, 2, 28), True),
        (MONTHLY, date(2028, 2, 28), False),
        (MONTHLY, date(2028, 2, 29), True),
        (MONTHLY, date(2026, 4, 30), True),
        (MONTHLY, date(2026, 12, 31), True),
        (MANUAL, date(2026, 10, 31), False),
        (MANUAL, date(2026, 11, 3), False),
    ],
)
def test_bills_due(creation: BillCreation, night: date, due: bool) -> None:
    assert bills_due(creation, night) is due


# --- Daily -------------------------------------------------------------------------------------


def test_daily_one_bill_per_session() -> None:
    bills = plan_bills(DAILY, date(2026, 10, 19), [LILY_2, OMAR, LILY_1])
    assert [(b.client_id, b.session_ids) for b in bills] == [
        ("cl-lily", ("s-lily-1005",)),
        ("cl-lily", ("s-lily-1019",)),
        ("cl-omar", ("s-omar-1010",)),
    ]
    assert [b.amount_cents for b in bills] == [15000, 17000, 20000]


def test_daily_bill_lines_are_the_cpt_services_only() -> None:
    (bill,) = plan_bills(DAILY, date(2026, 10, 19), [LILY_2])
    assert bill.lines == (
        BillLine("s-lily-1019", "90834", 1, 15000, ()),
        BillLine("s-lily-1019", "90785", 1, 2000, ()),
    )
    assert bill.amount_cents == 17000


def test_bill_line_keeps_units_fee_and_modifiers() -> None:
    (bill,) = plan_bills(DAILY, date(2026, 10, 10), [OMAR])
    (line,) = bill.lines
    assert (line.cpt, line.units, line.fee_cents, line.amount_cents) == ("90837", 2, 10000, 20000)
    (lily_line,) = plan_bills(DAILY, date(2026, 10, 5), [LILY_1])[0].lines
    assert lily_line.modifiers == ("95",)


def test_daily_with_nothing_eligible_makes_no_bills() -> None:
    assert plan_bills(DAILY, date(2026, 10, 19), []) == []


# --- Monthly ------------------------------------------------------------------------------------


def test_monthly_makes_nothing_before_the_month_end() -> None:
    assert plan_bills(MONTHLY, date(2026, 10, 30), [LILY_1, LILY_2, OMAR]) == []


def test_monthly_one_bill_per_client_at_month_end() -> None:
    bills = plan_bills(MONTHLY, date(2026, 10, 31), [LILY_2, OMAR, LILY_1])
    assert bills == [
        PlannedBill(
            "cl-lily",
            ("s-lily-1005", "s-lily-1019"),
            (
                BillLine("s-lily-1005", "90834", 1, 15000, ("95",)),
                BillLine("s-lily-1019", "90834", 1, 15000, ()),
                BillLine("s-lily-1019", "90785", 1, 2000, ()),
            ),
        ),
        PlannedBill("cl-omar", ("s-omar-1010",), (BillLine("s-omar-1010", "90837", 2, 10000, ()),)),
    ]
    assert [b.amount_cents for b in bills] == [32000, 20000]


def test_monthly_sessions_on_a_bill_are_in_time_order() -> None:
    a = session("s-b", "cl-1", date(2026, 10, 1), hour=15)
    b = session("s-a", "cl-1", date(2026, 10, 1), hour=9)
    c = session("s-c", "cl-1", date(2026, 9, 20))  # left over from an earlier month
    (bill,) = plan_bills(MONTHLY, date(2026, 10, 31), [a, b, c])
    assert bill.session_ids == ("s-c", "s-a", "s-b")


def test_monthly_on_leap_february() -> None:
    s = session("s-1", "cl-1", date(2028, 2, 10))
    assert plan_bills(MONTHLY, date(2028, 2, 28), [s]) == []
    assert [b.session_ids for b in plan_bills(MONTHLY, date(2028, 2, 29), [s])] == [("s-1",)]


# --- Manual ------------------------------------------------------------------------------------


@pytest.mark.parametrize("night", [date(2026, 10, 19), date(2026, 10, 31)])
def test_manual_makes_no_bills(night: date) -> None:
    assert plan_bills(MANUAL, night, [LILY_1, LILY_2, OMAR]) == []


# --- Properties --------------------------------------------------------------------------------

services = st.lists(
    st.builds(
        Service,
        st.one_of(st.none(), st.sampled_from(["90834", "90837", "90785"])),
        st.integers(1, 99),
        st.integers(0, 100_000),
    ),
    min_size=1,
    max_size=4,
).filter(lambda xs: any(x.cpt for x in xs))


@st.composite
def eligible_sessions(draw: st.DrawFn) -> list[Session]:
    n = draw(st.integers(0, 12))
    return [
        session(
            f"s-{i}",
            draw(st.sampled_from(["cl-a", "cl-b", "cl-c"])),
            date(2026, 10, 1) + timedelta(days=draw(st.integers(0, 30))),
            tuple(draw(services)),
            hour=draw(st.integers(0, 23)),
        )
        for i in range(n)
    ]


@given(
    creation=st.sampled_from([DAILY, MONTHLY]),
    eligible=eligible_sessions(),
)
def test_every_eligible_session_is_billed_once_with_its_cpt_amount(
    creation: BillCreation, eligible: list[Session]
) -> None:
    bills = plan_bills(creation, date(2026, 10, 31), eligible)
    billed = [sid for b in bills for sid in b.session_ids]
    assert sorted(billed) == sorted(s.id for s in eligible)
    assert sum(b.amount_cents for b in bills) == sum(s.billable_amount_cents for s in eligible)
    by_id = {s.id: s for s in eligible}
    for bill in bills:
        assert all(by_id[sid].client_id == bill.client_id for sid in bill.session_ids)
        assert {line.session_id for line in bill.lines} <= set(bill.session_ids)
        assert all(line.cpt for line in bill.lines)
        assert bill.amount_cents == sum(
            by_id[sid].billable_amount_cents for sid in bill.session_ids
        )
    if creation == DAILY:
        assert len(bills) == len(eligible)
    else:
        assert len(bills) == len({s.client_id for s in eligible})
        assert len({b.client_id for b in bills}) == len(bills)


@given(eligible=eligible_sessions(), night=st.dates(date(2026, 1, 1), date(2027, 12, 31)))
def test_monthly_bills_only_on_the_last_night(eligible: list[Session], night: date) -> None:
    bills = plan_bills(MONTHLY, night, eligible)
    if (night + timedelta(days=1)).day != 1:
        assert bills == []
    assert plan_bills(MANUAL, night, eligible) == []
