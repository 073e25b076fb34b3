"""Settings are history: "what was X at instant T".

A record's field starts with the value the record was created with and changes from the
instant of each change on (the contract's "Changes over time"). A change at T is in force at T
and after, never before; changes of the same field apply in instant order, so a later change
never reaches an earlier night. Every step asks at its own instant (bills and superbills at
00:00, AutoPay at 00:30, delivery at the document's creation).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

from billing_pipeline.domain.calendar import require_aware

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Change(Generic[T]):
    """A value in force from `at` on."""

    at: datetime
    value: T


def change_in_force(changes: Iterable[Change[T]], at: datetime) -> Change[T] | None:
    """The last change at or before `at` (None: none yet, the initial value holds). Two
    changes at one instant are refused where changes are written; here the later listed wins."""
    at = require_aware(at, "at")
    found: Change[T] | None = None
    for change in changes:
        when = require_aware(change.at, "change.at")
        if when <= at and (found is None or when >= found.at):
            found = change
    return found


def value_at(initial: T, changes: Iterable[Change[T]], at: datetime) -> T:
    """The value in force at instant `at`: the last change at or before it, else `initial`."""
    change = change_in_force(changes, at)
    return initial if change is None else change.value


def values_at(changes: Iterable[tuple[K, Change[T]]], at: datetime | None) -> dict[K, Change[T]]:
    """For each key (a record's field), the change in force at `at` (None: the latest one);
    keys with no change in force are absent (their initial value holds)."""
    out: dict[K, Change[T]] = {}
    for key, change in changes:
        when = require_aware(change.at, "change.at")
        if at is not None and when > require_aware(at, "at"):
            continue
        held = out.get(key)
        if held is None or when >= held.at:
            out[key] = change
    return out


class Origin(StrEnum):
    """Where a value in force came from (for `explain`)."""

    CREATED = "created"  # the record's own value since its creation (a client's sharing
    # fields: the account's new-client defaults at creation, or the client's own)
    CHANGED = "changed"  # a change, from its instant on


@dataclass(frozen=True)
class Sourced(Generic[T]):
    value: T
    origin: Origin
    since: datetime | None  # the change's instant, for CHANGED


def sourced_value(initial: T, changes: Iterable[Change[T]], at: datetime) -> Sourced[T]:
    change = change_in_force(changes, at)
    if change is None:
        return Sourced(initial, Origin.CREATED, None)
    return Sourced(change.value, Origin.CHANGED, change.at)


def overlay(initial: Mapping[str, T], in_force: Mapping[str, Change[T]]) -> dict[str, T]:
    """A record's fields with the changes in force over its initial values."""
    return {name: in_force[name].value if name in in_force else v for name, v in initial.items()}
