"""AutoPay charge throughput: `Payments.charge_many` one at a time vs through the pool.

Starts its own localstripe on loopback behind an injected latency (300 ms per request by
default, roughly a real Stripe round trip plus its processing), registers a few cards, then
charges the same batch sequentially (`max_workers=1`) and through the bounded pool (the
resource's defaults: 8 workers, 25 requests/s), alternating, 5 runs each, and prints charges
per second per run, the medians and their ratio.

    .venv/bin/python -m bench.autopay_throughput [--charges 32] [--runs 5] [--latency-ms 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from billing_pipeline.domain.autopay import Outcome
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.resources.payments import (
    ChargeRequest,
    ChargeResult,
    Payments,
    RegisteredCard,
)

API_KEY = "sk_test_bench"


def _requests(cards: list[RegisteredCard], n: int) -> list[ChargeRequest]:
    run = uuid.uuid4().hex[:8]
    return [
        ChargeRequest(
            attempt_id=i + 1,
            client_id=f"bench-{i % len(cards)}",
            idempotency_key=f"bench-{run}-{i}",
            stripe_customer_id=cards[i % len(cards)].stripe_customer_id,
            stripe_payment_method_id=cards[i % len(cards)].stripe_payment_method_id,
            amount_cents=1000 + i,
        )
        for i in range(n)
    ]


def _one_run(payments: Payments, cards: list[RegisteredCard], n: int) -> float:
    results: list[ChargeResult] = []
    batch = _requests(cards, n)
    started = time.perf_counter()
    payments.charge_many(batch, results.append)
    took = time.perf_counter() - started
    bad = [r for r in results if r.outcome != Outcome.SUCCEEDED]
    if len(results) != n or bad:
        raise RuntimeError(f"bench: {len(results)} results, {len(bad)} not succeeded")
    return n / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--charges", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--cards", type=int, default=8)
    parser.add_argument(
        "--cap",
        type=float,
        default=None,
        help="only the pool, under this many requests/s (Stripe live mode: 100), with "
        "enough workers to fill it; prints requests/s as a share of the cap",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="with --cap (default 3 x cap x latency: 90)"
    )
    args = parser.parse_args()
    if args.cap:
        _at_cap(args)
        return

    with LocalStripe(latency_ms=args.latency_ms) as server:
        setup = Payments(api_key=API_KEY, api_base=server.url)
        with ThreadPoolExecutor(max_workers=args.cards) as pool:
            cards = list(
                pool.map(
                    lambda i: setup.register_card(
                        owner_ref=f"bench-{i}",
                        number="4242424242424242",
                        exp_month=12,
                        exp_year=2030,
                    ),
                    range(args.cards),
                )
            )
        sequential = Payments(api_key=API_KEY, api_base=server.url, max_workers=1)
        pooled = Payments(api_key=API_KEY, api_base=server.url)
        rates: dict[str, list[float]] = {"sequential": [], "pool": []}
        for _ in range(args.runs):
            rates["sequential"].append(_one_run(sequential, cards, args.charges))
            rates["pool"].append(_one_run(pooled, cards, args.charges))

    print(
        f"localstripe +{args.latency_ms} ms/request, {args.charges} charges per run, "
        f"{args.runs} runs each (alternating)"
    )
    medians = {}
    for mode, values in rates.items():
        medians[mode] = statistics.median(values)
        label = (
            "sequential (max_workers=1)"
            if mode == "sequential"
            else f"pool (max_workers={pooled.max_workers}, {pooled.requests_per_second:g} req/s)"
        )
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{label:<40} median {medians[mode]:6.2f} charges/s   runs: {runs}")
    print(f"pool / sequential: {medians['pool'] / medians['sequential']:.1f}x")


def _at_cap(args: argparse.Namespace) -> None:
    """The pool at Stripe's cap: each run charges `--charges` PaymentIntents and counts the
    requests sent (every one passes the shared limiter); then checks that Stripe holds one
    PaymentIntent per idempotency key."""
    from billing_pipeline.resources import payments as payments_module

    # Every request, charge or lookup, passes the pool's shared limiter: count them there.
    limiter = payments_module._RateLimiter  # noqa: SLF001 (the bench counts, never changes)
    sent = [0]
    wait = limiter.wait

    def counted(self: object) -> None:
        wait(self)  # type: ignore[arg-type]  # the limiter itself, as `self` of its method
        sent[0] += 1

    limiter.wait = counted  # type: ignore[method-assign,assignment]  # counting, on purpose
    workers = args.workers or int(args.cap * args.latency_ms / 1000 * 3)
    shares = []
    wrong = 0
    for _ in range(args.runs):
        # A fresh localstripe per run: one process keeps every intent in memory and spends
        # more CPU per request as that store grows, which made later runs slower than the
        # pool (43 % of the cap, then 10 %).
        with LocalStripe(latency_ms=args.latency_ms) as server:
            cards = _cards(server.url, args.cards)
            pooled = Payments(
                api_key=API_KEY,
                api_base=server.url,
                max_workers=workers,
                requests_per_second=args.cap,
            )
            batch = _requests(cards, args.charges)
            results: list[ChargeResult] = []
            sent[0] = 0
            started = time.perf_counter()
            pooled.charge_many(batch, results.append)
            took = time.perf_counter() - started
            if len(results) != args.charges or any(r.outcome != Outcome.SUCCEEDED for r in results):
                raise RuntimeError("bench: a charge did not succeed")
            requests = sent[0]
            per_key: dict[str, int] = {}
            for state in pooled.intents_with_metadata():
                key = state.metadata.get("idempotency_key", "")
                per_key[key] = per_key.get(key, 0) + 1
            twice = [r.idempotency_key for r in batch if per_key.get(r.idempotency_key, 0) != 1]
            wrong += len(twice)
        rate = requests / took
        shares.append(rate / args.cap)
        print(
            f"{args.charges} charges, {requests} requests in {took:.1f} s: "
            f"{rate:.1f} requests/s = {100 * rate / args.cap:.1f} % of {args.cap:g}/s, "
            f"{args.charges / took:.1f} charges/s, one PaymentIntent per key: "
            f"{'yes' if not twice else f'no ({len(twice)} keys)'}",
            flush=True,
        )
    print(
        f"localstripe +{args.latency_ms} ms/request (a fresh one per run), cap {args.cap:g} "
        f"requests/s, {workers} workers: median {100 * statistics.median(shares):.1f} % of the "
        f"cap, lowest {100 * min(shares):.1f} %; PaymentIntents per key: "
        f"{'one each' if not wrong else f'{wrong} keys wrong'}"
    )
    if wrong:
        raise SystemExit(1)


def _cards(url: str, n: int) -> list[RegisteredCard]:
    setup = Payments(api_key=API_KEY, api_base=url)
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(
            pool.map(
                lambda i: setup.register_card(
                    owner_ref=f"bench-{i}", number="4242424242424242", exp_month=12, exp_year=2030
                ),
                range(n),
            )
        )


if __name__ == "__main__":
    main()
