"""Payments: Stripe through the real `stripe` SDK (localstripe in tests and the demo).

The resource adapts Stripe to what AutoPay needs: register a card, charge an attempt with our
own deterministic idempotency key, and find out what happened to an attempt whose outcome we
never recorded. It returns frozen results; it never raises for a decline.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import stripe
from pydantic import Field, PrivateAttr

from billing_pipeline.domain.autopay import Outcome


class PaymentsNotConfigured(RuntimeError):
    """No Stripe key: AutoPay and card registration cannot run."""


@dataclass(frozen=True)
class RegisteredCard:
    stripe_customer_id: str
    stripe_payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class ChargeRequest:
    attempt_id: int
    client_id: str
    idempotency_key: str
    stripe_customer_id: str
    stripe_payment_method_id: str
    amount_cents: int
    currency: str = "usd"


@dataclass(frozen=True)
class ChargeResult:
    attempt_id: int
    outcome: Outcome  # PENDING means: we do not know (network, 5xx, 429 after retries)
    payment_intent_id: str | None
    failure_code: str | None


class _RateLimiter:
    """At most `rate` calls per second across the pool's threads."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


def _plain(obj: stripe.StripeObject) -> dict:  # type: ignore[type-arg]
    return obj.to_dict()


def _outcome_of_intent(intent: stripe.PaymentIntent) -> tuple[Outcome, str | None]:
    pi = _plain(intent)
    status = pi.get("status")
    if status in ("succeeded", "processing"):
        return Outcome.SUCCEEDED, None
    if status == "requires_action":
        return Outcome.REQUIRES_ACTION, "authentication_required"
    error = pi.get("last_payment_error") or {}
    code = error.get("decline_code") or error.get("code")
    if status in ("requires_payment_method", "canceled"):
        return Outcome.DECLINED, code or "card_declined"
    return Outcome.PENDING, None


