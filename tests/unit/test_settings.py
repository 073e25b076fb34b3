"""Billing Settings: the account's sharing defaults and what a new client receives.

The account's defaults only seed a new client: the client gets the defaults in force at its
`created_at` (a change applies from its `effective_at` on, inclusive), with its own fields on
top. Later changes of the account never reach an existing client.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.domain.settings import (
    BEGINNING_OF_TIME,
    MAX_DELAY_MINUTES,
    SHARING_FIELDS,
    DefaultsChange,
    DefaultsVersion,
    DocumentType,
    InvalidSetting,
    Sharing,
    defaults_at,
    defaults_history,
    sharing_for_new_client,
)

INITIAL = Sharing(
    share_bills=True,
    bill_delay_minutes=0,
    share_superbills=True,
    superbill_delay_minutes=0,
    share_statements=False,
    statement_delay_minutes=0,
)
CHANGE_AT = datetime(2026, 11, 10, 0, 0, tzinfo=UTC)
HISTORY = defaults_history(INITIAL, [DefaultsChange(CHANGE_AT, {"share_bills": False})])

BOOL_FIELDS = [f for f in SHARING_FIELDS if f.startswith("share_")]
DELAY_FIELDS = [f for f in SHARING_FIELDS if f.endswith("_delay_minutes")]


def sharing(**changes: bool | int) -> Sharing:
    return INITIAL.with_changes(changes)


# --- Validation -------------------------------------------------------------------------------


def test_there_are_six_sharing_fields() -> None:
    assert SHARING_FIELDS == (
        "share_bills",
        "bill_delay_minutes",
        "share_superbills",
        "superbill_delay_minutes",
        "share_statements",
        "statement_delay_minutes",
    )
    assert len(BOOL_FIELDS) == 3
    assert len(DELAY_FIELDS) == 3


@pytest.mark.parametrize("field", DELAY_FIELDS)
@pytest.mark.parametrize("value", [0, 1, 59, 60, 1440, MAX_DELAY_MINUTES])
def test_delays_from_0_to_a_week_are_accepted(field: str, value: int) -> None:
    assert getattr(sharing(**{field: value}), field) == value
    assert MAX_DELAY_MINUTES == 7 * 24 * 60


@pytest.mark.parametrize("field", DELAY_FIELDS)
@pytest.mark.parametrize(
    ("value", "words"),
    [
        (-1, "-1 is not in 0..10080"),
        (10081, "10081 is not in 0..10080"),
        (1_000_000, "1000000 is not in 0..10080"),
        (True, "True is not a whole number of minutes"),
        (False, "False is not a whole number of minutes"),
        (1.5, "1.5 is not a whole number of minutes"),
        (60.0, "60.0 is not a whole number of minutes"),
        ("60", "'60' is not a whole number of minutes"),
        (None, "None is not a whole number of minutes"),
    ],
)
def test_bad_delays_are_refused_naming_field_and_value(
    field: str, value: object, words: str
) -> None:
    with pytest.raises(InvalidSetting) as caught:
        sharing(**{field: value})  # type: ignore[arg-type]  # wrong values on purpose: they must be refused
    assert str(caught.value) == f"{field}: {words}"


@pytest.mark.parametrize("field", BOOL_FIELDS)
@pytest.mark.parametrize(
    ("value", "shown"),
    [(1, "1"), (0, "0"), ("yes", "'yes'"), ("true", "'true'"), (None, "None"), (60, "60")],
)
def test_non_bool_switches_are_refused_naming_field_and_value(
    field: str, value: object, shown: str
) -> None:
    with pytest.raises(InvalidSetting) as caught:
        sharing(**{field: value})  # type: ignore[arg-type]  # wrong values on purpose: they must be refused
    assert str(caught.value) == f"{field}: {shown} is not true or false"


def test_invalid_setting_is_a_value_error() -> None:
    assert issubclass(InvalidSetting, ValueError)


def test_constructing_directly_is_validated_too() -> None:
    with pytest.raises(InvalidSetting, match="bill_delay_minutes: -1"):
        Sharing(True, -1, True, 0, True, 0)


@pytest.mark.parametrize("name", ["auto_bill", "autopay_enabled", "share_bill", "delay"])
def test_unknown_field_in_a_change_is_refused(name: str) -> None:
    with pytest.raises(InvalidSetting, match=f"^{name}: not a sharing setting$"):
        INITIAL.with_changes({name: True})


def test_sharing_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        INITIAL.share_bills = False  # type: ignore[misc]  # assigning a frozen field on purpose


@pytest.mark.parametrize(
    ("kind", "shares", "delay"),
    [
        (DocumentType.BILL, True, 61),
        (DocumentType.SUPERBILL, False, 62),
        (DocumentType.STATEMENT, True, 63),
    ],
)
def test_shares_and_delay_per_document_kind(kind: DocumentType, shares: bool, delay: int) -> None:
    s = Sharing(True, 61, False, 62, True, 63)
    assert s.shares(kind) is shares
    assert s.delay_minutes(kind) == delay


def test_as_dict_round_trips() -> None:
    s = Sharing(False, 10, True, 20, False, 30)
    assert s.as_dict() == {
        "share_bills": False,
        "bill_delay_minutes": 10,
        "share_superbills": True,
        "superbill_delay_minutes": 20,
        "share_statements": False,
        "statement_delay_minutes": 30,
    }
    assert Sharing(**s.as_dict()) == s  # type: ignore[arg-type]  # as_dict() values are bool | int; each field gets its own


# --- Defaults history ----------------------------------------------------------------------------


def test_history_starts_with_the_first_defaults_from_the_beginning_of_time() -> None:
    history = defaults_history(INITIAL, [])
    assert history == [DefaultsVersion(BEGINNING_OF_TIME, INITIAL)]


def test_partial_changes_are_merged_onto_the_previous_defaults() -> None:
    t1 = datetime(2026, 1, 1, tzinfo=UTC)
    t2 = datetime(2026, 2, 1, tzinfo=UTC)
    history = defaults_history(
        INITIAL,
        [
            DefaultsChange(t1, {"share_bills": False}),
            DefaultsChange(t2, {"bill_delay_minutes": 90, "share_statements": True}),
        ],
    )
    assert [v.effective_at for v in history] == [BEGINNING_OF_TIME, t1, t2]
    assert history[1].sharing == sharing(share_bills=False)
    # The second change keeps share_bills=False from the first.
    assert history[2].sharing == sharing(
        share_bills=False, bill_delay_minutes=90, share_statements=True
    )


def test_effective_at_is_stored_in_utc() -> None:
    at = datetime.fromisoformat("2026-11-09T18:00:00-06:00")
    history = defaults_history(INITIAL, [DefaultsChange(at, {"share_bills": False})])
    assert history[1].effective_at == CHANGE_AT
    assert history[1].effective_at.tzinfo == UTC


@pytest.mark.parametrize(
    "second_at",
    [
        CHANGE_AT - timedelta(seconds=1),
        CHANGE_AT - timedelta(days=30),
        datetime.fromisoformat("2026-11-09T17:59:59-06:00"),  # earlier, in another offset
    ],
)
def test_out_of_order_history_is_refused(second_at: datetime) -> None:
    with pytest.raises(InvalidSetting, match=r"settings_history: effective_at .* is not after"):
        defaults_history(
            INITIAL,
            [
                DefaultsChange(CHANGE_AT, {"share_bills": False}),
                DefaultsChange(second_at, {"bill_delay_minutes": 5}),
            ],
        )


def test_naive_effective_at_is_refused() -> None:
    with pytest.raises(ValueError, match="effective_at"):
        defaults_history(INITIAL, [DefaultsChange(datetime(2026, 1, 1), {"share_bills": False})])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bill_delay_minutes": -1}, "bill_delay_minutes: -1"),
        ({"statement_delay_minutes": 10081}, "statement_delay_minutes: 10081"),
        ({"share_superbills": "no"}, "share_superbills: 'no'"),
        ({"autopay_enabled": True}, "autopay_enabled: not a sharing setting"),
    ],
)
def test_an_invalid_change_in_the_history_is_refused(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidSetting, match=message):
        defaults_history(INITIAL, [DefaultsChange(CHANGE_AT, changes)])  # type: ignore[arg-type]  # wrong changes on purpose: they must be refused


@pytest.mark.parametrize(
    ("created_at", "share_bills"),
    [
        (datetime(2026, 11, 1, 15, 0, tzinfo=UTC), True),  # before the change
        (CHANGE_AT - timedelta(microseconds=1), True),  # just before
        (CHANGE_AT, False),  # at effective_at: the change applies (inclusive)
        (datetime.fromisoformat("2026-11-09T18:00:00-06:00"), False),  # the same instant
        (datetime(2026, 11, 15, 15, 0, tzinfo=UTC), False),  # after
        (datetime(1960, 1, 1, tzinfo=UTC), True),  # before any history at all
    ],
)
def test_client_gets_the_defaults_in_force_at_its_creation(
    created_at: datetime, share_bills: bool
) -> None:
    assert defaults_at(HISTORY, created_at).share_bills is share_bills
    assert sharing_for_new_client(HISTORY, created_at, {}).share_bills is share_bills


def test_naive_created_at_is_refused() -> None:
    with pytest.raises(ValueError, match="created_at"):
        defaults_at(HISTORY, datetime(2026, 11, 15))


# --- A new client's own settings ----------------------------------------------------------------


def test_clients_own_fields_win_over_the_defaults() -> None:
    # The sharing_defaults scenario: cl-own is created after share_bills went off.
    got = sharing_for_new_client(
        HISTORY,
        datetime(2026, 11, 15, 16, 0, tzinfo=UTC),
        {"share_bills": True, "bill_delay_minutes": 30},
    )
    assert got == Sharing(
        share_bills=True,
        bill_delay_minutes=30,
        share_superbills=True,
        superbill_delay_minutes=0,
        share_statements=False,
        statement_delay_minutes=0,
    )


def test_own_field_set_to_the_same_as_the_default_is_kept() -> None:
    got = sharing_for_new_client(HISTORY, CHANGE_AT, {"share_bills": False})
    assert got.share_bills is False


def test_own_settings_are_validated() -> None:
    with pytest.raises(InvalidSetting, match="bill_delay_minutes: 10081"):
        sharing_for_new_client(HISTORY, CHANGE_AT, {"bill_delay_minutes": 10081})


def test_later_account_changes_do_not_reach_an_existing_client() -> None:
    created_at = datetime(2026, 11, 1, 15, 0, tzinfo=UTC)
    changes = [DefaultsChange(CHANGE_AT, {"share_bills": False})]
    stored = sharing_for_new_client(defaults_history(INITIAL, changes), created_at, {})
    snapshot = stored.as_dict()

    # The account changes its defaults twice more after the client exists.
    changes.append(DefaultsChange(CHANGE_AT + timedelta(days=1), {"bill_delay_minutes": 240}))
    changes.append(DefaultsChange(CHANGE_AT + timedelta(days=2), {"share_superbills": False}))
    later = defaults_history(INITIAL, changes)

    assert stored.as_dict() == snapshot  # the stored value did not move
    assert stored.share_bills is True
    assert stored.bill_delay_minutes == 0
    # Recomputing for the same created_at under the longer history gives the same value.
    assert sharing_for_new_client(later, created_at, {}) == stored
    # A client created after the changes does get them.
    newer = sharing_for_new_client(later, CHANGE_AT + timedelta(days=3), {})
    assert (newer.share_bills, newer.bill_delay_minutes, newer.share_superbills) == (
        False,
        240,
        False,
    )


# --- Property: the last version at or before created_at, with the client's fields on top -----

switch_value = st.booleans()
delay_value = st.integers(0, MAX_DELAY_MINUTES)


@st.composite
def partial_sharing(draw: st.DrawFn) -> dict[str, bool | int]:
    names = draw(st.lists(st.sampled_from(SHARING_FIELDS), unique=True))
    return {
        name: draw(switch_value if name.startswith("share_") else delay_value) for name in names
    }


full_sharing = st.builds(
    Sharing, switch_value, delay_value, switch_value, delay_value, switch_value, delay_value
)
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@given(
    initial=full_sharing,
    change_times=st.lists(instants, unique=True, max_size=6),
    change_bodies=st.lists(partial_sharing(), min_size=6, max_size=6),
    created_at=instants,
    own=partial_sharing(),
)
def test_new_client_sharing_property(
    initial: Sharing,
    change_times: list[datetime],
    change_bodies: list[dict[str, bool | int]],
    created_at: datetime,
    own: dict[str, bool | int],
) -> None:
    times = sorted(change_times)
    changes = [DefaultsChange(t, body) for t, body in zip(times, change_bodies, strict=False)]
    history = defaults_history(initial, changes)

    # Expected, computed the slow way: fold every change in force at created_at, then own.
    expected = initial.as_dict()
    for change in changes:
        if change.effective_at <= created_at:
            expected.update(change.changes)
    expected.update(own)

    got = sharing_for_new_client(history, created_at, own)
    assert got.as_dict() == expected
    for name, value in own.items():
        assert getattr(got, name) == value
