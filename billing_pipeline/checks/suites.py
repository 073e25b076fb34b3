"""The Great Expectations suites on a run's nights, as asset checks (checks/expectations.py runs
them; db/frames.py reads the rows). Each failing expectation is named in the metadata with the
ids of its rows, never a name or any other value.

`bills_meet_expectations` is blocking: a bill whose total disagrees with its lines, a negative
bill, a session on two bills or a bill in an unknown state would be charged
by AutoPay, so AutoPay (downstream in the same run: `nightly_chain_job`, backfills, and
`autopay_job`, which runs this check first) does not run for those nights.
"""

from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any

import dagster as dg
import pandas as pd
from sqlalchemy import Connection

from billing_pipeline.assets.autopay import autopay_attempts
from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.delivery import delivery_queue
from billing_pipeline.assets.sessions import resolved_settings
from billing_pipeline.checks.expectations import Expect, SuiteOutcome, validate
from billing_pipeline.db import frames
from billing_pipeline.partitions import ACCOUNTS_TAG, service_dates
from billing_pipeline.resources.database import BillingDatabase

SHOWN = 100  # ids listed per failing expectation; the count says how many in all
BILL_STATUSES = ["open", "paid"]
OUTCOMES = ["pending", "succeeded", "declined", "requires_action", "error"]
DOCUMENT_KINDS = ["bill", "superbill", "statement"]
RECIPIENTS = ["client", "billing_contact"]
# The seed's advice: share bills at least an hour after they are made when AutoPay is on,
# so that the client sees the bill already paid (AutoPay runs at 00:30).
ADVISED_BILL_DELAY_MINUTES = 60

_RANGE_START = "dagster/asset_partition_range_start"
_RANGE_END = "dagster/asset_partition_range_end"
_PARTITION = "dagster/partition"


def check_nights(context: dg.AssetCheckExecutionContext) -> list[date]:
    """The service dates of the check's run: its partition, or its backfill's range."""
    tags = context.run.tags
    keys: Sequence[str] = []
    if _PARTITION in tags:
        keys = [tags[_PARTITION]]
    elif _RANGE_START in tags and _RANGE_END in tags:
        keys = service_dates.get_partition_keys_in_range(
            dg.PartitionKeyRange(tags[_RANGE_START], tags[_RANGE_END])
        )
    return sorted(date.fromisoformat(k) for k in keys)


def check_accounts(context: dg.AssetCheckExecutionContext) -> list[str] | None:
    """The practices the run covers (its tag), else None: all."""
    tag = context.run.tags.get(ACCOUNTS_TAG)
    return [a for a in tag.split(",") if a] if tag else None


Reader = Callable[[Connection, Sequence[date], Sequence[str] | None], pd.DataFrame]
# How a failing row is named in the metadata, by the column that identifies it (a session or
# client id is named as it is).
ID_PREFIX = {"bill_id": "bill-", "attempt_id": "attempt-", "delivery_id": "delivery-"}


SUITES: dict[str, Sequence[Expect]] = {}  # each check's suite, by the check's name


def suite_check(
    name: str,
    asset: dg.AssetsDefinition,
    readers: Mapping[str, Reader],
    expects: Sequence[Expect],
    *,
    blocking: bool,
    severity: dg.AssetCheckSeverity,
    description: str,
) -> dg.AssetChecksDefinition:
    """An asset check that runs the suite `expects` on the frames `readers` read for the run's
    nights and practices (the suite is named after the check)."""
    SUITES[name] = expects

    @dg.asset_check(name=name, asset=asset, blocking=blocking, description=description)
    def check(context: dg.AssetCheckExecutionContext, db: BillingDatabase) -> dg.AssetCheckResult:
        nights = check_nights(context)
        accounts = check_accounts(context)
        with db.engine.connect() as conn:
            data = {frame: read(conn, nights, accounts) for frame, read in readers.items()}
        return suite_result(validate(name, data, expects), nights, expects, severity)

    return check


