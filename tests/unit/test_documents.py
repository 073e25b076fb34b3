"""Superbills and statements: which night makes them, for which month and which clients."""

from __future__ import annotations

from calendar import monthrange
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.domain.documents import (
    PlannedSuperbill,
    StatementFacts,
    clients_needing_statements,
    needs_statement,
    plan_superbills,
    statement_month,
    superbill_month,
)
from billing_pipeline.domain.sessions import (
    Ineligible,
    Service,
    Session,
    SessionSource,
    SessionStatus,
    why_not_eligible,
)

NY = "America/New_York"
CPT = Service("90834", 1, 15000)
NO_CPT = Service(None, 1, 15000)


def session(
    sid: str,
    client_id: str,
    starts_at: str,
    *,
    status: SessionStatus = SessionStatus.ATTENDED,
    source: SessionSource = SessionSource.NATIVE,
    services: tuple[Service, ...] = (CPT,),
) -> Session:
    return Session(
        sid, client_id, datetime.fromisoformat(starts_at), status, source, "11", services
    )


# --- Superbill month ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("night", "day_of_month", "month"),
    [
        (date(2026, 11, 4), 5, (2026, 10)),  # D+1 = 5 Nov: October's superbills
        (date(2026, 11, 5), 5, None),
        (date(2026, 11, 3), 5, None),
        (date(2026, 10, 31), 1, (2026, 10)),  # D+1 = 1 Nov: still the month before, October
        (date(2026, 12, 31), 1, (2026, 12)),  # D+1 = 1 Jan 2027: December 2026
        (date(2027, 1, 14), 15, (2026, 12)),
        (date(2026, 11, 29), 31, (2026, 10)),  # day 31 in a 30-day month: 30 Nov
        (date(2026, 11, 30), 31, None),  # D+1 = 1 Dec is not it
        (date(2026, 2, 27), 31, (2026, 1)),  # 28 Feb 2026
        (date(2026, 2, 27), 29, (2026, 1)),
        (date(2028, 2, 27), 31, None),  # leap year: the day is the 29th
        (date(2028, 2, 28), 31, (2028, 1)),
        (date(2026, 4, 29), 31, (2026, 3)),  # 30 Apr
        (date(2026, 4, 29), 30, (2026, 3)),
        (date(2026, 4, 28), 29, (2026, 3)),
        (date(2026, 4, 29), 29, None),
    ],
)
def test_superbill_month(night: date, day_of_month: int, month: tuple[int, int] | None) -> None:
    assert superbill_month(night, day_of_month) == month


@given(
    night=st.dates(date(2000, 1, 1), date(2099, 12, 31)),
    day_of_month=st.integers(1, 31),
)
def test_superbill_month_is_the_month_before_the_superbill_day(
    night: date, day_of_month: int
) -> None:
    got = superbill_month(night, day_of_month)
    today = night + timedelta(days=1)
    is_the_day = today.day == min(day_of_month, monthrange(today.year, today.month)[1])
    if not is_the_day:
        assert got is None
        return
    prev = today.replace(day=1) - timedelta(days=1)
    assert got == (prev.year, prev.month)


@pytest.mark.parametrize(
    ("night", "month"),
    [
        (date(2026, 10, 31), (2026, 10)),
        (date(2026, 11, 30), (2026, 11)),
        (date(2026, 12, 31), (2026, 12)),
        (date(2026, 2, 28), (2026, 2)),
        (date(2028, 2, 29), (2028, 2)),
        (date(2028, 2, 28), None),
        (date(2026, 11, 1), None),
        (date(2026, 11, 15), None),
    ],
)
def test_statement_month_is_the_month_that_just_ended(
    night: date, month: tuple[int, int] | None
) -> None:
    assert statement_month(night) == month


# --- Which clients get a superbill --------------------------------------------------------------

OCT = (2026, 10)


def test_only_clients_with_superbills_enabled() -> None:
    sessions = {
        "cl-on": [session("s-on", "cl-on", "2026-10-05T14:00:00-04:00")],
        "cl-off": [session("s-off", "cl-off", "2026-10-05T14:00:00-04:00")],
        "cl-missing": [session("s-missing", "cl-missing", "2026-10-05T14:00:00-04:00")],
    }
    got = plan_superbills(sessions, {"cl-on": True, "cl-off": False}, NY, OCT)
    assert got == [PlannedSuperbill("cl-on", "2026-10", ("s-on",))]


def test_only_attended_sessions_with_a_cpt_code_of_that_month() -> None:
    sessions = {
        "cl-1": [
            session("s-19", "cl-1", "2026-10-19T14:00:00-04:00"),
            session("s-05", "cl-1", "2026-10-05T14:00:00-04:00"),
            session(
                "s-cancel", "cl-1", "2026-10-06T14:00:00-04:00", status=SessionStatus.CANCELLED
            ),
            session("s-noshow", "cl-1", "2026-10-07T14:00:00-04:00", status=SessionStatus.NO_SHOW),
            session("s-nocpt", "cl-1", "2026-10-08T14:00:00-04:00", services=(NO_CPT,)),
            session(
                "s-imported",
                "cl-1",
                "2026-10-09T14:00:00-04:00",
                source=SessionSource.IMPORTED,
                services=(NO_CPT,),
            ),
            session("s-mixed", "cl-1", "2026-10-10T14:00:00-04:00", services=(NO_CPT, CPT)),
            session("s-sep", "cl-1", "2026-09-30T23:00:00-04:00"),
            session("s-nov", "cl-1", "2026-11-01T00:00:00-04:00"),
            # 22:30 in New York on 31 Oct is 1 Nov in UTC: it belongs to October.
            session("s-late", "cl-1", "2026-10-31T22:30:00-04:00"),
        ]
    }
    (sb,) = plan_superbills(sessions, {"cl-1": True}, NY, OCT)
    assert sb.client_id == "cl-1"
    assert sb.month == "2026-10"
    assert sb.session_ids == ("s-05", "s-mixed", "s-19", "s-late")


