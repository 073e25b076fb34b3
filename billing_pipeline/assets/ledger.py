"""night_ledger: per practice and night, the state of each step, read from the database (what
is recorded done, the catch-up sensor's tries and the failures runs recorded) and from the runs
in flight. Its check fails while a step is overdue by more than an hour, or a night is missed."""

from collections import Counter, defaultdict
from datetime import date

import dagster as dg

from billing_pipeline.assets.common import BILLING_OPS
from billing_pipeline.config import catch_up_policy
from billing_pipeline.domain.schedule import State, Step, StepState
from billing_pipeline.partitions import ACCOUNTS_TAG, DATABASE_TAG
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.services.catchup import night_states

STEP_TAG = "billing/step"
CHECK = "every_step_on_time"
SHOWN = 200  # rows listed in the metadata; the counts say how many in all
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def running_steps(instance: dg.DagsterInstance, database: str) -> dict[str, set[tuple[date, Step]]]:
    """{account id: {(night, step)}} of the catch-up sensor's runs still queued or running on
    this billing database (their tags name the step, the night and the practices)."""
    out: defaultdict[str, set[tuple[date, Step]]] = defaultdict(set)
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=IN_FLIGHT, tags={DATABASE_TAG: database})
    )
    for run in runs:
        step, night = run.tags.get(STEP_TAG), run.tags.get("dagster/partition")
        if not step or not night:
            continue
        for account_id in run.tags.get(ACCOUNTS_TAG, "").split(","):
            if account_id:
                out[account_id].add((date.fromisoformat(night), Step(step)))
    return dict(out)


def _row(s: StepState) -> dict[str, object]:
    return {
        "account_id": s.account_id,
        "night": s.night.isoformat(),
        "step": s.step.value,
        "state": s.state.value,
        "due_at": s.due_at.isoformat(),
        "tries": s.tries,
        "error": s.error,
        "overdue": s.overdue,
    }


def ledger_check(states: list[StepState]) -> dg.AssetCheckResult:
    """Fails (ERROR) while a step inside the horizon is overdue by more than an hour (due,
    running, waiting for its retry, or failed), naming the practices, nights and steps; fails
    as a warning while only missed nights (past the horizon, for an analyst to backfill)
    remain."""
    overdue = [s for s in states if s.overdue and s.state != State.MISSED]
    missed = [s for s in states if s.state == State.MISSED]
    named = sorted({f"{s.account_id} {s.night} {s.step} ({s.state})" for s in overdue})
    missed_by_practice: dict[str, list[str]] = {}
    for s in missed:
        nights = missed_by_practice.setdefault(s.account_id, [])
        if s.night.isoformat() not in nights:
            nights.append(s.night.isoformat())
    parts = []
    if overdue:
        parts.append(f"overdue ({len(named)}): " + "; ".join(named[:20]))
    if missed:
        parts.append(
            "missed nights to backfill: "
            + "; ".join(
                f"{a} {n[0]}..{n[-1]} ({len(n)})" for a, n in sorted(missed_by_practice.items())
            )
        )
    description = " | ".join(parts) or "every step on time"
    return dg.AssetCheckResult(
        check_name=CHECK,
        asset_key="night_ledger",
        passed=not overdue and not missed,
        severity=dg.AssetCheckSeverity.ERROR if overdue else dg.AssetCheckSeverity.WARN,
        metadata={
            "overdue_steps": dg.MetadataValue.int(len(overdue)),
            "overdue_practices": dg.MetadataValue.json(sorted({s.account_id for s in overdue})),
            "overdue": dg.MetadataValue.json([_row(s) for s in overdue[:SHOWN]]),
            "missed_steps": dg.MetadataValue.int(len(missed)),
            "missed_nights": dg.MetadataValue.json(
                {
                    a: {"first": n[0], "last": n[-1], "nights": len(n)}
                    for a, n in sorted(missed_by_practice.items())
                }
            ),
        },
        description=description,
    )


# The ledger's rows (read from night_steps and night_step_tries, one per practice, night and
# step).
LEDGER_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("account_id", "string", description="The practice."),
        dg.TableColumn("night", "date", description="The service date."),
        dg.TableColumn("step", "string", description="bills (00:00) or autopay (00:30)."),
        dg.TableColumn(
            "state",
            "string",
            description="done, running, due, retry_wait, failed, missed or not_yet_due.",
        ),
        dg.TableColumn("tries", "int", description="Runs launched for the step."),
        dg.TableColumn("last_error", "string", description="The last error's type or words."),
    ]
)


@dg.asset(
    group_name="billing",
    kinds={"postgres"},
    owners=[BILLING_OPS],
    tags={"domain": "operations"},
    metadata={"dagster/column_schema": LEDGER_SCHEMA},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset="night_ledger",
            description="No step of a practice's night is more than an hour late (inside the "
            "catch-up horizon), and no night past the horizon is left missed.",
        )
    ],
)
def night_ledger(
    context: dg.AssetExecutionContext, db: BillingDatabase, clock: Clock
) -> dg.MaterializeResult:
    """Finance's ledger of the nights: per practice and night, each step's state (done,
    running, due, failed with the error type and its tries, missed, not yet due). Nights past
    the catch-up horizon are never launched by themselves: they are shown missed here, for an
    analyst to backfill. The oldest step not done shows how late the slowest practice is."""
    now = clock.now_for("UTC")
    running = running_steps(context.instance, db.fingerprint())
    with db.engine.connect() as conn:
        states = night_states(conn, now, catch_up_policy(), running, with_missed=True)
    by_state = Counter(s.state.value for s in states)
    per_practice: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for s in states:
        per_practice[s.account_id][s.state.value] += 1
    open_steps = [s for s in states if s.state not in (State.DONE, State.NOT_YET_DUE)]
    oldest = min((s.due_at for s in open_steps), default=None)
    return dg.MaterializeResult(
        metadata={
            "as_of": dg.MetadataValue.text(now.isoformat()),
            **{state.value: dg.MetadataValue.int(by_state.get(state.value, 0)) for state in State},
            "oldest_open_step_due_at": dg.MetadataValue.text(oldest.isoformat() if oldest else ""),
            "per_practice": dg.MetadataValue.json({a: dict(c) for a, c in per_practice.items()}),
            "open_steps": dg.MetadataValue.json(
                [_row(s) for s in open_steps if s.state != State.MISSED][:SHOWN]
            ),
        },
        check_results=[ledger_check(states)],
    )
