"""One night of a synthetic EHR through the production assets, against the SQL floor.

    .venv/bin/python -m bench SIZE [--runs 3] [--history-days 7] [--role owner] [--reuse]

SIZE is `practice` (1 practice, ~100 sessions a night), `group` (50, ~5,000) or `ehr` (2,000,
~100,000). The billing database is BILLING_DATABASE_URL (a PostgreSQL URL logging in as a
superuser or the tables' owner: the data is copied in with COPY, and left there), else a
database this creates on the local server (postgres@127.0.0.1:5432) and drops at the end.

The chain `eligible_sessions -> resolved_settings -> bills -> delivery_queue` is materialised
for one night with the production code: each asset as one in-process Dagster run on an
ephemeral instance, logging in as the pipeline's service role (row-level security on, as in
production; `--role owner` to compare), with the logical clock. AutoPay and PDFs are left out:
between `bills` and `delivery_queue` the bench records each practice's AutoPay step done (as an
AutoPay that charged nobody would), so `delivery_queue` releases the bills that waited for it.
Each asset runs in a forked process of its own so that its peak RSS (VmHWM) is its own. Every
run starts from the same database (the night's rows are deleted and the tables vacuumed
between runs).

The floor: the same bills (bills, bill_sessions, bill_lines) written by one `INSERT ... SELECT`
over the eligible sessions, on the same database and login, in a transaction rolled back.

It prints per asset: rows, seconds (median of the runs), rows per second, peak RSS; then the
floor; and ends with exactly one line `SIZE: bills 2.1x floor, chain 41.0 s, peak 612 MiB`
(chain: the sum of the four assets' medians; peak: the largest of the assets' peaks).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from multiprocessing.connection import Connection as Pipe

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from bench.synthetic import SIZES, Size, generate

ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
SERVICE_ROLE = "billing_pipeline_service"
NIGHT = date(2026, 11, 10)  # a Tuesday, not a month end: monthly practices list, do not bill
CHAIN = ("eligible_sessions", "resolved_settings", "bills", "delivery_queue")
ROWS_SQL = {
    "eligible_sessions": "SELECT count(*) FROM eligible_sessions WHERE night = :n",
    "resolved_settings": "SELECT count(*) FROM resolved_settings WHERE night = :n",
    "bills": "SELECT count(*) FROM bills WHERE night = :n",
    "delivery_queue": "SELECT count(*) FROM deliveries WHERE night = :n",
}
RESET_SQL = (
    "DELETE FROM bill_lines WHERE bill_id IN (SELECT id FROM bills WHERE night = :n)",
    "DELETE FROM bill_sessions WHERE bill_id IN (SELECT id FROM bills WHERE night = :n)",
    "DELETE FROM deliveries WHERE night = :n",
    "DELETE FROM bills WHERE night = :n",
    "DELETE FROM eligible_sessions WHERE night = :n",
    "DELETE FROM resolved_settings WHERE night = :n",
    "DELETE FROM night_steps WHERE night = :n",
    "DELETE FROM night_step_tries WHERE night = :n",
    "DELETE FROM check_flags WHERE first_night = :n",
)
VACUUMED = (
    "bills",
    "bill_lines",
    "bill_sessions",
    "deliveries",
    "eligible_sessions",
    "resolved_settings",
    "night_steps",
    "check_flags",
)
# The same bills as the pipeline's for a daily practice's night (one bill per eligible
# session; the bench's sessions have one service each, so one line per bill), in one
# statement: eligible = attended, client auto_bill, a CPT code, local date within the 90-day
# look-back, on no bill yet.
FLOOR_SQL = """
WITH e AS (
  SELECT s.id AS session_id, c.id AS client_id, c.account_id, nextval('bills_id_seq') AS bill_id,
         ss.cpt, ss.units, ss.fee_cents, ss.modifiers, ss.units * ss.fee_cents AS amount_cents,
         (:n + 1)::timestamp AS created_at
  FROM sessions s
  JOIN clients c ON c.id = s.client_id
  JOIN accounts a ON a.id = c.account_id
  JOIN session_services ss ON ss.session_id = s.id
  WHERE a.bill_creation = 'daily' AND c.auto_bill AND s.status = 'attended'
    AND ss.cpt IS NOT NULL
    AND s.starts_at >= (:n - 91)::timestamp AND s.starts_at < (:n + 2)::timestamp
    AND (s.starts_at AT TIME ZONE 'UTC' AT TIME ZONE a.timezone)::date
        BETWEEN :n - 90 AND :n
    AND NOT EXISTS (SELECT 1 FROM bill_sessions b WHERE b.session_id = s.id)
), b AS (
  INSERT INTO bills (id, account_id, client_id, night, created_at, amount_cents, status)
  SELECT bill_id, account_id, client_id, :n, created_at, amount_cents, 'open' FROM e
  RETURNING id
), bs AS (
  INSERT INTO bill_sessions (session_id, bill_id) SELECT session_id, bill_id FROM e
), bl AS (
  INSERT INTO bill_lines (bill_id, session_id, cpt, units, fee_cents, modifiers, amount_cents)
  SELECT bill_id, session_id, cpt, units, fee_cents, modifiers, amount_cents FROM e
)
SELECT count(*) FROM b
"""


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_kib: int


def _engine(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool)


@contextmanager
def _database(size: str) -> Iterator[tuple[str, bool]]:
    """(owner URL, made here): BILLING_DATABASE_URL, else a new database dropped at the end."""
    given = os.environ.get("BILLING_DATABASE_URL")
    if given:
        from billing_pipeline.config import normalize_database_url

        yield normalize_database_url(given), False
        return
    name = f"bench_{size}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", True
    finally:
        from billing_pipeline.db.engine import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _vmhwm_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _time_statements() -> Callable[[], None]:
    """Time every SQL statement of this process; returns what prints the costliest."""
    from collections import defaultdict

    from sqlalchemy import event

    spent: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    starts: list[float] = []

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(*_args: object) -> None:
        starts.append(time.perf_counter())

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        row = spent[" ".join(statement.split())[:110]]
        row[0] += time.perf_counter() - starts.pop()
        row[1] += 1

    def _report() -> None:
        top = sorted(spent.items(), key=lambda kv: -kv[1][0])[:12]
        sys.stdout.write("SQL by total time (s, calls, statement):\n")
        for statement, (seconds, calls) in top:
            sys.stdout.write(f"{seconds:8.3f} {int(calls):6d}  {statement}\n")
        sys.stdout.flush()

    return _report


def _in_child(work: Callable[[], None], profile: bool = False) -> Measured:
    """Run `work` in a forked process; its wall time and peak RSS (`profile`: and print
    where its time went, the 25 functions with the most cumulative time)."""

    def target(pipe: Pipe) -> None:
        started = time.perf_counter()
        try:
            if profile:
                report = _time_statements()
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                profiler.runcall(work)
                pstats.Stats(profiler, stream=sys.stdout).sort_stats(
                    os.environ.get("BENCH_SORT", "cumulative")
                ).print_stats(25)
                report()
            else:
                work()
        except BaseException as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"[:2000]))
            raise
        pipe.send(("ok", (time.perf_counter() - started, _vmhwm_kib())))

    ours, theirs = mp.get_context("fork").Pipe()
    child = mp.get_context("fork").Process(target=target, args=(theirs,))
    child.start()
    kind, value = ours.recv()
    child.join()
    if kind != "ok":
        raise RuntimeError(f"bench: the step failed: {value}")
    seconds, peak = value
    return Measured(float(seconds), int(peak))


def _materialize(asset_name: str, url: str) -> None:
    import dagster as dg

    from billing_pipeline.assets.chain import NIGHT_CHAIN
    from billing_pipeline.resources.clock import Clock
    from billing_pipeline.resources.database import BillingDatabase

    asset = next(a for a in NIGHT_CHAIN if a.key.to_user_string() == asset_name)
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [asset],
            partition_key=NIGHT.isoformat(),
            instance=instance,
            resources={
                "db": BillingDatabase(url=url),
                "clock": Clock(mode="logical", until_date=(NIGHT + timedelta(days=3)).isoformat()),
            },
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=True,
        )
    failed = [
        c.check_name
        for c in result.get_asset_check_evaluations()
        if not c.passed and c.check_name != "imported_sessions_have_cpt_codes"
    ]
    if failed:
        raise RuntimeError(f"{asset_name}: checks failed: {failed}")


def _mark_autopay_done(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO night_steps (account_id, night, step, completed_at, run_id) "
                "SELECT id, :n, 'autopay', now() AT TIME ZONE 'UTC', 'bench' FROM accounts "
                "ON CONFLICT DO NOTHING"
            ),
            {"n": NIGHT},
        )


def _reset(owner: Engine) -> None:
    with owner.begin() as conn:
        for sql in RESET_SQL:
            conn.execute(text(sql), {"n": NIGHT})
    with owner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {', '.join(VACUUMED)}"))


def _has_practices(owner: Engine) -> bool:
    with owner.connect() as conn:
        return bool(conn.execute(text("SELECT EXISTS (SELECT 1 FROM accounts)")).scalar())


def _floor(engine: Engine) -> tuple[float, int]:
    with engine.connect() as conn:
        tx = conn.begin()
        started = time.perf_counter()
        made = int(conn.execute(text(FLOOR_SQL), {"n": NIGHT}).scalar_one())
        took = time.perf_counter() - started
        tx.rollback()
    return took, made


def run_url(owner_url: str, role: str) -> str:
    """The URL the assets log in with: the service role (under row-level security) or the
    owner's."""
    if role != "service":
        return owner_url
    return make_url(owner_url).set(username=SERVICE_ROLE).render_as_string(hide_password=False)


