"""What every nightly asset shares: the nights of the run, the practices it covers, and the
figures it reports. Wiring only; the rules are in domain/ and the writes in db/."""

from __future__ import annotations

import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import date, datetime
from functools import partial

import dagster as dg
from sqlalchemy import Connection

from billing_pipeline.config import whole_number_setting
from billing_pipeline.db.catchup import note_failure
from billing_pipeline.db.models import Base
from billing_pipeline.db.store import list_accounts, load_practice, load_practices
from billing_pipeline.domain.money import dollars
from billing_pipeline.domain.practice import AccountView, Practice
from billing_pipeline.domain.schedule import Step, step_instant
from billing_pipeline.errors import SafeMessageError
from billing_pipeline.partitions import (
    ACCOUNTS_TAG,
    NIGHTS_TAG,
    PRACTICES_TAG,
    nights_label,
    practices_label,
    service_dates,
)
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from billing_pipeline.services.nightly import NightFigures
from billing_pipeline.testing import STEP_FAULT_ENV, step_fault

# Who answers for what, as the asset graph shows it.
BILLING_OPS = "team:billing-ops"
FINANCE = "team:finance"

NightWork = Callable[[Connection, Practice, date, datetime], NightFigures]

# `backfill_policy` is marked beta; we choose single-run backfills deliberately (README).
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")

# No Dagster `FreshnessPolicy`: in 1.13 it judges the wall time of the last materialisation, so
# after a backfill of an old month (or the demo's replay of last month) it said Passing while
# the newest night done was a month old. Freshness is the check `newest_night_is_recent`
# (checks/freshness.py), read from the nights done, every 15 minutes.


_SQL_TYPES = {
    "VARCHAR": "string",
    "TEXT": "string",
    "INTEGER": "int",
    "BIGINT": "int",
    "BOOLEAN": "bool",
    "DATE": "date",
    "DATETIME": "timestamp (UTC)",
    "BLOB": "bytes",
}


def _column_words(name: str) -> str:
    """What a column holds, in finance's words, from the project's naming rules."""
    if name.endswith("_cents"):
        return "Money in integer cents."
    if name.endswith("_at"):
        return "An instant, in UTC."
    if name == "night":
        return "The service date (the night that made the row)."
    if name == "account_id":
        return "The practice."
    if name == "client_id":
        return "The client (an id: never a name)."
    if name.endswith("_id") or name == "id":
        return "An id."
    return ""


def column_schema(table: type[Base]) -> dg.TableSchema:
    """The billing table an asset writes, as Dagster's column schema (names, types, keys)."""
    columns = []
    for column in table.__table__.columns:
        type_name = getattr(column.type, "impl", column.type).__visit_name__.upper()
        columns.append(
            dg.TableColumn(
                column.name,
                _SQL_TYPES.get(type_name, type_name.lower()),
                description=_column_words(column.name),
                constraints=dg.TableColumnConstraints(
                    nullable=bool(column.nullable), unique=bool(column.unique)
                ),
            )
        )
    return dg.TableSchema(columns=columns)


def nightly_asset(
    *,
    table: type[Base],
    kinds: set[str],
    owners: Sequence[str],
    domain: str,
    deps: Sequence[dg.AssetsDefinition | dg.AssetDep] = (),
    check_specs: Sequence[dg.AssetCheckSpec] = (),
    retry_policy: dg.RetryPolicy | None = None,
) -> Callable[[Callable[..., dg.MaterializeResult]], dg.AssetsDefinition]:
    """A step of the night: partitioned by service date, in the billing group, one run for a
    backfill's whole range (each asset walks the nights in order), in the `billing_nightly`
    pool. `table` is the billing table it writes (its column schema is shown); `kinds`, `owners`
    and the `domain` tag say what it touches (the billing database, Stripe, PDFs) and who answers
    for it."""
    return dg.asset(
        partitions_def=service_dates,
        group_name="billing",
        kinds=kinds,
        owners=list(owners),
        tags={"domain": domain},
        metadata={"dagster/column_schema": column_schema(table), "table": table.__tablename__},
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="billing_nightly",
        deps=list(deps),
        check_specs=list(check_specs),
        retry_policy=retry_policy,
    )


