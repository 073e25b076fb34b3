"""AutoPay's gates and the 60-minute advice.

AutoPay runs only if the account's AutoPay is on, the client's is on and, when the client has a
billing contact, the contact's is on. The payer is the billing contact when there is one, else
the client, and the payer's card must exist and not be expired in the month of the run.
"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from billing_pipeline.domain.settings import (
    SAFE_BILL_DELAY_MINUTES,
    AutopayDecision,
    AutopayReason,
    BillCreation,
    Card,
    Party,
    Sharing,
    autopay_decision,
    settings_warnings,
    short_name,
)

RUN_DATE = date(2026, 11, 1)
CLIENT_CARD = Card("pm_client", "visa", "4242", 12, 2030)
CONTACT_CARD = Card("pm_contact", "mastercard", "4444", 8, 2029)


def client(autopay: bool = True, card: Card | None = CLIENT_CARD) -> Party:
    return Party("client", "cl-lily", autopay, card)


def contact(autopay: bool = True, card: Card | None = CONTACT_CARD) -> Party:
    return Party("billing_contact", "bc-parent", autopay, card)


def decide(
    *,
    account: bool = True,
    cl: Party | None = None,
    bc: Party | None = None,
    run_date: date = RUN_DATE,
) -> AutopayDecision:
    return autopay_decision(
        account_autopay=account,
        client=cl if cl is not None else client(),
        billing_contact=bc,
        run_date=run_date,
    )


# --- Every gate, its reason code and its words --------------------------------------------------

GATES = [
    # (id, decision kwargs, reason, payer kind, describe() with the name, without the name)
    (
        "runs, client pays",
        {},
        AutopayReason.RUNS,
        "client",
        "AutoPay will charge the client Maria C. on the visa card ending 4242",
        "AutoPay will charge the client on the visa card ending 4242",
    ),
    (
        "runs, contact pays",
        {"bc": contact()},
        AutopayReason.RUNS,
        "billing_contact",
        "AutoPay will charge the billing contact Maria C. on the mastercard card ending 4444",
        "AutoPay will charge the billing contact on the mastercard card ending 4444",
    ),
    (
        "account off",
        {"account": False},
        AutopayReason.ACCOUNT_OFF,
        "client",
        "AutoPay is off for the practice (account setting)",
        "AutoPay is off for the practice (account setting)",
    ),
    (
        "client off",
        {"cl": client(autopay=False)},
        AutopayReason.CLIENT_OFF,
        "client",
        "AutoPay is off in the client's Billing Settings",
        "AutoPay is off in the client's Billing Settings",
    ),
    (
        "contact off",
        {"bc": contact(autopay=False)},
        AutopayReason.CONTACT_OFF,
        "billing_contact",
        "AutoPay is off for the billing contact Maria C.",
        "AutoPay is off for the billing contact",
    ),
    (
        "client has no card",
        {"cl": client(card=None)},
        AutopayReason.NO_CARD,
        "client",
        "The client Maria C. has no card on file",
        "The client has no card on file",
    ),
    (
        "contact has no card",
        {"bc": contact(card=None)},
        AutopayReason.NO_CARD,
        "billing_contact",
        "The billing contact Maria C. has no card on file",
        "The billing contact has no card on file",
    ),
    (
        "client card expired",
        {"cl": client(card=Card("pm_old", "visa", "4242", 10, 2026))},
        AutopayReason.CARD_EXPIRED,
        "client",
        "The card of the client Maria C. expired (visa ending 4242, 10/2026)",
        "The card of the client expired (visa ending 4242, 10/2026)",
    ),
    (
        "contact card expired",
        {"bc": contact(card=Card("pm_old", "amex", "0005", 1, 2025))},
        AutopayReason.CARD_EXPIRED,
        "billing_contact",
        "The card of the billing contact Maria C. expired (amex ending 0005, 01/2025)",
        "The card of the billing contact expired (amex ending 0005, 01/2025)",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "reason", "payer_kind", "named", "unnamed"),
    [g[1:] for g in GATES],
    ids=[g[0] for g in GATES],
)
def test_gate(
    kwargs: dict[str, object],
    reason: AutopayReason,
    payer_kind: str,
    named: str,
    unnamed: str,
) -> None:
    decision = decide(**kwargs)  # type: ignore[arg-type]  # parametrized keywords of mixed types
    assert decision.reason == reason
    assert decision.runs is (reason == AutopayReason.RUNS)
    assert decision.payer_kind == payer_kind
    assert decision.describe("Maria Chen") == named
    assert decision.describe() == unnamed
    assert decision.describe(None) == unnamed


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (AutopayReason.RUNS, "runs"),
        (AutopayReason.ACCOUNT_OFF, "account_autopay_off"),
        (AutopayReason.CLIENT_OFF, "client_autopay_off"),
        (AutopayReason.CONTACT_OFF, "billing_contact_autopay_off"),
        (AutopayReason.NO_CARD, "no_payment_method"),
        (AutopayReason.CARD_EXPIRED, "payment_method_expired"),
    ],
)
def test_reason_codes_are_stable(reason: AutopayReason, code: str) -> None:
    assert reason.value == code
    assert str(reason) == code


@pytest.mark.parametrize(
    ("kwargs", "log"),
    [
        ({}, "AutoPay runs, payer client cl-lily"),
        ({"bc": contact()}, "AutoPay runs, payer billing_contact bc-parent"),
        ({"account": False}, "AutoPay is off for the account"),
        ({"cl": client(autopay=False)}, "AutoPay is off for the client"),
        ({"bc": contact(autopay=False)}, "AutoPay is off for billing_contact bc-parent"),
        ({"cl": client(card=None)}, "no payment method on file for client cl-lily"),
        ({"bc": contact(card=None)}, "no payment method on file for billing_contact bc-parent"),
        (
            {"cl": client(card=Card("pm_old", "visa", "4242", 10, 2026))},
            "the payment method of client cl-lily has expired",
        ),
    ],
)
def test_log_text_uses_ids_only(kwargs: dict[str, object], log: str) -> None:
    decision = decide(**kwargs)  # type: ignore[arg-type]  # parametrized keywords of mixed types
    text = decision.log_text()
    assert text == log
    for word in ("Maria", "Chen", "Lily"):
        assert word not in text


names = st.text(alphabet=st.characters(categories=["L"]), min_size=3, max_size=12)


@given(
    first=names,
    last=names,
    account=st.booleans(),
    client_on=st.booleans(),
    contact_on=st.booleans(),
    with_contact=st.booleans(),
)
def test_log_text_never_contains_the_payer_name(
    first: str, last: str, account: bool, client_on: bool, contact_on: bool, with_contact: bool
) -> None:
    decision = decide(
        account=account,
        cl=client(autopay=client_on),
        bc=contact(autopay=contact_on) if with_contact else None,
    )
    full = f"{first} {last}"
    # Only names that cannot occur in the fixed words or ids by accident.
    fixed = "AutoPay runs is off for the account client billing_contact bc-parent cl-lily"
    fixed += " no payment method on file of has expired"
    assume(full.lower() not in fixed.lower())
    assert full not in decision.log_text()
    assert decision.payer.id in decision.log_text() or decision.reason in (
        AutopayReason.ACCOUNT_OFF,
        AutopayReason.CLIENT_OFF,
    )


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("Maria Chen", "Maria C."),
        ("Ana María de la Cruz", "Ana C."),
        ("  Maria   Chen  ", "Maria C."),
        ("Cher", "Cher"),
        ("Acme EAP", "Acme E."),
    ],
)
def test_short_name(name: str, short: str) -> None:
    assert short_name(name) == short


# --- Who pays ---------------------------------------------------------------------------------


def test_payer_is_the_contact_even_when_the_client_has_its_own_card() -> None:
    decision = decide(cl=client(card=CLIENT_CARD), bc=contact(card=CONTACT_CARD))
    assert decision.runs
    assert decision.payer.kind == "billing_contact"
    assert decision.payer.id == "bc-parent"
    assert decision.card == CONTACT_CARD


def test_client_card_does_not_stand_in_for_a_contact_without_one() -> None:
    decision = decide(cl=client(card=CLIENT_CARD), bc=contact(card=None))
    assert not decision.runs
    assert decision.reason == AutopayReason.NO_CARD
    assert decision.payer.kind == "billing_contact"
    assert decision.card is None


def test_client_card_does_not_stand_in_for_an_expired_contact_card() -> None:
    expired = Card("pm_old", "visa", "1111", 9, 2026)
    decision = decide(cl=client(card=CLIENT_CARD), bc=contact(card=expired))
    assert decision.reason == AutopayReason.CARD_EXPIRED
    assert decision.card == expired


def test_payer_is_the_client_when_there_is_no_contact() -> None:
    decision = decide(cl=client(card=CLIENT_CARD), bc=None)
    assert decision.runs
    assert decision.payer.kind == "client"
    assert decision.payer.id == "cl-lily"
    assert decision.card == CLIENT_CARD


def test_client_switch_is_needed_even_with_a_contact_that_has_autopay() -> None:
    decision = decide(cl=client(autopay=False), bc=contact(autopay=True))
    assert decision.reason == AutopayReason.CLIENT_OFF
    assert not decision.runs


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        # The practice's switch comes first, then the client's, the contact's, then the card.
        (
            {"account": False, "cl": client(autopay=False, card=None), "bc": contact(False, None)},
            AutopayReason.ACCOUNT_OFF,
        ),
        ({"cl": client(autopay=False, card=None), "bc": contact(False)}, AutopayReason.CLIENT_OFF),
        ({"bc": contact(autopay=False, card=None)}, AutopayReason.CONTACT_OFF),
        (
            {"bc": contact(card=Card("pm_x", "visa", "0000", 1, 2020))},
            AutopayReason.CARD_EXPIRED,
        ),
    ],
)
def test_gates_are_checked_in_order(kwargs: dict[str, object], reason: AutopayReason) -> None:
    assert decide(**kwargs).reason == reason  # type: ignore[arg-type]  # parametrized keywords of mixed types


# --- Card expiry: good through the last day of its month ---------------------------------------


@pytest.mark.parametrize(
    ("exp_month", "exp_year", "run_date", "expired"),
    [
        (10, 2026, date(2026, 10, 1), False),
        (10, 2026, date(2026, 10, 31), False),
        (10, 2026, date(2026, 11, 1), True),
        (12, 2026, date(2026, 12, 31), False),
        (12, 2026, date(2027, 1, 1), True),
        (1, 2027, date(2026, 12, 31), False),
        (1, 2027, date(2027, 1, 31), False),
        (1, 2027, date(2027, 2, 1), True),
        (2, 2028, date(2028, 2, 29), False),
        (2, 2028, date(2028, 3, 1), True),
        (11, 2026, date(2025, 12, 31), False),
    ],
)
def test_card_expiry_at_month_and_year_boundaries(
    exp_month: int, exp_year: int, run_date: date, expired: bool
) -> None:
    card = Card("pm_1", "visa", "4242", exp_month, exp_year)
    assert card.expired_on(run_date) is expired
    for bc in (None, contact(card=card)):
        cl = client(card=card) if bc is None else client(card=None)
        decision = decide(cl=cl, bc=bc, run_date=run_date)
        assert decision.runs is not expired
        assert decision.reason == (AutopayReason.CARD_EXPIRED if expired else AutopayReason.RUNS)


# --- Property: runs iff every switch is on and the payer card is good ---------------------------

cards = st.one_of(
    st.none(),
    st.builds(
        Card,
        st.just("pm_x"),
        st.just("visa"),
        st.just("4242"),
        st.integers(1, 12),
        st.integers(2024, 2029),
    ),
)


@given(
    account=st.booleans(),
    client_on=st.booleans(),
    client_card=cards,
    has_contact=st.booleans(),
    contact_on=st.booleans(),
    contact_card=cards,
    run_date=st.dates(min_value=date(2024, 1, 1), max_value=date(2029, 12, 31)),
)
def test_runs_iff_all_switches_on_and_payer_card_valid(
    account: bool,
    client_on: bool,
    client_card: Card | None,
    has_contact: bool,
    contact_on: bool,
    contact_card: Card | None,
    run_date: date,
) -> None:
    cl = client(autopay=client_on, card=client_card)
    bc = contact(autopay=contact_on, card=contact_card) if has_contact else None
    decision = decide(account=account, cl=cl, bc=bc, run_date=run_date)

    payer_card = contact_card if has_contact else client_card
    switches = account and client_on and (contact_on if has_contact else True)
    card_ok = payer_card is not None and (payer_card.exp_year, payer_card.exp_month) >= (
        run_date.year,
        run_date.month,
    )
    assert decision.runs is (switches and card_ok)
    assert (decision.reason == AutopayReason.RUNS) is decision.runs
    assert decision.payer_kind == ("billing_contact" if has_contact else "client")
    assert decision.card == payer_card


# --- The 60-minute advice ---------------------------------------------------------------------


def bill_sharing(share_bills: bool = True, delay: int = 0) -> Sharing:
    return Sharing(share_bills, delay, True, 0, True, 0)


def warnings_for(
    bill_creation: BillCreation = BillCreation.DAILY,
    account_autopay: bool = True,
    client_autopay: bool = True,
    share_bills: bool = True,
    delay: int = 30,
) -> list[str]:
    return [
        w.code
        for w in settings_warnings(
            client_id="cl-1",
            bill_creation=bill_creation,
            account_autopay=account_autopay,
            client_autopay=client_autopay,
            sharing=bill_sharing(share_bills, delay),
        )
    ]


WARNS = ["bill_delay_under_60_minutes"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"bill_creation": BillCreation.DAILY, "delay": 0}, WARNS),
        ({"bill_creation": BillCreation.DAILY, "delay": 30}, WARNS),
        ({"bill_creation": BillCreation.DAILY, "delay": 59}, WARNS),
        ({"bill_creation": BillCreation.MONTHLY, "delay": 59}, WARNS),
        ({"bill_creation": BillCreation.DAILY, "delay": 60}, []),
        ({"bill_creation": BillCreation.MONTHLY, "delay": 60}, []),
        ({"bill_creation": BillCreation.DAILY, "delay": 120}, []),
        ({"bill_creation": BillCreation.MANUAL, "delay": 0}, []),
        ({"account_autopay": False, "delay": 0}, []),
        ({"client_autopay": False, "delay": 0}, []),
        ({"share_bills": False, "delay": 0}, []),
    ],
)
def test_sixty_minute_warning(kwargs: dict[str, object], expected: list[str]) -> None:
    assert warnings_for(**kwargs) == expected  # type: ignore[arg-type]  # parametrized keywords of mixed types


def test_warning_names_the_client_and_the_delay() -> None:
    (warning,) = settings_warnings(
        client_id="cl-own",
        bill_creation=BillCreation.DAILY,
        account_autopay=True,
        client_autopay=True,
        sharing=bill_sharing(True, 30),
    )
    assert warning.client_id == "cl-own"
    assert warning.code == "bill_delay_under_60_minutes"
    assert "30 minutes" in warning.message
    assert "at least 60" in warning.message
    assert SAFE_BILL_DELAY_MINUTES == 60


@given(
    bill_creation=st.sampled_from(list(BillCreation)),
    account_autopay=st.booleans(),
    client_autopay=st.booleans(),
    share_bills=st.booleans(),
    delay=st.integers(0, 10080),
)
def test_sixty_minute_warning_property(
    bill_creation: BillCreation,
    account_autopay: bool,
    client_autopay: bool,
    share_bills: bool,
    delay: int,
) -> None:
    should_warn = (
        bill_creation != BillCreation.MANUAL
        and account_autopay
        and client_autopay
        and share_bills
        and delay < 60
    )
    got = warnings_for(bill_creation, account_autopay, client_autopay, share_bills, delay)
    assert got == (WARNS if should_warn else [])
