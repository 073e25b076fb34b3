"""AutoPay's outcomes against localstripe, through the real assets, on SQLite and PostgreSQL:
a success, a decline (and the stop after three), authentication required (and a replaced card),
an expired card, a missing card, a billing contact's card, and a Stripe that hangs, answers 500
or 429 (a proxy in front of localstripe). Whatever Stripe does, no one is charged twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, update

from billing_pipeline.db import models as m
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.resources.payments import Payments
from billing_pipeline.scenario.validate import payment_method_id
from billing_pipeline.services.explain import explain
from tests.integration.autopay_harness import (
    API_KEY,
    CARD_AUTHENTICATION,
    CARD_DECLINED,
    FIRST_NIGHT,
    Seen,
    StripeProxy,
    assert_charged_once,
    autopay_figures,
    card,
    client,
    ledger,
    load,
    run_night,
    scenario,
    session,
)

pytestmark = pytest.mark.slow  # Stripe, Dagster runs and drivers: not for the fast tier

N1, N2, N3, N4, N5 = (FIRST_NIGHT + timedelta(days=i) for i in range(5))


def fast_payments(url: str, **overrides: object) -> Payments:
    """Small timeouts and backoff so a misbehaving Stripe costs seconds, not minutes."""
    config: dict[str, object] = {
        "api_key": API_KEY,
        "api_base": url,
        "timeout_seconds": 1.0,
        "attempts_per_call": 3,
        "backoff_seconds": 0.05,
        "max_workers": 4,
    }
    config.update(overrides)
    return Payments(**config)  # type: ignore[arg-type]  # one dict of mixed field types; the resource validates each


def attempts(engine: Engine) -> list[tuple[str, str, str | None, int]]:
    with engine.connect() as conn:
        return [
            (r.client_id, r.status, r.failure_code, r.amount_cents)
            for r in conn.execute(select(m.AutopayAttempt.__table__).order_by(m.AutopayAttempt.id))
        ]


def bill_states(engine: Engine) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for r in conn.execute(select(m.Bill.client_id, m.Bill.status).order_by(m.Bill.id)):
            out.setdefault(r.client_id, []).append(r.status)
    return out


def test_success_pays_the_bills_and_a_rerun_charges_no_one_again(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    load(
        engine,
        scenario([client("cl-ok", card())], [session("cl-ok", N1), session("cl-ok", N1, n=1)]),
        tmp_path,
        localstripe.url,
    )
    payments = fast_payments(localstripe.url)
    first = run_night(database_url, payments, N1)
    assert autopay_figures(first)["outcome_succeeded"] == 1
    assert attempts(engine) == [("cl-ok", "succeeded", None, 30000)]
    assert bill_states(engine) == {"cl-ok": ["paid", "paid"]}
    again = run_night(database_url, payments, N1)
    assert autopay_figures(again).get("attempts", 0) == 0
    book = ledger(engine, localstripe.url)
    assert len(book.succeeded_intents()) == 1
    assert_charged_once(book)
    # Stripe carries ids only: no name, no email (no PHI), and our deterministic key.
    (pi,) = book.succeeded_intents()
    assert set(pi.metadata) == {"attempt_id", "idempotency_key", "client_id", "account_id", "night"}
    assert pi.metadata["night"] == N1.isoformat()


def test_a_decline_keeps_its_code_retries_nightly_and_stops_after_three(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    load(
        engine,
        scenario([client("cl-dec", card(CARD_DECLINED))], [session("cl-dec", N1)]),
        tmp_path,
        localstripe.url,
    )
    payments = fast_payments(localstripe.url)
    for night in (N1, N2, N3, N4):
        run_night(database_url, payments, night)
    # Three declines on three nights, each with the code Stripe gave; the fourth night stops.
    assert attempts(engine) == [("cl-dec", "declined", "card_declined", 15000)] * 3
    assert bill_states(engine) == {"cl-dec": ["open"]}
    figures = autopay_figures(run_night(database_url, payments, N5))
    assert figures.get("skipped_declined_three_times") == 1
    book = ledger(engine, localstripe.url)
    assert book.succeeded_intents() == []
    assert [i.status for i in book.intents] == ["requires_payment_method"] * 3
    assert_charged_once(book)

    with engine.connect() as conn:
        words = explain(conn, "cl-dec", N5)
    assert "declined by the card issuer (card_declined) on the visa card ending 0341" in words
    assert "decline 1 of 3 in a row on this card, so AutoPay tries again on the next night" in words
    assert (
        "decline 3 of 3 in a row on this card, so AutoPay stops charging this card until the "
        "payment method is replaced"
    ) in words
    assert "the card was declined three times in a row" in words


def replace_card(engine: Engine, stripe_url: str, client_id: str, number: str) -> str:
    """Staff put a new card on file for the client: a new payment method (a new id, as every
    card added is), registered in Stripe, and the client's card on file points at it."""
    registered = Payments(api_key=API_KEY, api_base=stripe_url).register_card(
        owner_ref=client_id, number=number, exp_month=12, exp_year=2031
    )
    new_id = payment_method_id("client", client_id) + "-2"
    with engine.begin() as conn:
        account_id = conn.execute(
            select(m.Client.account_id).where(m.Client.id == client_id)
        ).scalar_one()
        conn.execute(
            insert(m.PaymentMethod.__table__).values(
                id=new_id,
                account_id=account_id,
                owner_type="client",
                owner_id=client_id,
                stripe_customer_id=registered.stripe_customer_id,
                stripe_payment_method_id=registered.stripe_payment_method_id,
                brand=registered.brand,
                last4=registered.last4,
                exp_month=registered.exp_month,
                exp_year=registered.exp_year,
                created_at=datetime.now(UTC),
            )
        )
        conn.execute(
            update(m.Client.__table__)
            .where(m.Client.id == client_id)
            .values(payment_method_id=new_id)
        )
    return new_id