def require_stripe(context: dg.AssetExecutionContext, payments: Payments) -> None:
    """A step that talks to Stripe fails at once, alone, when there is no Stripe key: with a
    message that names the setting and where to set it, not a stack trace. No retry (a retry
    would not find a key either); the steps that do not talk to Stripe ran without it."""
    if payments.configured():
        return
    message = payments.missing_key_message()
    context.log.error(message)
    raise dg.Failure(
        description=message,
        metadata={"missing_setting": payments.api_key_env_var},
        allow_retries=False,
    )


def run_nights(context: dg.AssetExecutionContext) -> list[date]:
    """The run's service dates in order (one for a scheduled run, a range for a backfill)."""
    return sorted(date.fromisoformat(k) for k in context.partition_keys)


def run_accounts(context: dg.AssetExecutionContext, db: BillingDatabase) -> list[AccountView]:
    """The practices this run covers: those named by the schedule's tag, else all."""
    tag = context.run.tags.get(ACCOUNTS_TAG)
    ids = [a for a in tag.split(",") if a] if tag else None
    with db.engine.connect() as conn:
        accounts = list_accounts(conn, ids)
    label_run(context, [a.id for a in accounts])
    return accounts


def label_run(context: dg.AssetExecutionContext, account_ids: Sequence[str]) -> None:
    """Tag the run with the nights and practices it covers, for the run list: a backfill
    launched from the UI only carries Dagster's partition range tags. Ids only."""
    tags = {
        NIGHTS_TAG: nights_label(run_nights(context)),
        PRACTICES_TAG: practices_label(account_ids),
    }
    if all(context.run.tags.get(k) == v for k, v in tags.items()):
        return
    try:
        context.instance.add_run_tags(context.run.run_id, tags)
    except Exception as exc:  # a label: never worth failing a night for
        context.log.warning(f"could not tag the run ({type(exc).__name__})")


def for_each_practice_night(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    step: Step,
    work: Callable[[AccountView, date, datetime], NightFigures],
    failed: dict[str, str],
) -> list[NightFigures]:
    """Run `work` for every (night, practice) of the run, night by night in order. A practice
    whose step time has not come yet is left for its own tick. One practice's failure does not
    stop the others: its later nights are skipped, the rest run, and `failed` names it (ids
    only) for the `every_practice_done` check, loud in the UI."""
    accounts = run_accounts(context, db)
    figures: list[NightFigures] = []
    for night in run_nights(context):
        for account in accounts:
            if account.id in failed:
                continue
            try:
                scheduled = step_instant(night, account.timezone, step)
                if not clock.is_due(scheduled, account.timezone):
                    skipped = NightFigures(account.id, night)
                    skipped.add("not_due_yet")
                    figures.append(skipped)
                    continue
                # Stamped with the scheduled instant (a bill's created_at, an attempt's
                # attempted_at, a payment's paid_at) on either clock: every rule that looks
                # across assets reads these instants, so a late run or a backfill does what the
                # schedule would have done that night. When the work really ran is in the run
                # history, an attempt's claimed_at and Stripe.
                step_fault(context.asset_key.to_user_string(), account.id, night.isoformat())
                figures.append(work(account, night, scheduled))
            except Exception as exc:
                _fail(context, db, clock, step, failed, account, night, exc)
    return figures


def _note_failure(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    account: AccountView,
    night: date,
    step: Step,
    why: str,
) -> None:
    """Record the failure for the ledger and the catch-up sensor's retries. The database may
    be what failed: then the sensor sees a try that did not finish, which it retries too."""
    asset = context.asset_key.to_user_string()
    try:
        db.transact(
            lambda conn: note_failure(
                conn, account.id, night, step, f"{asset}: {why}", clock.now_for(account.timezone)
            )
        )
    except Exception as exc:
        context.log.warning(
            f"could not record the failure of practice {account.id} night {night} "
            f"({type(exc).__name__})"
        )