def suite_result(
    outcome: SuiteOutcome,
    nights: Sequence[date],
    expects: Sequence[Expect],
    severity: dg.AssetCheckSeverity,
) -> dg.AssetCheckResult:
    """The check's result: per failing expectation its row ids (`bill-7`, `attempt-3`, a
    session or client id) and how many; the rows checked per frame and the nights."""
    prefix = {e.label: ID_PREFIX.get(e.id_column, "") for e in expects}
    failing = {
        label: [f"{prefix[label]}{i}" for i in ids[:SHOWN]] for label, ids in outcome.failed.items()
    }
    metadata: dict[str, dg.MetadataValue] = {
        "nights": dg.MetadataValue.text(
            f"{nights[0]}..{nights[-1]}" if len(nights) > 1 else str(nights[0]) if nights else ""
        ),
        **{f"rows_{name}": dg.MetadataValue.int(n) for name, n in outcome.rows.items()},
        "failing_ids": dg.MetadataValue.json(failing),
        "failing_rows": dg.MetadataValue.int(sum(len(ids) for ids in outcome.failed.values())),
    }
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=severity,
        metadata=metadata,
        description=(
            "; ".join(f"{label}: {', '.join(ids)}" for label, ids in failing.items())
            if failing
            else "every row meets the expectations"
        )[:1000],
    )


def _bills(label: str, kind: str, **kwargs: Any) -> Expect:
    return Expect(label, "bills", "bill_id", kind, kwargs)


def _attempts(label: str, kind: str, **kwargs: Any) -> Expect:
    return Expect(label, "attempts", "attempt_id", kind, kwargs)


def _deliveries(label: str, kind: str, **kwargs: Any) -> Expect:
    return Expect(label, "deliveries", "delivery_id", kind, kwargs)


PAIR_EQUAL = "ExpectColumnPairValuesToBeEqual"
A_AT_LEAST_B = "ExpectColumnPairValuesAToBeGreaterThanB"
BETWEEN = "ExpectColumnValuesToBeBetween"
IN_SET = "ExpectColumnValuesToBeInSet"
NOT_NULL = "ExpectColumnValuesToNotBeNull"

BILLS = [
    _bills(
        "bill amount equals the sum of its lines",
        PAIR_EQUAL,
        column_A="amount_cents",
        column_B="lines_cents",
    ),
    _bills("bill amount is not negative", BETWEEN, column="amount_cents", min_value=0),
    _bills("bill status is known", IN_SET, column="status", value_set=BILL_STATUSES),
    _bills("bill status is set", NOT_NULL, column="status"),
    Expect(
        "session is on one bill only",
        "billed_sessions",
        "session_id",
        "ExpectColumnValuesToBeUnique",
        {"column": "session_id"},
    ),
]

bills_meet_expectations = suite_check(
    "bills_meet_expectations",
    bills,
    {"bills": frames.bills_frame, "billed_sessions": frames.billed_sessions_frame},
    BILLS,
    blocking=True,
    severity=dg.AssetCheckSeverity.ERROR,
    description="Every bill of the night is right before anyone is charged for it: its amount "
    "is the sum of its lines and not negative, each session is on one bill only, and its "
    "status is open or paid. If not, AutoPay does not charge that night; the bills are named "
    "by id.",
)

# Not blocking: a $0.00 bill charges nobody.
bills_are_positive = suite_check(
    "bills_are_positive",
    bills,
    {"bills": frames.bills_frame},
    [_bills("bill amount is positive", BETWEEN, column="amount_cents", min_value=1)],
    blocking=False,
    severity=dg.AssetCheckSeverity.WARN,
    description="Every bill of the night is for more than $0.00. A $0.00 bill (a service whose "
    "fee is 0, such as a free consultation) is made and shared but nothing is charged for it: "
    "a warning, for staff to check the fee. The bills are named by id.",
)