def test_authentication_required_is_not_retried_until_the_card_is_replaced(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    load(
        engine,
        scenario(
            [client("cl-3ds", card(CARD_AUTHENTICATION))],
            [session("cl-3ds", N1), session("cl-3ds", N2)],
        ),
        tmp_path,
        localstripe.url,
    )
    payments = fast_payments(localstripe.url)
    first = run_night(database_url, payments, N1)
    assert autopay_figures(first)["outcome_requires_action"] == 1
    assert attempts(engine) == [("cl-3ds", "requires_action", "authentication_required", 15000)]
    # Next night: a balance remains, but the card needs the cardholder: no new attempt.
    second = run_night(database_url, payments, N2)
    assert autopay_figures(second).get("skipped_requires_action") == 1
    assert len(attempts(engine)) == 1
    with engine.connect() as conn:
        words = explain(conn, "cl-3ds", N2)
    assert (
        "the bank asked for the cardholder's authentication on the visa card ending 3155, which "
        "AutoPay cannot give while nobody is there; it is not retried until the payment method "
        "is replaced"
    ) in words
    assert "AutoPay will not charge this card: the card needs the cardholder's authentication" in (
        words
    )

    # Staff replace the card; the next night charges the whole open balance on the new one.
    replace_card(engine, localstripe.url, "cl-3ds", "4242424242424242")
    third = run_night(database_url, payments, N3)
    assert autopay_figures(third)["outcome_succeeded"] == 1
    assert attempts(engine)[-1] == ("cl-3ds", "succeeded", None, 30000)
    assert bill_states(engine) == {"cl-3ds": ["paid", "paid"]}
    book = ledger(engine, localstripe.url)
    assert [i.status for i in book.intents] == ["requires_action", "succeeded"]
    assert_charged_once(book)
    with engine.connect() as conn:
        words = explain(conn, "cl-3ds", N3)
    assert "is replaced (it has been replaced since)" in words
    assert "charged successfully on the visa card ending 4242" in words


def test_expired_and_missing_cards_are_not_charged_and_a_billing_contact_pays(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    contact = {
        "id": "bc-parent",
        "account_id": "acct-ap",
        "name": "Pat Parent",
        "email": "pat@example.com",
        "autopay_enabled": True,
        "payment_method": card(),
    }
    load(
        engine,
        scenario(
            [
                client("cl-expired", card(exp_month=10, exp_year=2026)),
                client("cl-nocard", None),
                client("cl-child", card(CARD_DECLINED), billing_contact_id="bc-parent"),
            ],
            [session(c, N1) for c in ("cl-expired", "cl-nocard", "cl-child")],
            billing_contacts=[contact],
        ),
        tmp_path,
        localstripe.url,
    )
    figures = autopay_figures(run_night(database_url, fast_payments(localstripe.url), N1))
    assert figures.get("skipped_payment_method_expired") == 1
    assert figures.get("skipped_no_payment_method") == 1
    assert figures["outcome_succeeded"] == 1
    with engine.connect() as conn:
        (attempt,) = conn.execute(select(m.AutopayAttempt.__table__)).all()
        contact_card = conn.execute(
            select(m.PaymentMethod.__table__).where(m.PaymentMethod.owner_id == "bc-parent")
        ).one()
    # The billing contact's card is charged (not the client's own, which would decline).
    assert (attempt.client_id, attempt.payer, attempt.payer_id) == (
        "cl-child",
        "billing_contact",
        "bc-parent",
    )
    assert attempt.payment_method_id == contact_card.id
    book = ledger(engine, localstripe.url)
    (pi,) = book.intents
    assert pi.customer == contact_card.stripe_customer_id
    assert pi.metadata["client_id"] == "cl-child"
    assert bill_states(engine) == {
        "cl-expired": ["open"],
        "cl-nocard": ["open"],
        "cl-child": ["paid"],
    }
    assert_charged_once(book)
    with engine.connect() as conn:
        assert "The card of the client Test C. expired (visa ending 4242, 10/2026)" in explain(
            conn, "cl-expired", N1
        )
        assert "The client Test C. has no card on file" in explain(conn, "cl-nocard", N1)
        assert "from the billing contact: charged successfully on the visa card ending 4242" in (
            explain(conn, "cl-child", N1)
        )


# --- A Stripe that misbehaves ---------------------------------------------------------------------


def only_charges(action: object, times: int | None = None):
    """A proxy rule: `action` for PaymentIntent creations (the first `times` of them, or all),
    every other request forwarded."""

    def rule(seen: Seen, n: int) -> object:
        if seen.method == "POST" and seen.path == "/v1/payment_intents":
            if times is None or n < times:
                return action
        return "forward"

    return rule


@pytest.mark.parametrize(
    ("behaviour", "action"),
    [
        ("hangs", "hang"),
        ("answers 500", (500, {})),
        ("answers 429", (429, {"Retry-After": "0"})),
    ],
)
def test_stripe_down_leaves_the_attempt_pending_never_declined_then_reconciles_once(
    engine: Engine,
    database_url: str,
    localstripe: LocalStripe,
    tmp_path: Path,
    behaviour: str,
    action: object,
) -> None:
    load(
        engine,
        scenario([client("cl-wait", card())], [session("cl-wait", N1)]),
        tmp_path,
        localstripe.url,
    )
    with StripeProxy(localstripe.url, only_charges(action)) as proxy:
        started = time.monotonic()
        # The practice's AutoPay is not done: the run fails, naming it.
        down = run_night(database_url, fast_payments(proxy.url), N1, expect_failure=True)
        figures = autopay_figures(down)
        took = time.monotonic() - started
        assert proxy.charges_seen() == 3  # retried inside the run (attempts_per_call)
    assert took < 30, f"Stripe {behaviour}: the run took {took:.1f}s"
    assert figures["left_pending_for_reconciliation"] == 1
    assert figures.get("outcome_declined", 0) == 0
    (row,) = attempts(engine)
    assert row[1] == "pending"  # never a decline: the outcome is unknown
    assert bill_states(engine) == {"cl-wait": ["open"]}
    with engine.connect() as conn:
        words = explain(conn, "cl-wait", N1)
    assert "outcome not known yet (" in words
    assert "the next run asks Stripe before anything is charged again" in words

    # Stripe is back. The next run reconciles first: Stripe has no charge for the attempt,
    # nothing it was claimed on changed, so it is sent again with its key and stored amount.
    again = autopay_figures(run_night(database_url, fast_payments(localstripe.url), N1))
    assert again["resent_after_reconciliation"] == 1
    assert again["outcome_succeeded"] == 1
    assert attempts(engine) == [("cl-wait", "succeeded", None, 15000)]
    assert bill_states(engine) == {"cl-wait": ["paid"]}
    assert_charged_once(ledger(engine, localstripe.url))


def test_transient_500_and_429_are_retried_within_the_run(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    load(
        engine,
        scenario(
            [client("cl-a", card()), client("cl-b", card())],
            [session("cl-a", N1), session("cl-b", N1), session("cl-a", N2), session("cl-b", N2)],
        ),
        tmp_path,
        localstripe.url,
    )
    # A timeout that a loaded machine does not reach: this test is about 500 and 429 answers;
    # a request that times out has no known outcome and is another test's case.
    with StripeProxy(localstripe.url, only_charges((500, {}), times=2)) as proxy:
        figures = autopay_figures(
            run_night(database_url, fast_payments(proxy.url, timeout_seconds=10.0), N1)
        )
        assert proxy.charges_seen() == 4
    assert figures["outcome_succeeded"] == 2

    # 429 with Retry-After: the pool pauses for it, then charges.
    with StripeProxy(localstripe.url, only_charges((429, {"Retry-After": "1"}), times=1)) as proxy:
        started = time.monotonic()
        figures = autopay_figures(
            run_night(
                database_url, fast_payments(proxy.url, max_workers=2, timeout_seconds=10.0), N2
            )
        )
        took = time.monotonic() - started
        assert proxy.charges_seen() == 3
    assert figures["outcome_succeeded"] == 2
    assert took >= 1.0  # Retry-After was honoured
    assert bill_states(engine) == {"cl-a": ["paid", "paid"], "cl-b": ["paid", "paid"]}
    assert_charged_once(ledger(engine, localstripe.url))


def test_a_500_after_stripe_charged_is_found_not_charged_again(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    """The nasty one: Stripe charged, then the answer was lost (a 500 from a proxy that
    forwarded). localstripe ignores the Idempotency-Key, so sending again would charge twice;
    the retry looks for the attempt's PaymentIntent first and finds it."""
    load(
        engine,
        scenario([client("cl-lost", card())], [session("cl-lost", N1)]),
        tmp_path,
        localstripe.url,
    )
    with StripeProxy(localstripe.url, only_charges("forward_then_500", times=1)) as proxy:
        figures = autopay_figures(run_night(database_url, fast_payments(proxy.url), N1))
        assert proxy.charges_seen() == 1  # found by the lookup, never sent again
    assert figures["outcome_succeeded"] == 1
    book = ledger(engine, localstripe.url)
    assert len(book.succeeded_intents()) == 1
    assert_charged_once(book)


def test_a_request_stripe_refuses_is_an_error_not_a_decline(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    load(
        engine,
        scenario([client("cl-gone", card())], [session("cl-gone", N1), session("cl-gone", N2)]),
        tmp_path,
        localstripe.url,
    )
    # The customer was deleted in Stripe behind our back: Stripe answers 404.
    with engine.connect() as conn:
        customer = conn.execute(select(m.PaymentMethod.stripe_customer_id)).scalar_one()
    Payments(api_key=API_KEY, api_base=localstripe.url).delete_customer(customer)
    payments = fast_payments(localstripe.url)
    run_night(database_url, payments, N1)
    run_night(database_url, payments, N2)
    # Errors are not declines: tried every night, never stopped by the three-declines rule.
    assert [(s, c) for _, s, c, _ in attempts(engine)] == [("error", "invalid_request_404")] * 2
    with engine.connect() as conn:
        assert "Stripe refused the request (invalid_request_404); no money moved" in explain(
            conn, "cl-gone", N2
        )


@pytest.mark.parametrize("change", ["autopay_off", "card_replaced", "bill_paid_elsewhere"])
def test_an_attempt_stripe_never_saw_is_not_sent_again_once_its_grounds_changed(
    engine: Engine,
    database_url: str,
    localstripe: LocalStripe,
    tmp_path: Path,
    change: str,
) -> None:
    load(
        engine,
        scenario([client("cl-chg", card())], [session("cl-chg", N1)]),
        tmp_path,
        localstripe.url,
    )
    with StripeProxy(localstripe.url, only_charges((503, {}))) as proxy:
        run_night(database_url, fast_payments(proxy.url), N1, expect_failure=True)
    assert [s for _, s, _, _ in attempts(engine)] == ["pending"]
    with engine.begin() as conn:
        if change == "autopay_off":
            conn.execute(
                update(m.Client.__table__)
                .where(m.Client.id == "cl-chg")
                .values(autopay_enabled=False)
            )
        elif change == "bill_paid_elsewhere":
            conn.execute(update(m.Bill.__table__).values(status="paid", paid_at=datetime.now(UTC)))
    if change == "card_replaced":
        replace_card(engine, localstripe.url, "cl-chg", "4242424242424242")

    figures = autopay_figures(run_night(database_url, fast_payments(localstripe.url), N1))
    code = {
        "autopay_off": "not_sent_autopay_off",
        "card_replaced": "not_sent_payment_method_changed",
        "bill_paid_elsewhere": "not_sent_balance_changed",
    }[change]
    assert figures[f"reconciled_{code}"] == 1
    assert attempts(engine)[0] == ("cl-chg", "error", code, 15000)
    book = ledger(engine, localstripe.url)
    if change == "card_replaced":
        # A new card is a new key: tonight's attempt on it charges the open balance, once.
        assert attempts(engine)[1:] == [("cl-chg", "succeeded", None, 15000)]
        assert len(book.succeeded_intents()) == 1
    else:
        assert len(attempts(engine)) == 1 and book.intents == []
    if change != "bill_paid_elsewhere":  # that bill is paid with no charge of ours, by design
        assert_charged_once(book)
    with engine.connect() as conn:
        words = explain(conn, "cl-chg", N1)
    reason = {
        "autopay_off": "AutoPay no longer runs for this client",
        "card_replaced": "the payment method changed since",
        "bill_paid_elsewhere": "the bills it covered changed since",
    }[change]
    assert (
        "Stripe never received it (Stripe did not answer, or the run stopped first) and it "
        f"was not sent again because {reason}; no money moved"
    ) in words


@pytest.mark.parametrize(
    ("answer", "outcome", "code"),
    [
        (
            {
                "error": {
                    "type": "card_error",
                    "code": "authentication_required",
                    "decline_code": "authentication_required",
                    "payment_intent": {"id": "pi_stripe_3ds", "status": "requires_payment_method"},
                }
            },
            "requires_action",
            "authentication_required",
        ),
        (
            {
                "error": {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "insufficient_funds",
                    "payment_intent": {"id": "pi_stripe_nsf", "status": "requires_payment_method"},
                }
            },
            "declined",
            "insufficient_funds",
        ),
    ],
    ids=["authentication_required", "insufficient_funds"],
)
def test_real_stripe_answers_402_and_decline_codes_where_localstripe_does_not(
    engine: Engine,
    database_url: str,
    localstripe: LocalStripe,
    tmp_path: Path,
    answer: dict[str, object],
    outcome: str,
    code: str,
) -> None:
    """Stripe answers an off-session authentication with 402 `authentication_required` and a
    decline with its `decline_code`; localstripe does neither. Both are handled."""
    load(
        engine,
        scenario([client("cl-real", card())], [session("cl-real", N1)]),
        tmp_path,
        localstripe.url,
    )
    with StripeProxy(localstripe.url, only_charges((402, {}, answer))) as proxy:
        run_night(database_url, fast_payments(proxy.url), N1)
    with engine.connect() as conn:
        row = conn.execute(select(m.AutopayAttempt.__table__)).one()
    assert (row.status, row.failure_code) == (outcome, code)
    error = answer["error"]
    assert isinstance(error, dict)
    assert row.stripe_payment_intent_id == error["payment_intent"]["id"]