def for_each_night(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    step: Step,
    work: NightWork,
    failed: dict[str, str],
) -> list[NightFigures]:
    """`for_each_practice_night` with each practice's night in one transaction, the practice
    read as it stood at the step's instant (settings are history)."""

    def in_transaction(account: AccountView, night: date, at: datetime) -> NightFigures:
        return db.transact(lambda conn: work(conn, load_practice(conn, account.id, at), night, at))

    return for_each_practice_night(context, db, clock, step, in_transaction, failed)


# How many practices' nights one transaction does in the set-based steps (memory and a
# transaction's length are bounded by it; BILLING_PRACTICES_PER_TRANSACTION overrides it).
PRACTICES_PER_TRANSACTION = 100

PracticesWork = Callable[[Connection, list[tuple[Practice, datetime]], date], list[NightFigures]]
AccountsWork = Callable[[Connection, list[tuple[AccountView, datetime]], date], list[NightFigures]]


def _batch_size() -> int:
    if os.environ.get(STEP_FAULT_ENV):
        # The test-only fault hook counts the times each practice's work is reached: keep
        # to one practice per transaction, as the hook's tests expect.
        return 1
    return whole_number_setting(
        "BILLING_PRACTICES_PER_TRANSACTION", PRACTICES_PER_TRANSACTION, 1, 100_000
    )


def for_each_night_of(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    step: Step,
    work: PracticesWork,
    failed: dict[str, str],
    *,
    cards: bool = True,
) -> list[NightFigures]:
    """`for_each_night` with many practices per transaction: `work` takes a batch of
    practices (each read as it stood at its step's instant) and does their night in a few
    statements. A batch that fails is rolled back and done again one practice per
    transaction, so a practice whose data breaks the step fails alone, as in
    `for_each_night`. `cards=False`: the practices are read without cards
    (`load_practices`), for work that decides nothing about payment."""
    return for_each_account_night_of(
        context, db, clock, step, reading_practices(work, cards=cards), failed
    )


def reading_practices(
    work: PracticesWork, *, cards: bool = True, listed_only: bool = False
) -> AccountsWork:
    """`work` given each practice of the batch read as it stood at its step's instant
    (`listed_only`: with only the clients that the night's `eligible_sessions` list)."""

    def load(
        conn: Connection, batch: list[tuple[AccountView, datetime]], night: date
    ) -> list[NightFigures]:
        at_of: dict[datetime, list[str]] = {}
        for account, at in batch:
            at_of.setdefault(at, []).append(account.id)
        practices: dict[str, Practice] = {}
        listed_on = night if listed_only else None
        for at, ids in at_of.items():
            practices.update(load_practices(conn, ids, at, cards=cards, listed_on=listed_on))
        return work(conn, [(practices[a.id], at) for a, at in batch], night)

    return load


def for_each_account_night_of(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    step: Step,
    work: AccountsWork,
    failed: dict[str, str],
) -> list[NightFigures]:
    """`for_each_night_of` for work that reads no practice's settings (ids are enough)."""
    accounts = run_accounts(context, db)
    return _account_nights(context, db, clock, step, work, failed, accounts, run_nights(context))


# How many nights of a backfill's range one transaction does when the work takes ranges
# (BILLING_NIGHTS_PER_TRANSACTION overrides it).
NIGHTS_PER_TRANSACTION = 92

NightsWork = Callable[[Connection, list[AccountView], list[date]], list[NightFigures]]


