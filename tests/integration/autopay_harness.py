"""What the AutoPay integration tests share: scenarios built in code, nights run through the
real Dagster assets, a misbehaving Stripe in front of localstripe, and the ledger checks.

Run as a module, it is the driver that the crash and concurrency tests start in a process of
its own:

    python -m tests.integration.autopay_harness --job nightly_chain_job \
        --from 2026-11-02 --to 2026-11-02 [--barrier DIR --parties 2]

with BILLING_DATABASE_URL, STRIPE_API_KEY, STRIPE_API_BASE (and BILLING_FAULT, the test-only
crash hook of billing_pipeline/services/autopay.py) in the environment. It prints one JSON line:
the run's success, its AutoPay figures per practice, and when the job started and ended.

`run_driver` / `start_driver` run it so, forked from a server that has Dagster and the project
imported already (tests/integration/forked.py: the same process, exit code and output, without
seconds of imports each time); `driver_command` is the real `python -m` command line, which
test_autopay_secrets.py still runs as a subprocess.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from billing_pipeline.db import models as m
from billing_pipeline.domain.autopay import Outcome
from billing_pipeline.resources.payments import IntentState, Payments
from tests.integration import forked

API_KEY = "sk_test_autopay_tests"
FIRST_NIGHT = date(2026, 11, 2)
TZ = "America/New_York"
CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000341"
CARD_AUTHENTICATION = "4000002500003155"


# --- Scenarios ----------------------------------------------------------------------------------


def card(number: str = CARD_OK, exp_month: int = 12, exp_year: int = 2030) -> dict[str, Any]:
    return {"card": number, "exp_month": exp_month, "exp_year": exp_year}


def session(client_id: str, night: date, fee_cents: int = 15000, n: int = 0) -> dict[str, Any]:
    return {
        "id": f"s-{client_id}-{night.isoformat()}-{n}",
        "client_id": client_id,
        "starts_at": f"{night.isoformat()}T10:00:00-05:00",
        "place_of_service": "11",
        "services": [{"cpt": "90834", "units": 1, "fee_cents": fee_cents}],
    }


def client(
    client_id: str,
    payment_method: dict[str, Any] | None = None,
    *,
    autopay: bool = True,
    billing_contact_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": client_id,
        "account_id": "acct-ap",
        "name": f"Test {client_id.title()}",
        "email": f"{client_id}@example.com",
        "date_of_birth": "1980-01-01",
        "created_at": "2026-09-01T12:00:00Z",
        "billing_contact_id": billing_contact_id,
        "diagnoses": ["F41.1"],
        "payment_method": payment_method,
        "settings": {"autopay_enabled": autopay},
    }


def scenario(
    clients: list[dict[str, Any]],
    sessions: list[dict[str, Any]],
    billing_contacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "scenario": "autopay_tests",
        "accounts": [
            {
                "id": "acct-ap",
                "name": "AutoPay Test Practice",
                "timezone": TZ,
                "npi": "1234567893",
                "tax_id": "12-3456789",
                "settings": {
                    "bill_creation": "daily",
                    "superbill_day_of_month": 28,
                    "autopay_enabled": True,
                    "new_client_defaults": {
                        "share_bills": False,
                        "bill_delay_minutes": 60,
                        "share_superbills": False,
                        "superbill_delay_minutes": 0,
                        "share_statements": False,
                        "statement_delay_minutes": 0,
                    },
                },
            }
        ],
        "billing_contacts": billing_contacts or [],
        "clients": clients,
        "sessions": sessions,
    }


def many_clients(n: int, nights: int, first: date = FIRST_NIGHT) -> dict[str, Any]:
    """n clients with good cards, each with a session on each of `nights` nights (amounts
    differ per client, so a charge for the wrong bills shows)."""
    ids = [f"cl-{i:02d}" for i in range(n)]
    return scenario(
        [client(c, card()) for c in ids],
        [
            session(c, first + timedelta(days=d), fee_cents=10000 + 100 * i)
            for d in range(nights)
            for i, c in enumerate(ids)
        ],
    )


def load(engine: Engine, doc: dict[str, Any], tmp_path: Path, stripe_url: str) -> None:
    from billing_pipeline.scenario.load import load_scenario

    path = tmp_path / f"scenario-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(doc))
    load_scenario(path, engine, Payments(api_key=API_KEY, api_base=stripe_url))


# --- Nights through Dagster, in this process ------------------------------------------------------


def payments_config(**overrides: Any) -> dict[str, Any]:
    """Run config for the `payments` resource. Dagster replaces the whole resource config
    when run config gives any of it, so the key is passed again, still from the environment."""
    return {"api_key": {"env": "STRIPE_API_KEY"}, **overrides}


def run_config(until: date, payments: dict[str, Any] | None = None) -> dict:
    from billing_pipeline.simulate import logical_run_config

    config = logical_run_config(until)
    if payments:
        config["resources"]["payments"] = {"config": payments}
    return config


def run_night(
    database_url: str,
    payments: Payments,
    night: date,
    *,
    with_reconciliation: bool = False,
    instance: Any = None,
    expect_failure: bool | tuple[str, str] = False,
) -> Any:
    """Bills, then AutoPay, for one night, through the real assets (in process). With
    `expect_failure`, the run must fail, and does not raise: True for AutoPay not done for the
    practice (its `every_practice_done` check names it), or the (asset, check) that fails."""
    import dagster as dg

    from billing_pipeline.assets.chain import NIGHT_CHAIN
    from billing_pipeline.assets.delivery import delivery_queue
    from billing_pipeline.assets.reconciliation import payment_reconciliations
    from billing_pipeline.resources.clock import Clock
    from billing_pipeline.resources.database import BillingDatabase

    assets = [a for a in NIGHT_CHAIN if a is not delivery_queue]
    if not with_reconciliation:
        assets.remove(payment_reconciliations)
    result = dg.materialize(
        assets,
        partition_key=night.isoformat(),
        resources={
            "db": BillingDatabase(url=database_url),
            "clock": Clock(mode="logical", until_date=(night + timedelta(days=2)).isoformat()),
            "payments": payments,
        },
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=not expect_failure,
    )
    if expect_failure:
        assert not result.success, "the run should have failed"
        if expect_failure is True:
            failed = check_evaluations(result)[("autopay_attempts", "every_practice_done")]
            assert not failed.passed and "acct-ap" in (failed.description or "")
        else:
            assert not check_evaluations(result)[expect_failure].passed
    return result


def autopay_figures(result: Any) -> dict[str, int]:
    """The autopay_attempts materialization's counts for the practice acct-ap."""
    for mat in result.asset_materializations_for_node("autopay_attempts"):
        per = mat.metadata["per_practice"].value
        return dict(per.get("acct-ap", {}))
    return {}


