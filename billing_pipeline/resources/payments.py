"""Payments: Stripe through the real `stripe` SDK (localstripe in tests and the demo).

The resource adapts Stripe to what AutoPay needs: register a card, charge an attempt with our
own deterministic idempotency key, and find out what happened to an attempt whose outcome we
never recorded. It returns frozen results; it never raises for a decline.

Two facts shape the charge loop. localstripe ignores `Idempotency-Key` (Stripe honours it), so
after a failure that may have reached Stripe (a timeout, a dropped connection, a 5xx) we look
for the attempt's PaymentIntent before sending again: the guarantee comes from our records and
Stripe's state, not from the header. Lookups ask Stripe for one customer's intents (and, after
a failed create, only those created since the call began), never the account's whole history;
localstripe has no Search and no `customer=` or `created` filter on PaymentIntents (it answers
400), so there they list everything and filter on our metadata.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar, cast

import dagster as dg
import stripe
from pydantic import Field, PrivateAttr
from stripe.params import PaymentIntentCreateParams

from billing_pipeline.domain.autopay import Outcome

T = TypeVar("T")

# Metadata keys we put on every PaymentIntent: ids only, never a name (no PHI in Stripe).
META_ATTEMPT = "attempt_id"
# How far Stripe's clock may be behind ours when we ask for intents created since an instant.
CLOCK_SKEW = timedelta(minutes=10)
META_KEY = "idempotency_key"
META_CLIENT = "client_id"
META_ACCOUNT = "account_id"
META_NIGHT = "night"


# Guards the lazy creation of each resource's client (the pool's threads share it).
_CLIENT_LOCK = threading.Lock()


STRIPE_KEY_ENV = "STRIPE_API_KEY"


class PaymentsNotConfigured(RuntimeError):
    """No Stripe key: AutoPay and card registration cannot run."""


def missing_key_message(env_var: str = STRIPE_KEY_ENV) -> str:
    """What to tell people when the Stripe key is missing: the setting and where it goes."""
    return (
        f"{env_var} is not set: AutoPay and Stripe reconciliation need a Stripe secret key. "
        f"Set {env_var} in the environment of the processes that run Dagster's runs (the "
        "dagster-daemon and dagster-webserver, or a .env file in the folder they start from; "
        "`billing-pipeline ui` sets it for the demo's local Stripe), then re-execute AutoPay "
        "for these nights: the steps that do not talk to Stripe (bills, superbills, "
        "statements) ran without it."
    )


class StripeUnavailable(RuntimeError):
    """Stripe did not answer a lookup (network, 5xx, 429) after our retries."""


@dataclass(frozen=True)
class RegisteredCard:
    stripe_customer_id: str
    stripe_payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    # Stripe's fingerprint of the number: the same number gives the same one (the contract
    # counts failed attempts per card; re-entering identical details is the same card).
    fingerprint: str | None = None


@dataclass(frozen=True)
class ChargeRequest:
    attempt_id: int
    client_id: str
    idempotency_key: str
    stripe_customer_id: str
    stripe_payment_method_id: str
    amount_cents: int
    account_id: str = ""
    night: date | None = None
    currency: str = "usd"

    def metadata(self) -> dict[str, str]:
        meta = {
            META_ATTEMPT: str(self.attempt_id),
            META_KEY: self.idempotency_key,
            META_CLIENT: self.client_id,
        }
        if self.account_id:
            meta[META_ACCOUNT] = self.account_id
        if self.night is not None:
            meta[META_NIGHT] = self.night.isoformat()
        return meta


@dataclass(frozen=True)
class ChargeResult:
    attempt_id: int
    outcome: Outcome  # PENDING means: we do not know (network, 5xx, 429 after retries)
    payment_intent_id: str | None
    failure_code: str | None


@dataclass(frozen=True)
class IntentState:
    """A PaymentIntent as reconciliation needs it."""

    id: str
    status: str
    outcome: Outcome
    failure_code: str | None
    amount_cents: int
    customer: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def belongs_to(self, attempt_id: int, idempotency_key: str, stripe_customer_id: str) -> bool:
        """Made for this attempt: our attempt id and key in its metadata, on the attempt's
        customer (attempt ids alone repeat across databases sharing one Stripe account)."""
        return (
            self.metadata.get(META_ATTEMPT) == str(attempt_id)
            and self.metadata.get(META_KEY) == idempotency_key
            and self.customer == stripe_customer_id
        )


class _RateLimiter:
    """At most `rate` calls per second across the pool's threads; a 429 pauses them all."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            time.sleep(slot - now)

    def pause(self, seconds: float) -> None:
        """Stripe said 429: nobody sends for `seconds`."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


def _plain(obj: stripe.StripeObject) -> dict[str, Any]:
    return obj.to_dict()


def _outcome_of_status(pi: Mapping[str, object]) -> tuple[Outcome, str | None]:
    status = pi.get("status")
    if status == "succeeded":
        return Outcome.SUCCEEDED, None
    if status == "requires_action":
        return Outcome.REQUIRES_ACTION, "authentication_required"
    error = pi.get("last_payment_error") or {}
    code = None
    if isinstance(error, dict):
        code = error.get("decline_code") or error.get("code")
    if status == "requires_payment_method" and code:
        return Outcome.DECLINED, str(code)
    if status == "canceled":
        return Outcome.ERROR, "payment_intent_canceled"
    # processing, requires_confirmation, requires_capture, or a fresh intent with no attempt
    # made yet: not an outcome. Reconciliation leaves the attempt pending and looks again.
    return Outcome.PENDING, None


def _state(pi: stripe.PaymentIntent) -> IntentState:
    d = _plain(pi)
    outcome, code = _outcome_of_status(d)
    customer = d.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return IntentState(
        id=str(d["id"]),
        status=str(d.get("status")),
        outcome=outcome,
        failure_code=code,
        amount_cents=int(d.get("amount") or 0),
        customer=customer,
        metadata={str(k): str(v) for k, v in (d.get("metadata") or {}).items()},
    )


def _error_body(err: stripe.StripeError) -> dict[str, Any]:
    # Stripe's SDK types the answer as `object`; an error answer from Stripe (or localstripe)
    # is a JSON object.
    return (cast(dict[str, Any] | None, err.json_body) or {}).get("error", {}) or {}


def _retry_after(err: stripe.StripeError) -> float | None:
    headers = getattr(err, "headers", None) or {}
    for name in ("Retry-After", "retry-after"):
        if name in headers:
            try:
                return float(headers[name])
            except (TypeError, ValueError):
                return None
    return None


class Payments(dg.ConfigurableResource):
    """Stripe, for AutoPay. The key comes only from the environment: the variable named by
    `api_key_env_var`, read when Stripe is first called (never at import, never into run config,
    so the UI never shows it; it is never logged or put in metadata). It is optional in the
    config on purpose: a Dagster `EnvVar` that is not set makes the whole job's config invalid,
    and a backfill would fail before its first bill; without a key only the steps that talk to
    Stripe fail, naming the variable. Every request has a timeout; charges go through a bounded
    pool under a rate limit, and 429s pause the whole pool."""

    api_key: str | None = Field(
        default=None,
        description="Stripe secret key for tests and the CLI; leave empty in Dagster (the key "
        "then comes from the variable `api_key_env_var`).",
    )
    api_key_env_var: str = Field(
        default=STRIPE_KEY_ENV,
        description="The environment variable holding the Stripe secret key (its name, not the "
        "key).",
    )
    api_base: str | None = Field(
        default=None,
        description="Stripe API base URL; empty means STRIPE_API_BASE, else Stripe's own.",
    )
    timeout_seconds: float = Field(default=20.0, description="Per request (connect and read).")
    attempts_per_call: int = Field(
        default=4, description="Tries per charge on network errors, 5xx and 429."
    )
    backoff_seconds: float = Field(default=0.5, description="First retry delay; doubles.")
    max_workers: int = Field(default=8, description="Charges in flight at once (1: in turn).")
    requests_per_second: float = Field(default=25.0, description="Across the pool.")

    _client: stripe.StripeClient | None = PrivateAttr(default=None)
    _limiter: _RateLimiter | None = PrivateAttr(default=None)
    # Set once the server refused list filters (localstripe): then lookups list everything.
    _no_list_filters: bool = PrivateAttr(default=False)

    def _key(self) -> str | None:
        return self.api_key or os.environ.get(self.api_key_env_var) or None

    def configured(self) -> bool:
        """A Stripe key is there (given, or in the environment variable)."""
        return self._key() is not None

    def missing_key_message(self) -> str:
        return missing_key_message(self.api_key_env_var)

    def _stripe(self) -> stripe.StripeClient:
        key = self._key()
        if key is None:
            raise PaymentsNotConfigured(
                f"{self.api_key_env_var} is not set: AutoPay and card registration need a "
                "Stripe key"
            )
        with _CLIENT_LOCK:
            if self._client is None:
                # Not a secret, so read here (at first use, never at import) when not set.
                base = self.api_base or os.environ.get("STRIPE_API_BASE")
                self._client = stripe.StripeClient(
                    key,
                    base_addresses={"api": base} if base else None,
                    # Our own loop retries with our own key; the SDK's retries stay off.
                    max_network_retries=0,
                    http_client=stripe.RequestsClient(timeout=self.timeout_seconds),
                )
                self._limiter = _RateLimiter(self.requests_per_second)
            return self._client

    def max_call_seconds(self) -> float:
        """The longest one charge can take: each try a create and a lookup, each bounded by
        the timeout, and a backoff of at most 30 s (plus jitter) between tries. A pending
        attempt younger than this may still be in a live run's hands."""
        return self.attempts_per_call * (2 * self.timeout_seconds + 30 * 1.25)

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
            fingerprint=str(card["fingerprint"])[:64] if card.get("fingerprint") else None,
        )

    def delete_customer(self, stripe_customer_id: str) -> None:
        self._stripe().v1.customers.delete(stripe_customer_id)

    # --- charges -----------------------------------------------------------------------------

    def charge(self, request: ChargeRequest) -> ChargeResult:
        """One off-session charge. Declines and authentication come back as results; a request
        Stripe refuses (4xx) is an error, with no money moved; network failures, 5xx and 429
        are retried with backoff and then reported as PENDING (never as a decline), for
        reconciliation to settle.

        After a failure that may have reached Stripe, the next try first looks for the
        attempt's PaymentIntent and only sends again when there is none."""
        client = self._stripe()
        limiter = self._limiter
        assert limiter is not None
        params: PaymentIntentCreateParams = {
            "amount": request.amount_cents,
            "currency": request.currency,
            "customer": request.stripe_customer_id,
            "payment_method": request.stripe_payment_method_id,
            "confirm": True,
            "off_session": True,
            "metadata": request.metadata(),
        }
        maybe_sent = False
        last_code = "stripe_unreachable"
        call_started = datetime.now(UTC)
        for attempt in range(self.attempts_per_call):
            if maybe_sent:
                try:
                    # Made, if at all, by this call: the customer's intents since it began
                    # (less a margin for the clocks), not the account's history.
                    found = self.find_intent(
                        request.attempt_id,
                        request.idempotency_key,
                        request.stripe_customer_id,
                        self.intents_with_metadata(
                            tries=1,
                            customer=request.stripe_customer_id,
                            created_since=call_started - CLOCK_SKEW,
                        ),
                    )
                except StripeUnavailable:
                    continue
                if found is not None:
                    if found.outcome == Outcome.PENDING:
                        return ChargeResult(
                            request.attempt_id, Outcome.PENDING, found.id, "stripe_processing"
                        )
                    return ChargeResult(
                        request.attempt_id, found.outcome, found.id, found.failure_code
                    )
                maybe_sent = False
            limiter.wait()
            try:
                pi = client.v1.payment_intents.create(
                    params=params,
                    options={"idempotency_key": request.idempotency_key},
                )
            except stripe.CardError as err:
                return self._card_error(request, err)
            except stripe.RateLimitError as err:
                # Refused before any work was done: safe to send again after the pause.
                last_code = "rate_limited"
                self._sleep_before_retry(attempt, err)
                continue
            except stripe.APIConnectionError as err:
                maybe_sent, last_code = True, "stripe_unreachable"
                self._sleep_before_retry(attempt, err)
                continue
            except stripe.APIError as err:
                if (err.http_status or 500) < 500:
                    raise
                maybe_sent, last_code = True, "stripe_server_error"
                self._sleep_before_retry(attempt, err)
                continue
            except stripe.InvalidRequestError as err:
                if err.http_status == 429:
                    last_code = "rate_limited"
                    self._sleep_before_retry(attempt, err)
                    continue
                # Stripe refused the request itself (a missing customer or card): no money
                # moved, and sending it again would not change the answer.
                return ChargeResult(
                    request.attempt_id,
                    Outcome.ERROR,
                    self._intent_id_of_error(err),
                    str(err.code or f"invalid_request_{err.http_status or 400}"),
                )
            state = _state(pi)
            return ChargeResult(request.attempt_id, state.outcome, state.id, state.failure_code)
        return ChargeResult(request.attempt_id, Outcome.PENDING, None, last_code)

    def _card_error(self, request: ChargeRequest, err: stripe.CardError) -> ChargeResult:
        body = _error_body(err)
        code = getattr(err, "code", None) or body.get("code")
        pi_id = self._intent_id_of_error(err)
        if code == "authentication_required":
            # Stripe's answer off-session (localstripe answers requires_action instead).
            return ChargeResult(request.attempt_id, Outcome.REQUIRES_ACTION, pi_id, code)
        decline = body.get("decline_code")  # Stripe's; localstripe gives none
        return ChargeResult(
            request.attempt_id, Outcome.DECLINED, pi_id, decline or code or "card_declined"
        )

    @staticmethod
    def _intent_id_of_error(err: stripe.StripeError) -> str | None:
        body = _error_body(err)
        intent = body.get("payment_intent") or {}
        return intent.get("id") if isinstance(intent, dict) else None

    def _sleep_before_retry(self, attempt: int, err: stripe.StripeError) -> None:
        retry_after = _retry_after(err)
        if retry_after is not None and self._limiter is not None:
            self._limiter.pause(retry_after)
        if attempt + 1 >= self.attempts_per_call:
            return
        delay = retry_after if retry_after is not None else self.backoff_seconds * 2**attempt
        time.sleep(min(delay, 30.0) * (1 + random.random() * 0.25))

    def charge_many(
        self,
        requests: Sequence[ChargeRequest],
        on_result: Callable[[ChargeResult], None],
        before_send: Callable[[ChargeRequest], None] | None = None,
    ) -> None:
        """Charge through a bounded pool under the rate limit; `on_result` records each
        outcome as soon as it is known (in the calling thread, one at a time).

        If recording fails, no further charge is sent (those not sent stay pending for
        reconciliation) and the error propagates. A charge that raises unexpectedly is
        reported PENDING (we cannot know whether it reached Stripe) and the first such error
        is raised once every other result is recorded."""
        if not requests:
            return
        self._stripe()
        failures: list[BaseException] = []
        if self.max_workers <= 1:
            for req in requests:
                if before_send:
                    before_send(req)
                result, error = self._charge_or_pending(req)
                if error is not None:
                    failures.append(error)
                on_result(result)
            if failures:
                raise failures[0]
            return
        pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="charge")
        try:
            pending: set[Future[tuple[ChargeResult, BaseException | None]]] = set()
            for req in requests:
                if before_send:
                    before_send(req)
                pending.add(pool.submit(self._charge_or_pending, req))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result, error = future.result()
                    if error is not None:
                        failures.append(error)
                    on_result(result)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if failures:
            raise failures[0]

    def _charge_or_pending(
        self, request: ChargeRequest
    ) -> tuple[ChargeResult, BaseException | None]:
        try:
            return self.charge(request), None
        except Exception as err:
            code = f"unexpected_{type(err).__name__}"[:64]
            return ChargeResult(request.attempt_id, Outcome.PENDING, None, code), err

    # --- reconciliation ----------------------------------------------------------------------

    def _lookup(self, call: Callable[[], T], tries: int | None = None) -> T:
        """A read-only request, retried on network errors, 5xx and 429 (safe: it changes
        nothing); StripeUnavailable when Stripe still does not answer."""
        assert self._limiter is not None
        for attempt in range(tries or self.attempts_per_call):
            self._limiter.wait()
            try:
                return call()
            except (stripe.APIConnectionError, stripe.RateLimitError) as err:
                self._sleep_before_retry(attempt, err)
            except stripe.APIError as err:
                if (err.http_status or 500) < 500:
                    raise
                self._sleep_before_retry(attempt, err)
            except stripe.InvalidRequestError as err:
                if err.http_status != 429:
                    raise
                self._sleep_before_retry(attempt, err)
        raise StripeUnavailable("Stripe did not answer a PaymentIntent lookup")

    def retrieve_intent(self, payment_intent_id: str) -> IntentState | None:
        """The PaymentIntent by id; None when Stripe does not have it."""
        client = self._stripe()
        try:
            pi = self._lookup(lambda: client.v1.payment_intents.retrieve(payment_intent_id))
        except stripe.InvalidRequestError as err:
            if err.http_status == 404:
                return None
            raise
        return _state(pi)

    def intents_with_metadata(
        self,
        tries: int | None = None,
        *,
        customer: str | None = None,
        created_since: datetime | None = None,
    ) -> list[IntentState]:
        """The PaymentIntents that carry our attempt metadata, of `customer` and created at or
        after `created_since` when given: Stripe filters by them (`customer=`, `created[gte]`),
        so a lookup reads one customer's recent intents, not the account's whole history.
        A server that refuses those filters (localstripe answers 400) is listed whole and
        filtered here, and is not asked with filters again by this resource."""
        client = self._stripe()
        params: dict[str, Any] = {"limit": 100}
        if customer is not None:
            params["customer"] = customer
        if created_since is not None:
            params["created"] = {"gte": int(created_since.timestamp())}

        def every_page(params: dict[str, Any]) -> list[IntentState]:
            page = client.v1.payment_intents.list(params=cast(Any, params))
            return [_state(pi) for pi in page.auto_paging_iter()]

        found: list[IntentState] | None = None
        if len(params) > 1 and not self._no_list_filters:
            try:
                found = self._lookup(lambda: every_page(params), tries)
            except stripe.InvalidRequestError as err:
                if err.http_status != 400:
                    raise
                self._no_list_filters = True  # localstripe: no such filters
        if found is None:
            found = self._lookup(lambda: every_page({"limit": 100}), tries)
        return [
            s
            for s in found
            if s.metadata.get(META_ATTEMPT)
            and s.metadata.get(META_KEY)
            and (customer is None or s.customer == customer)
        ]

    def find_intent(
        self,
        attempt_id: int,
        idempotency_key: str,
        stripe_customer_id: str,
        intents: Iterable[IntentState] | None = None,
    ) -> IntentState | None:
        """The PaymentIntent made for this attempt (a succeeded one first), else None: Stripe
        has none, so the charge never reached it."""
        best: IntentState | None = None
        for state in intents if intents is not None else self.intents_with_metadata():
            if not state.belongs_to(attempt_id, idempotency_key, stripe_customer_id):
                continue
            if state.outcome == Outcome.SUCCEEDED:
                return state
            if best is None or best.outcome == Outcome.PENDING:
                best = state
        return best

    def succeeded_charges(self) -> list[IntentState]:
        """Succeeded PaymentIntents carrying our metadata, for finance's reconciliation."""
        return [s for s in self.intents_with_metadata() if s.outcome == Outcome.SUCCEEDED]