YEAR_DAYS = 365


# What a `--year` run wrote, deleted before the run again on the same year (`--reuse`): the
# generated history has no bill on the last night (its sessions are the open ones), so the
# run's bills are the last night's.
YEAR_RESET_SQL = (
    *RESET_SQL,
    "DELETE FROM eligible_sessions",
    "DELETE FROM resolved_settings",
    "DELETE FROM night_steps WHERE step <> 'autopay'",
    "DELETE FROM night_step_tries",
    "DELETE FROM check_flags",
)
YEAR_VACUUMED = (*VACUUMED, "night_step_tries")


def _year(owner: Engine, size: Size, url: str, label: str, reuse: bool = False) -> None:
    """`--year`: generate a year of sessions, none billed, and materialise the chain over
    the year's 365 nights in one in-process run tagged with the partition range (what the
    backfill daemon launches for assets with `BackfillPolicy.single_run()`). `reuse`: on
    the year an earlier `--year` generated there, with what its run wrote deleted first."""
    import dagster as dg
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from billing_pipeline.assets.chain import NIGHT_CHAIN
    from billing_pipeline.resources.clock import Clock
    from billing_pipeline.resources.database import BillingDatabase

    first = NIGHT - timedelta(days=YEAR_DAYS - 1)
    started = time.perf_counter()
    out = sys.stdout
    if reuse and _has_practices(owner):
        with owner.begin() as conn:
            for sql in YEAR_RESET_SQL:
                conn.execute(text(sql), {"n": NIGHT})
        with owner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM ANALYZE {', '.join(YEAR_VACUUMED)}"))
        out.write(f"{label} --year: reusing the year there, reset in ")
        out.write(f"{time.perf_counter() - started:.1f} s\n")
    else:
        # Every night before the last already ran (each practice's sessions billed, whatever
        # its cadence): the backfill re-runs the year after a fix, and bills what no night
        # billed.
        made = generate(
            owner,
            size,
            NIGHT,
            history_days=YEAR_DAYS - 1,
            billed_cadences=("daily", "monthly", "manual"),
        )
        out.write(
            f"{label} --year: {made.accounts} practices, {made.clients} clients, "
            f"{made.sessions} sessions over {first}..{NIGHT}, {made.billed_history} billed "
            f"before; generated in {time.perf_counter() - started:.1f} s\n"
        )
    out.flush()
    with owner.begin() as conn:  # AutoPay is left out: each night's AutoPay step recorded done
        conn.execute(
            text(
                "INSERT INTO night_steps (account_id, night, step, completed_at, run_id) "
                "SELECT a.id, d::date, 'autopay', now() AT TIME ZONE 'UTC', 'bench' "
                "FROM accounts a, generate_series(CAST(:f AS date), CAST(:n AS date), "
                "interval '1 day') d ON CONFLICT DO NOTHING"
            ),
            {"f": first, "n": NIGHT},
        )
    assets = [a for a in NIGHT_CHAIN if a.key.to_user_string() in CHAIN]
    with owner.connect() as conn:
        before = conn.execute(text("SELECT coalesce(max(id), 0) FROM bills")).scalar_one()

    def work() -> None:
        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize(
                assets,
                instance=instance,
                resources={
                    "db": BillingDatabase(url=url),
                    "clock": Clock(
                        mode="logical", until_date=(NIGHT + timedelta(days=3)).isoformat()
                    ),
                },
                tags={
                    ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
                    ASSET_PARTITION_RANGE_END_TAG: NIGHT.isoformat(),
                },
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                raise_on_error=True,
            )
            # Each asset's step: from its start to its success, in the run's event log.
            steps = []
            started_at: dict[str, float] = {}
            for entry in instance.all_logs(result.run_id):
                kind = entry.dagster_event.event_type_value if entry.dagster_event else None
                if entry.step_key is None or kind is None:
                    continue
                if kind == "STEP_START":
                    started_at[entry.step_key] = entry.timestamp
                elif kind == "STEP_SUCCESS":
                    took = entry.timestamp - started_at.get(entry.step_key, entry.timestamp)
                    steps.append(f"  step {entry.step_key}: {took:.1f} s\n")
        failed = [
            c.check_name
            for c in result.get_asset_check_evaluations()
            if not c.passed and c.check_name != "imported_sessions_have_cpt_codes"
        ]
        if failed:
            raise RuntimeError(f"year: checks failed: {failed}")
        for line in steps:
            sys.stdout.write(line)
        sys.stdout.flush()

    measured = _in_child(work)
    with owner.connect() as conn:
        bills, nights = conn.execute(
            text("SELECT count(*), count(DISTINCT night) FROM bills WHERE id > :b"), {"b": before}
        ).one()
        listed = conn.execute(text("SELECT count(*) FROM eligible_sessions")).scalar_one()
    load = os.getloadavg()
    out.write(
        f"load average after the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
        f"{label} --year: {YEAR_DAYS} nights in one run, {bills} bills on {nights} nights, "
        f"{listed} eligible-session rows, {measured.seconds:.1f} s, "
        f"peak {_mib(measured.peak_kib):.0f} MiB\n"
    )