def check_evaluations(result: Any) -> dict[tuple[str, str], Any]:
    return {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in (
            ev.event_specific_data
            for ev in result.all_events
            if ev.event_type_value == "ASSET_CHECK_EVALUATION"
        )
    }


# --- A Stripe that misbehaves -------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str


Rule = Callable[[Seen, int], object]
"""(request, how many such requests before it) -> 'forward', 'hang', 'forward_then_500', or
(status, headers[, json body]) to answer without forwarding."""


def forward_all(_seen: Seen, _n: int) -> object:
    return "forward"


@dataclass
class StripeProxy:
    """A tiny threaded HTTP proxy in front of localstripe that can hang, answer 500 or 429,
    or forward and then answer 500 (Stripe charged, we never heard)."""

    upstream: str
    rule: Rule = forward_all
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    log: list[tuple[float, str, str, int]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def charges_seen(self) -> int:
        return self.counts[("POST", "/v1/payment_intents")]

    def __enter__(self) -> StripeProxy:
        proxy = self
        upstream = urllib.parse.urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                seen = Seen(self.command, path)
                with proxy._lock:
                    n = proxy.counts[(self.command, path)]
                    proxy.counts[(self.command, path)] += 1
                action = proxy.rule(seen, n)
                status = 0
                if action == "hang":
                    proxy._stop.wait(120)
                    self.close_connection = True
                    return
                if isinstance(action, tuple):
                    status, headers, *answer = action
                    payload = json.dumps(
                        answer[0] if answer else {"error": {"type": "api_error", "message": "no"}}
                    ).encode()
                    self.send_response(status)
                    for k, v in {**headers, "Content-Type": "application/json"}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                else:
                    conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
                    fwd = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    conn.request(self.command, self.path, body=body, headers=fwd)
                    resp = conn.getresponse()
                    data = resp.read()
                    conn.close()
                    if action == "forward_then_500":
                        status, data = 500, b'{"error": {"type": "api_error"}}'
                        headers_out = [("Content-Type", "application/json")]
                    else:
                        status = resp.status
                        hop = ("content-length", "transfer-encoding", "connection")
                        headers_out = [(k, v) for k, v in resp.getheaders() if k.lower() not in hop]
                    self.send_response(status)
                    for k, v in headers_out:
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                with proxy._lock:
                    proxy.log.append((time.monotonic(), self.command, path, status))

            do_GET = do_POST = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# --- The ledger, checked --------------------------------------------------------------------------


def stripe_intents(stripe_url: str, engine: Engine) -> list[IntentState]:
    """Every PaymentIntent in localstripe on this database's customers (the localstripe of a
    test session is shared by many databases)."""
    with engine.connect() as conn:
        customers = set(conn.execute(select(m.PaymentMethod.stripe_customer_id)).scalars())
    direct = Payments(api_key=API_KEY, api_base=stripe_url)
    return [s for s in direct.intents_with_metadata() if s.customer in customers]


@dataclass(frozen=True)
class Ledger:
    attempts: list[Any]
    payments: list[Any]
    bills: list[Any]
    covered: dict[int, list[int]]  # attempt id -> bill ids
    intents: list[IntentState]

    def succeeded_intents(self) -> list[IntentState]:
        return [i for i in self.intents if i.outcome == Outcome.SUCCEEDED]

    def attempts_with(self, status: str) -> list[Any]:
        return [a for a in self.attempts if a.status == status]


def ledger(engine: Engine, stripe_url: str) -> Ledger:
    with engine.connect() as conn:
        attempts = conn.execute(
            select(m.AutopayAttempt.__table__).order_by(m.AutopayAttempt.id)
        ).all()
        payments = conn.execute(select(m.Payment.__table__)).all()
        bills = conn.execute(select(m.Bill.__table__).order_by(m.Bill.id)).all()
        covered: dict[int, list[int]] = {}
        for r in conn.execute(select(m.AutopayAttemptBill.__table__)):
            covered.setdefault(r.attempt_id, []).append(r.bill_id)
    return Ledger(attempts, payments, bills, covered, stripe_intents(stripe_url, engine))


def assert_charged_once(book: Ledger) -> None:
    """No one was charged twice, and our records and Stripe agree exactly:
    - every succeeded attempt has exactly one succeeded PaymentIntent (its id, key, customer,
      stored amount) and one payment row; Stripe has no other succeeded charge of ours;
    - a bill is paid iff exactly one succeeded attempt covers it; no bill is covered twice;
    - no client paid more than their bills."""
    succeeded = book.attempts_with("succeeded")
    intents = book.succeeded_intents()
    per_attempt = Counter(i.metadata["attempt_id"] for i in intents)
    assert all(n == 1 for n in per_attempt.values()), f"charged twice: {per_attempt}"
    assert sorted(per_attempt) == sorted(str(a.id) for a in succeeded), (
        per_attempt,
        [(a.id, a.status, a.failure_code) for a in book.attempts],
    )
    by_attempt = {i.metadata["attempt_id"]: i for i in intents}
    for a in succeeded:
        pi = by_attempt[str(a.id)]
        assert pi.id == a.stripe_payment_intent_id
        assert pi.amount_cents == a.amount_cents
        assert pi.metadata["idempotency_key"] == a.idempotency_key
    assert sorted(p.attempt_id for p in book.payments) == sorted(a.id for a in succeeded)
    assert sorted(p.stripe_payment_intent_id for p in book.payments) == sorted(
        i.id for i in intents
    )
    paid_by = Counter(b for a in succeeded for b in book.covered[a.id])
    assert all(n == 1 for n in paid_by.values()), f"bill paid twice: {paid_by}"
    for b in book.bills:
        assert (b.status == "paid") is (b.id in paid_by), (b.id, b.status)
    owed = Counter[str]()
    for b in book.bills:
        owed[b.client_id] += b.amount_cents
    charged = Counter[str]()
    for i in intents:
        charged[i.metadata["client_id"]] += i.amount_cents
    for client_id, cents in charged.items():
        assert cents <= owed[client_id], (client_id, cents, owed[client_id])


# --- The subprocess driver ---------------------------------------------------------------


ROOT = Path(__file__).resolve().parents[2]


def driver_env(database_url: str, stripe_url: str) -> dict[str, str]:
    """The environment of a driver process: our database and Stripe, no crash hook, an
    ephemeral Dagster instance."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "BILLING_FAULT")}
    env.update(
        BILLING_DATABASE_URL=database_url,
        STRIPE_API_KEY=API_KEY,
        STRIPE_API_BASE=stripe_url,
        PYTHONPATH=str(ROOT),
    )
    return env


DRIVER = "tests.integration.autopay_harness"


def driver_args(first: date, last: date, *args: str) -> list[str]:
    return ["--from", first.isoformat(), "--to", last.isoformat(), *args]


def driver_command(first: date, last: date, *args: str) -> list[str]:
    """The driver as a command line: `python -m tests.integration.autopay_harness ...`."""
    return [sys.executable, "-m", DRIVER, *driver_args(first, last, *args)]


def run_driver(
    env: dict[str, str], first: date, last: date, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """As `subprocess.run(driver_command(...), env=env, cwd=ROOT, capture_output=True,
    text=True, timeout=timeout)`, the process forked from the pre-imported server."""
    return forked.run_module(DRIVER, driver_args(first, last, *args), env=env, timeout=timeout)


def start_driver(env: dict[str, str], first: date, last: date, *args: str) -> forked.Forked:
    """As `subprocess.Popen(driver_command(...), env=env, cwd=ROOT, ...)`, forked likewise."""
    return forked.start_module(DRIVER, driver_args(first, last, *args), env=env)


def _barrier(folder: Path, parties: int, timeout: float = 120) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("ready-*"))) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("barrier: the other runs never came")
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", default="nightly_chain_job")
    parser.add_argument("--from", dest="first", required=True)
    parser.add_argument("--to", dest="last", required=True)
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--barrier", type=Path)
    parser.add_argument("--parties", type=int, default=2)
    args = parser.parse_args(argv)

    import dagster as dg
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from billing_pipeline.definitions import defs

    first, last = date.fromisoformat(args.first), date.fromisoformat(args.last)
    job = defs.resolve_job_def(args.job)
    config = run_config(
        last + timedelta(days=2),
        payments_config(max_workers=args.max_workers, timeout_seconds=args.timeout),
    )
    home = os.environ.get("DAGSTER_HOME")
    instance = dg.DagsterInstance.get() if home else dg.DagsterInstance.ephemeral()
    if args.barrier:
        _barrier(args.barrier, args.parties)
    started = time.time()
    result = job.execute_in_process(
        instance=instance,
        run_config=config,
        tags={
            ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
            ASSET_PARTITION_RANGE_END_TAG: last.isoformat(),
        },
        raise_on_error=False,
    )
    ended = time.time()
    figures: dict[str, Any] = {}
    if "autopay_attempts" in [n.name for n in job.nodes_in_topological_order]:
        # Each night's materialisation holds that night's figures: the run's are their sum.
        for mat in result.asset_materializations_for_node("autopay_attempts"):
            for account, counts in mat.metadata["per_practice"].value.items():
                total = figures.setdefault(account, {})
                for key, n in counts.items():
                    total[key] = total.get(key, 0) + n
    from billing_pipeline.simulate import failed_checks

    summary = {
        "success": result.success,
        "figures": figures,
        "failed_checks": failed_checks(result),
        "started": started,
        "ended": ended,
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0 if result.success else 1


def iter_json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.startswith("{"):
            yield json.loads(line)


def make_bills(database_url: str, night: date) -> None:
    """Only the 00:00 step of a night: eligible sessions, settings, bills."""
    import dagster as dg

    from billing_pipeline.assets.billing import bills
    from billing_pipeline.assets.chain import chain_through
    from billing_pipeline.resources.clock import Clock
    from billing_pipeline.resources.database import BillingDatabase

    dg.materialize(
        chain_through(bills),
        partition_key=night.isoformat(),
        resources={
            "db": BillingDatabase(url=database_url),
            "clock": Clock(mode="logical", until_date=(night + timedelta(days=2)).isoformat()),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )


if __name__ == "__main__":
    sys.exit(main())
