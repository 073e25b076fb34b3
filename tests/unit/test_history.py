"""Settings are history: "what was X at instant T" (domain/history.py), property-based.

A change at T is in force at T and after, never before; the last change at or before T wins;
later changes never reach an earlier instant; instants compare as instants whatever their
offsets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.domain.history import (
    Change,
    Origin,
    change_in_force,
    overlay,
    sourced_value,
    value_at,
    values_at,
)

START = datetime(2026, 11, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)

minutes = st.integers(min_value=0, max_value=60 * 24 * 60)
offsets = st.integers(min_value=-12 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)


def at(minute: int, tz: timezone = UTC) -> datetime:
    return (START + minute * MINUTE).astimezone(tz)


@st.composite
def histories(draw: st.DrawFn) -> list[Change[int]]:
    """Changes at distinct instants, in any order, each written in any offset."""
    instants = draw(st.lists(minutes, unique=True, max_size=8))
    return [Change(at(m, draw(offsets)), i) for i, m in enumerate(instants)]


@given(history=histories(), when=minutes, tz=offsets)
def test_the_value_is_the_last_change_at_or_before_the_instant(
    history: list[Change[int]], when: int, tz: timezone
) -> None:
    instant = at(when, tz)
    held = [c for c in history if c.at <= instant]
    expected = max(held, key=lambda c: c.at).value if held else -1
    assert value_at(-1, history, instant) == expected


@given(history=histories(), tz=offsets)
def test_a_change_is_in_force_at_its_instant_not_one_minute_before(
    history: list[Change[int]], tz: timezone
) -> None:
    for change in history:
        assert value_at(-1, history, change.at.astimezone(tz)) == change.value
        before = value_at(-1, history, change.at - MINUTE)
        assert before != change.value
        after = change_in_force(history, change.at + MINUTE)
        assert after is not None and after.at >= change.at


@given(
    history=histories(),
    later=st.lists(st.integers(min_value=1, max_value=10**6), max_size=8),
    when=minutes,
)
def test_later_changes_never_reach_an_earlier_instant(
    history: list[Change[int]], later: list[int], when: int
) -> None:
    """Changes dated after T (however many, recorded whenever) leave the value at T as it was."""
    instant = at(when)
    after_t = [Change(instant + n * MINUTE, 100 + i) for i, n in enumerate(later)]
    assert value_at(-1, history + after_t, instant) == value_at(-1, history, instant)


@given(history=histories(), when=minutes)
def test_order_of_the_list_does_not_matter(history: list[Change[int]], when: int) -> None:
    instant = at(when)
    assert value_at(-1, history, instant) == value_at(-1, list(reversed(history)), instant)


@given(history=histories(), when=st.one_of(st.none(), minutes))
def test_values_at_answers_per_field_as_value_at_does(
    history: list[Change[int]], when: int | None
) -> None:
    keyed = [("even" if c.value % 2 == 0 else "odd", c) for c in history]
    instant = None if when is None else at(when)
    found = values_at(keyed, instant)
    for key in ("even", "odd"):
        own = [c for k, c in keyed if k == key]
        if instant is None:
            expected = max(own, key=lambda c: c.at).value if own else None
        else:
            expected = value_at(None, own, instant)
        assert (found[key].value if key in found else None) == expected


def test_where_a_value_came_from() -> None:
    history = [Change(at(60), True)]
    assert sourced_value(False, history, at(59)).origin == Origin.CREATED
    found = sourced_value(False, history, at(60))
    assert (found.value, found.origin, found.since) == (True, Origin.CHANGED, at(60))
    assert overlay({"a": 1, "b": 2}, {"b": Change(at(0), 3)}) == {"a": 1, "b": 3}


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        value_at(0, [Change(at(0), 1)], datetime(2026, 11, 2))
    with pytest.raises(ValueError, match="no UTC offset"):
        value_at(0, [Change(datetime(2026, 11, 2), 1)], at(0))