def _mib(kib: int) -> float:
    return kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", choices=sorted(SIZES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--history-days", type=int, default=7)
    parser.add_argument("--role", choices=("service", "owner"), default="service")
    parser.add_argument(
        "--year",
        action="store_true",
        help="instead: a year of nights (365 days of sessions, billed but for the last "
        "night's) materialised again in ONE run over the partition range, as a backfill "
        "under the assets' single-run policy",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with BILLING_DATABASE_URL: use the practices already there (made by an earlier "
        "run of the same size) instead of generating them again",
    )
    parser.add_argument(
        "--profile", choices=CHAIN, help="print a cProfile of this asset's first run"
    )
    args = parser.parse_args()
    size = SIZES[args.size]

    # Imported once, before any fork: each child starts with the code loaded, as a run
    # worker would, and pays only for its step.
    import billing_pipeline.definitions  # noqa: F401
    from billing_pipeline.db.engine import dispose_engines, get_engine, upgrade

    with _database(args.size) as (owner_url, _made):
        upgrade(get_engine(owner_url))
        dispose_engines()
        owner = _engine(owner_url)
        out = sys.stdout
        if args.year:
            _year(owner, size, run_url(owner_url, args.role), args.size, args.reuse)
            owner.dispose()
            return
        if args.reuse and _has_practices(owner):
            _reset(owner)
            out.write(f"{args.size}: reusing the practices of {make_url(owner_url).database}\n")
        else:
            started = time.perf_counter()
            made = generate(owner, size, NIGHT, history_days=args.history_days)
            out.write(
                f"{args.size}: {made.accounts} practices, {made.clients} clients, "
                f"{made.sessions} sessions ({made.night_sessions} on the night, "
                f"{made.billed_history} billed before it, {args.history_days} days of "
                f"history), {made.setting_changes} setting changes; generated in "
                f"{time.perf_counter() - started:.1f} s\n"
            )
        runner = _engine(run_url(owner_url, args.role))

        floors: list[float] = []
        floor_bills = 0
        timings: dict[str, list[Measured]] = {name: [] for name in CHAIN}
        rows: dict[str, int] = {}
        for run in range(args.runs):
            # The floor right before each run's chain (the machine is shared: its load moves,
            # and a ratio means something only between figures measured together).
            _reset(owner)
            took, floor_bills = _floor(runner)
            floors.append(took)
            _reset(owner)
            for name in CHAIN:
                if name == "delivery_queue":
                    _mark_autopay_done(owner)
                dispose_engines()
                profile = run == 0 and args.profile == name
                url = run_url(owner_url, args.role)
                timings[name].append(
                    _in_child(lambda name=name, url=url: _materialize(name, url), profile)
                )
                sys.stderr.write(f"run {run + 1}: {name} {timings[name][-1].seconds:.2f} s\n")
                with owner.connect() as conn:
                    rows[name] = int(conn.execute(text(ROWS_SQL[name]), {"n": NIGHT}).scalar())
        runner.dispose()
        owner.dispose()

    out.write(f"\n{'asset':<20} {'rows':>9} {'seconds':>9} {'rows/s':>10} {'peak RSS':>10}\n")
    chain = 0.0
    peak = 0
    medians: dict[str, float] = {}
    for name in CHAIN:
        median = statistics.median(m.seconds for m in timings[name])
        medians[name] = median
        top = max(m.peak_kib for m in timings[name])
        chain += median
        peak = max(peak, top)
        out.write(
            f"{name:<20} {rows[name]:>9} {median:>9.2f} {rows[name] / median:>10.0f} "
            f"{_mib(top):>6.0f} MiB   runs: "
            + ", ".join(f"{m.seconds:.2f}" for m in timings[name])
            + "\n"
        )
    floor = statistics.median(floors)
    out.write(
        f"{'floor (bills)':<20} {floor_bills:>9} {floor:>9.2f} {floor_bills / floor:>10.0f} "
        f"{'':>10}   runs: " + ", ".join(f"{f:.2f}" for f in floors) + "\n"
    )
    if floor_bills != rows["bills"]:
        out.write(f"note: the floor made {floor_bills} bills, the pipeline {rows['bills']}\n")
    load = os.getloadavg()
    out.write(f"load average during the bench: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    out.write(
        f"{args.size}: bills {medians['bills'] / floor:.1f}x floor, chain {chain:.1f} s, "
        f"peak {_mib(peak):.0f} MiB\n"
    )


if __name__ == "__main__":
    main()