def _declines(
    conn: Connection, nights: Sequence[date], accounts: Sequence[str] | None
) -> pd.DataFrame:
    attempts = frames.autopay_attempts_frame(conn, nights, accounts)
    return attempts[attempts["outcome"] == "declined"]


ATTEMPTS = [
    _attempts(
        "amount is at most the open balance at the attempt",
        A_AT_LEAST_B,
        column_A="open_balance_cents",
        column_B="amount_cents",
        or_equal=True,
    ),
    _attempts("outcome is known", IN_SET, column="outcome", value_set=OUTCOMES),
    _attempts("outcome is set", NOT_NULL, column="outcome"),
    Expect(
        "every decline has a decline code",
        "declines",
        "attempt_id",
        NOT_NULL,
        {"column": "failure_code"},
    ),
]

autopay_attempts_meet_expectations = suite_check(
    "autopay_attempts_meet_expectations",
    autopay_attempts,
    {"attempts": frames.autopay_attempts_frame, "declines": _declines},
    ATTEMPTS,
    blocking=False,
    severity=dg.AssetCheckSeverity.ERROR,
    description="No card was charged more than the client owed at that moment, every charge "
    "ended in a known way (paid, declined, needs the client's authentication, or an error) "
    "and every decline says why the bank declined it. Attempts are named by id.",
)

DELIVERIES = [
    _deliveries(
        "due at or after the document was made",
        A_AT_LEAST_B,
        column_A="scheduled_at",
        column_B="created_at",
        or_equal=True,
    ),
    _deliveries("the document exists", NOT_NULL, column="created_at"),
    _deliveries("has a recipient", NOT_NULL, column="recipient_id"),
    _deliveries(
        "recipient id is not empty",
        "ExpectColumnValueLengthsToBeBetween",
        column="recipient_id",
        min_value=1,
    ),
    _deliveries(
        "recipient is the client or the billing contact",
        IN_SET,
        column="recipient",
        value_set=RECIPIENTS,
    ),
    _deliveries("document kind is known", IN_SET, column="document_type", value_set=DOCUMENT_KINDS),
]

delivery_queue_meets_expectations = suite_check(
    "delivery_queue_meets_expectations",
    delivery_queue,
    {"deliveries": frames.deliveries_frame},
    DELIVERIES,
    blocking=False,
    severity=dg.AssetCheckSeverity.ERROR,
    description="Every document waiting to be shared is due no earlier than it was made, goes "
    "to someone (the client or their billing contact), and is a bill, a superbill or a "
    "statement. Deliveries are named by id.",
)


def _autopay_on(
    conn: Connection, nights: Sequence[date], accounts: Sequence[str] | None
) -> pd.DataFrame:
    settings = frames.resolved_settings_frame(conn, nights, accounts)
    return settings[settings["autopay_runs"].astype(bool)]


bill_delay_leaves_time_for_autopay = suite_check(
    "bill_delay_leaves_time_for_autopay",
    resolved_settings,
    {"autopay_on": _autopay_on},
    [
        Expect(
            f"bill delay at least {ADVISED_BILL_DELAY_MINUTES} minutes with AutoPay on",
            "autopay_on",
            "client_id",
            BETWEEN,
            {"column": "bill_delay_minutes", "min_value": ADVISED_BILL_DELAY_MINUTES},
        )
    ],
    blocking=False,
    severity=dg.AssetCheckSeverity.WARN,
    description="Clients with AutoPay on have their bills shared at least an hour after they "
    "are made, so they see the bill already paid (AutoPay runs at 00:30). A shorter delay is "
    "a warning: the client may see an unpaid bill that is paid minutes later.",
)

EXPECTATION_CHECKS = [
    bills_meet_expectations,
    bills_are_positive,
    autopay_attempts_meet_expectations,
    delivery_queue_meets_expectations,
    bill_delay_leaves_time_for_autopay,
]