class Payments(dg.ConfigurableResource):
    """Stripe, for AutoPay. The key comes only from the environment (`EnvVar`)."""

    api_key: str | None = Field(default=None, description="Stripe secret key (EnvVar only).")
    api_base: str | None = Field(
        default=None,
        description="Stripe API base URL; empty means STRIPE_API_BASE, else Stripe's own.",
    )
    timeout_seconds: float = 20.0
    attempts_per_call: int = 4
    backoff_seconds: float = 0.5
    max_workers: int = 8
    requests_per_second: float = 25.0

    _client: stripe.StripeClient | None = PrivateAttr(default=None)
    _limiter: _RateLimiter | None = PrivateAttr(default=None)

    def _stripe(self) -> stripe.StripeClient:
        if not self.api_key:
            raise PaymentsNotConfigured(
                "STRIPE_API_KEY is not set: AutoPay and card registration need a Stripe key"
            )
        if self._client is None:
            # Not a secret, so read here (at first use, never at import) when not configured.
            base = self.api_base or os.environ.get("STRIPE_API_BASE")
            self._client = stripe.StripeClient(
                self.api_key,
                base_addresses={"api": base} if base else None,
                # Our own loop retries with our own key; the SDK's retries stay off.
                max_network_retries=0,
                http_client=stripe.RequestsClient(timeout=self.timeout_seconds),
            )
            self._limiter = _RateLimiter(self.requests_per_second)
        return self._client

    # --- cards -------------------------------------------------------------------------------

    def register_card(
        self, *, owner_ref: str, number: str, exp_month: int, exp_year: int
    ) -> RegisteredCard:
        """A Stripe customer (metadata only: our id, never a name) with this test card."""
        client = self._stripe()
        customer = client.v1.customers.create(params={"metadata": {"owner_ref": owner_ref}})
        try:
            pm = client.v1.payment_methods.create(
                params={
                    "type": "card",
                    "card": {
                        "number": number,
                        "exp_month": exp_month,
                        "exp_year": exp_year,
                        "cvc": "123",
                    },
                }
            )
            client.v1.payment_methods.attach(pm.id, params={"customer": customer.id})
        except stripe.StripeError:
            # Leave no customer behind for a card Stripe refused.
            try:
                client.v1.customers.delete(customer.id)
            except stripe.StripeError:
                pass
            raise
        card = _plain(pm).get("card") or {}
        return RegisteredCard(
            stripe_customer_id=customer.id,
            stripe_payment_method_id=pm.id,
            brand=str(card.get("brand") or "card"),
            last4=str(card.get("last4") or number[-4:]),
            exp_month=exp_month,
            exp_year=exp_year,
        )

    def delete_customer(self, stripe_customer_id: str) -> None:
        self._stripe().v1.customers.delete(stripe_customer_id)

    # --- charges -----------------------------------------------------------------------------

    def charge(self, request: ChargeRequest) -> ChargeResult:
        """One off-session charge. Declines and authentication come back as results; network
        failures, 5xx and 429 are retried with backoff and then reported as PENDING, never as
        a decline, for reconciliation to settle."""
        client = self._stripe()
        params = {
            "amount": request.amount_cents,
            "currency": request.currency,
            "customer": request.stripe_customer_id,
            "payment_method": request.stripe_payment_method_id,
            "confirm": True,
            "off_session": True,
            "metadata": {
                "attempt_id": str(request.attempt_id),
                "client_id": request.client_id,
                "idempotency_key": request.idempotency_key,
            },
        }
        for attempt in range(self.attempts_per_call):
            assert self._limiter is not None
            self._limiter.wait()
            try:
                pi = client.v1.payment_intents.create(
                    params=params,  # type: ignore[arg-type]
                    options={"idempotency_key": request.idempotency_key},
                )
            except stripe.CardError as err:
                code = getattr(err, "code", None)
                pi_id = self._intent_id_of_error(err)
                if code == "authentication_required":
                    return ChargeResult(request.attempt_id, Outcome.REQUIRES_ACTION, pi_id, code)
                decline = (err.json_body or {}).get("error", {}).get("decline_code")
                return ChargeResult(
                    request.attempt_id, Outcome.DECLINED, pi_id, decline or code or "card_declined"
                )
            except (stripe.RateLimitError, stripe.APIConnectionError) as err:
                self._sleep_before_retry(attempt, err)
                continue
            except stripe.APIError as err:
                if (err.http_status or 500) >= 500:
                    self._sleep_before_retry(attempt, err)
                    continue
                raise
            except stripe.InvalidRequestError as err:
                if err.http_status == 429:
                    self._sleep_before_retry(attempt, err)
                    continue
                raise
            outcome, code = _outcome_of_intent(pi)
            return ChargeResult(request.attempt_id, outcome, pi.id, code)
        return ChargeResult(request.attempt_id, Outcome.PENDING, None, "stripe_unreachable")

    @staticmethod
    def _intent_id_of_error(err: stripe.StripeError) -> str | None:
        body = (err.json_body or {}).get("error", {})
        intent = body.get("payment_intent") or {}
        return intent.get("id") if isinstance(intent, dict) else None

    def _sleep_before_retry(self, attempt: int, err: stripe.StripeError) -> None:
        retry_after = None
        headers = getattr(err, "headers", None) or {}
        if "Retry-After" in headers:
            try:
                retry_after = float(headers["Retry-After"])
            except ValueError:
                retry_after = None
        if attempt + 1 >= self.attempts_per_call:
            return
        delay = retry_after if retry_after is not None else self.backoff_seconds * 2**attempt
        time.sleep(min(delay, 30.0) * (1 + random.random() * 0.25))

    def charge_many(
        self,
        requests: Sequence[ChargeRequest],
        on_result: Callable[[ChargeResult], None],
    ) -> None:
        """Charge through a bounded pool under the rate limit; `on_result` records each
        outcome as soon as it is known (in the calling thread, one at a time)."""
        if not requests:
            return
        self._stripe()
        if self.max_workers <= 1 or len(requests) == 1:
            for req in requests:
                on_result(self.charge(req))
            return
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            for result in pool.map(self.charge, requests):
                on_result(result)

    # --- reconciliation ----------------------------------------------------------------------

    def retrieve_intent(self, payment_intent_id: str) -> tuple[Outcome, str | None]:
        pi = self._stripe().v1.payment_intents.retrieve(payment_intent_id)
        return _outcome_of_intent(pi)

    def intents_with_metadata(self) -> Iterator[stripe.PaymentIntent]:
        """Every PaymentIntent that carries our attempt metadata (localstripe has no Search
        and no filter on metadata, so we list and filter)."""
        page = self._stripe().v1.payment_intents.list(params={"limit": 100})
        for pi in page.auto_paging_iter():
            if (_plain(pi).get("metadata") or {}).get("attempt_id"):
                yield pi

    def find_intent_for_attempt(
        self, attempt_id: int, intents: Iterable[stripe.PaymentIntent] | None = None
    ) -> tuple[str | None, Outcome, str | None]:
        """(intent id, outcome, failure code) of the intent made for this attempt; PENDING
        with no id when Stripe has none (the charge never reached it)."""
        best: tuple[str | None, Outcome, str | None] = (None, Outcome.PENDING, None)
        for pi in intents if intents is not None else self.intents_with_metadata():
            if (_plain(pi).get("metadata") or {}).get("attempt_id") != str(attempt_id):
                continue
            outcome, code = _outcome_of_intent(pi)
            if outcome == Outcome.SUCCEEDED:
                return pi.id, outcome, code
            best = (pi.id, outcome, code)
        return best