def for_each_account_nights_of(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    step: Step,
    range_work: NightsWork | None,
    work: AccountsWork,
    failed: dict[str, str],
) -> list[NightFigures]:
    """`for_each_account_night_of` with `range_work`, which does many nights of a batch of
    practices in a few statements (a backfill's range): used for the practices whose every
    night of the run is due, in transactions of up to `NIGHTS_PER_TRANSACTION` nights. A
    range that fails is rolled back, and its nights and the later ones are done night by
    night by `work` (a practice whose data breaks the step then fails alone). A run of one
    night, the test-only fault hook, no `range_work`, or SQLite: night by night.

    Not on SQLite: it has one writer at a time, and a range's transaction would hold that lock
    for its whole length, past the 30 s that the sensors' and the UI's writers wait for it on a
    slow machine; the embedded default holds a practice or a few, where ranges gain nothing."""
    size = _batch_size()
    accounts = run_accounts(context, db)
    nights = run_nights(context)
    ranged_here = db.engine.dialect.name == "postgresql"
    if range_work is None or len(nights) < 2 or size == 1 or not ranged_here:
        return _account_nights(context, db, clock, step, work, failed, accounts, nights)
    per_night: list[AccountView] = []
    ranged: list[AccountView] = []
    for account in accounts:
        try:
            due = all(
                clock.is_due(step_instant(n, account.timezone, step), account.timezone)
                for n in nights
            )
        except Exception:  # its zone is bad: the night-by-night path fails it alone
            due = False
        (ranged if due else per_night).append(account)
    chunk = whole_number_setting(
        "BILLING_NIGHTS_PER_TRANSACTION", NIGHTS_PER_TRANSACTION, 1, 100_000
    )
    figures: list[NightFigures] = []
    for first in range(0, len(ranged), size):
        batch = ranged[first : first + size]
        for start in range(0, len(nights), chunk):
            some = nights[start : start + chunk]
            try:
                figures.extend(db.transact(partial(_as_range, range_work, batch, some)))
            except Exception as exc:
                context.log.warning(
                    f"a range of {len(some)} nights from {some[0]} for {len(batch)} practices "
                    f"failed ({type(exc).__name__}); they are done again night by night"
                )
                figures.extend(
                    _account_nights(context, db, clock, step, work, failed, batch, nights[start:])
                )
                break
    if per_night:
        figures.extend(_account_nights(context, db, clock, step, work, failed, per_night, nights))
    order = {a.id: i for i, a in enumerate(accounts)}
    return sorted(figures, key=lambda f: (f.night, order[f.account_id]))


def _as_range(
    work: NightsWork, batch: list[AccountView], nights: list[date], conn: Connection
) -> list[NightFigures]:
    return work(conn, batch, nights)


def _account_nights(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    step: Step,
    work: AccountsWork,
    failed: dict[str, str],
    accounts: Sequence[AccountView],
    nights: Sequence[date],
) -> list[NightFigures]:
    size = _batch_size()
    figures: list[NightFigures] = []
    for night in nights:
        slots: dict[str, NightFigures] = {}
        due: list[tuple[AccountView, datetime]] = []
        for account in accounts:
            if account.id in failed:
                continue
            try:
                scheduled = step_instant(night, account.timezone, step)
                is_due = clock.is_due(scheduled, account.timezone)
            except Exception as exc:  # a practice's bad data (its zone) fails it alone
                _fail(context, db, clock, step, failed, account, night, exc)
                continue
            if not is_due:
                slots[account.id] = NightFigures(account.id, night)
                slots[account.id].add("not_due_yet")
            else:
                due.append((account, scheduled))
        for first in range(0, len(due), size):
            batch = due[first : first + size]
            if size > 1:
                try:
                    done = db.transact(partial(_as_batch, work, batch, night))
                    slots.update({f.account_id: f for f in done})
                    continue
                except Exception as exc:
                    context.log.warning(
                        f"a batch of {len(batch)} practices failed night {night} "
                        f"({type(exc).__name__}); each is done again on its own"
                    )
            for account, scheduled in batch:
                one = _one_practice(
                    context, db, clock, step, work, failed, account, night, scheduled
                )
                if one is not None:
                    slots[account.id] = one
        figures.extend(slots[a.id] for a in accounts if a.id in slots)
    return figures


def _as_batch(
    work: AccountsWork, batch: list[tuple[AccountView, datetime]], night: date, conn: Connection
) -> list[NightFigures]:
    return work(conn, batch, night)