def test_no_superbill_without_qualifying_sessions() -> None:
    sessions = {
        "cl-1": [
            session(
                "s-cancel", "cl-1", "2026-10-06T14:00:00-04:00", status=SessionStatus.CANCELLED
            ),
            session("s-nov", "cl-1", "2026-11-02T10:00:00-05:00"),
        ],
        "cl-2": [],
    }
    assert plan_superbills(sessions, {"cl-1": True, "cl-2": True}, NY, OCT) == []


def test_superbills_do_not_depend_on_auto_bill_or_on_being_billed() -> None:
    # A client left out of automatic bills still gets superbills when they are enabled.
    s = session("s-1", "cl-pro-bono", "2026-10-05T14:00:00-04:00")
    assert why_not_eligible(s, NY, date(2026, 10, 31), auto_bill=False, billed=False) == (
        Ineligible.CLIENT_EXCLUDED
    )
    got = plan_superbills({"cl-pro-bono": [s]}, {"cl-pro-bono": True}, NY, OCT)
    assert got == [PlannedSuperbill("cl-pro-bono", "2026-10", ("s-1",))]


def test_superbills_are_one_per_client_in_client_order() -> None:
    sessions = {
        "cl-b": [session("s-b", "cl-b", "2026-10-05T14:00:00-04:00")],
        "cl-a": [
            session("s-a2", "cl-a", "2026-10-20T14:00:00-04:00"),
            session("s-a1", "cl-a", "2026-10-02T14:00:00-04:00"),
        ],
    }
    got = plan_superbills(sessions, {"cl-a": True, "cl-b": True}, NY, OCT)
    assert got == [
        PlannedSuperbill("cl-a", "2026-10", ("s-a1", "s-a2")),
        PlannedSuperbill("cl-b", "2026-10", ("s-b",)),
    ]


@given(
    enabled=st.dictionaries(st.sampled_from(["cl-a", "cl-b", "cl-c"]), st.booleans()),
    rows=st.lists(
        st.tuples(
            st.sampled_from(["cl-a", "cl-b", "cl-c"]),
            st.sampled_from(list(SessionStatus)),
            st.booleans(),
            st.integers(-40, 70),
        ),
        max_size=15,
    ),
)
def test_plan_superbills_property(
    enabled: dict[str, bool], rows: list[tuple[str, SessionStatus, bool, int]]
) -> None:
    by_client: dict[str, list[Session]] = {"cl-a": [], "cl-b": [], "cl-c": []}
    for i, (client_id, status, cpt, offset) in enumerate(rows):
        day = date(2026, 10, 1) + timedelta(days=offset)
        by_client[client_id].append(
            session(
                f"s-{i}",
                client_id,
                f"{day.isoformat()}T12:00:00-04:00",
                status=status,
                services=(CPT,) if cpt else (NO_CPT,),
            )
        )
    got = {sb.client_id: set(sb.session_ids) for sb in plan_superbills(by_client, enabled, NY, OCT)}
    expected = {}
    for client_id, sessions in by_client.items():
        if not enabled.get(client_id, False):
            continue
        ids = {
            s.id
            for s in sessions
            if s.status == SessionStatus.ATTENDED
            and s.has_cpt
            and (s.starts_at.year, s.starts_at.month) == OCT
        }
        if ids:
            expected[client_id] = ids
    assert got == expected


# --- Which clients get a statement --------------------------------------------------------------


@pytest.mark.parametrize(
    ("bills", "payments", "balance", "needed"),
    [
        (1, 0, 0, True),  # a bill in the month (even if already paid)
        (0, 1, 0, True),  # a payment in the month
        (0, 0, 15000, True),  # an open balance from earlier months
        (0, 0, 1, True),
        (2, 1, 5000, True),
        (0, 0, 0, False),  # nothing happened and nothing is owed
    ],
)
def test_needs_statement(bills: int, payments: int, balance: int, needed: bool) -> None:
    assert needs_statement(StatementFacts("cl-1", bills, payments, balance)) is needed


def test_clients_needing_statements_are_sorted_and_filtered() -> None:
    facts = [
        StatementFacts("cl-rosa", 1, 0, 15000),
        StatementFacts("cl-idle", 0, 0, 0),
        StatementFacts("cl-omar", 0, 0, 20000),
        StatementFacts("cl-lily", 1, 1, 0),
    ]
    assert clients_needing_statements(facts) == ["cl-lily", "cl-omar", "cl-rosa"]
    assert clients_needing_statements([]) == []


@given(
    bills=st.integers(0, 5),
    payments=st.integers(0, 5),
    balance=st.integers(0, 10**7),
)
def test_needs_statement_property(bills: int, payments: int, balance: int) -> None:
    assert needs_statement(StatementFacts("c", bills, payments, balance)) is (
        bills > 0 or payments > 0 or balance > 0
    )