def _one_practice(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    step: Step,
    work: AccountsWork,
    failed: dict[str, str],
    account: AccountView,
    night: date,
    scheduled: datetime,
) -> NightFigures | None:
    """One practice's night in a transaction of its own, as `for_each_practice_night`."""
    try:
        step_fault(context.asset_key.to_user_string(), account.id, night.isoformat())
        return db.transact(lambda conn: work(conn, [(account, scheduled)], night))[0]
    except Exception as exc:
        _fail(context, db, clock, step, failed, account, night, exc)
        return None


def _fail(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    step: Step,
    failed: dict[str, str],
    account: AccountView,
    night: date,
    exc: Exception,
) -> None:
    """Report a practice's failed night: named in `failed` for the `every_practice_done`
    check, logged and noted for the ledger. The exception's text may quote row values: only its
    type is logged, unless it is a SafeMessageError, built to carry no PHI (a database that is
    busy names its tables and timeout, one that does not answer its host)."""
    why = str(exc) if isinstance(exc, SafeMessageError) else type(exc).__name__
    failed[account.id] = f"{night}: {why}"
    context.log.error(
        f"practice {account.id} night {night} failed ({why}); "
        "its work was rolled back, other practices go on"
    )
    _note_failure(context, db, clock, account, night, step, why)


EVERY_PRACTICE_DONE = "every_practice_done"


def practice_check_spec(asset: str, *, blocking: bool = False) -> dg.AssetCheckSpec:
    """Blocking where a practice's failure must fail the run (AutoPay: money whose outcome is
    not known): the step fails after every other practice ran."""
    return dg.AssetCheckSpec(
        EVERY_PRACTICE_DONE,
        asset=asset,
        blocking=blocking,
        description="Every practice's night was done; a practice whose data broke the step "
        "is named here (the other practices went on).",
    )


def practice_check(asset: str, failed: dict[str, str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=EVERY_PRACTICE_DONE,
        asset_key=asset,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"failed_practices": dg.MetadataValue.json(failed)},
        description=(
            "failed: " + ", ".join(f"{a} ({why})" for a, why in sorted(failed.items()))
            if failed
            else "every practice done"
        ),
    )


def night_figures(
    figures: Sequence[NightFigures], headline: Sequence[str], nights: Sequence[date]
) -> dict[str, dict[str, dg.MetadataValue]]:
    """Finance's figures of each night (every night of `nights`, zeros included): totals,
    amounts in cents and dollars, a row per practice. Ids and numbers only, never a name."""
    by_night: defaultdict[date, list[NightFigures]] = defaultdict(list)
    for f in figures:
        by_night[f.night].append(f)
    out: dict[str, dict[str, dg.MetadataValue]] = {}
    for night in sorted(set(nights) | set(by_night)):
        totals: Counter[str] = Counter()
        amount = 0
        per_account: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for f in by_night.get(night, []):
            amount += f.amount_cents
            totals.update(f.counts)
            per_account[f.account_id].update(f.counts)
            per_account[f.account_id]["amount_cents"] += f.amount_cents
        metadata: dict[str, dg.MetadataValue] = {
            "night": dg.MetadataValue.text(night.isoformat()),
            **{key: dg.MetadataValue.int(totals.get(key, 0)) for key in headline},
            "amount_cents": dg.MetadataValue.int(amount),
            "amount": dg.MetadataValue.text(dollars(amount)),
            "practices": dg.MetadataValue.int(len(per_account)),
            "per_practice": dg.MetadataValue.json({k: dict(v) for k, v in per_account.items()}),
        }
        out[night.isoformat()] = metadata
    return out


def summarize(
    context: dg.AssetExecutionContext, figures: Sequence[NightFigures], headline: Sequence[str]
) -> dict[str, dg.MetadataValue]:
    """Each night of the run gets its own figures on its own partition's materialization
    (`add_asset_metadata` with the partition key), whichever backfill policy ran it: a ranged
    run has one `MaterializeResult` for all its partitions, and Dagster copies its metadata onto
    each of them (dagster-io/dagster issue 18123), so the result's own metadata stays empty and
    no night ever shows the batch's figures. Returns that (empty) run-wide metadata."""
    for night, metadata in night_figures(figures, headline, run_nights(context)).items():
        context.add_asset_metadata(metadata, partition_key=night)
    return {}
