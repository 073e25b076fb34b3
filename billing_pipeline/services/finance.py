"""Finance's figures of a practice's night, from the rows db/finance.py reads (pandas).

- bills, bills_cents: the bills the night made, and their total;
- collected_cents, charges_succeeded: what the night's AutoPay collected, in how many charges;
- charges_declined, declined_cents: charges the bank declined, and their total;
- charges_requires_action: charges that need the client's authentication;
- open_balance_cents: what clients still owe after the night's AutoPay: everything billed
  through the night, less everything AutoPay collected through it (bills are paid only by
  AutoPay, whole);
- documents_shared: the night's documents (bills, superbills, statements) shared so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import pandas as pd

from billing_pipeline.db.finance import COLUMNS, FIGURES, FinanceInputs


def daily_figures(
    inputs: FinanceInputs, nights: Sequence[date], accounts: Sequence[str]
) -> pd.DataFrame:
    """One row per practice and night of the run (zeros where nothing happened), in integer
    cents, ordered by night then practice."""
    index = pd.MultiIndex.from_product(
        [sorted(accounts), sorted(nights)], names=["account_id", "night"]
    )
    out = pd.DataFrame(0, index=index, columns=list(FIGURES), dtype="int64")
    if not out.empty:
        bills = _by_night(inputs.bills, ["bills", "bills_cents"])
        paid = _by_night(inputs.payments, ["collected_cents"])
        out.update(bills.reindex(index).fillna(0))
        out.update(paid.reindex(index).fillna(0))
        for status, count, cents in (
            ("succeeded", "charges_succeeded", None),
            ("declined", "charges_declined", "declined_cents"),
            ("requires_action", "charges_requires_action", None),
        ):
            rows = inputs.attempts[inputs.attempts["status"] == status]
            found = _by_night(rows, ["attempts", "amount_cents"]).reindex(index).fillna(0)
            out[count] = found["attempts"]
            if cents:
                out[cents] = found["amount_cents"]
        out["documents_shared"] = (
            _by_night(inputs.shared, ["documents_shared"])
            .reindex(index)
            .fillna(0)["documents_shared"]
        )
        out["open_balance_cents"] = [
            _through(bills, "bills_cents", a, n) - _through(paid, "collected_cents", a, n)
            for a, n in index
        ]
    out = out.astype("int64").reset_index()
    return out.sort_values(["night", "account_id"]).reset_index(drop=True)[list(COLUMNS)]


def _by_night(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """`frame` summed per (account_id, night), nights as dates, figures as integers."""
    if frame.empty:
        empty = pd.MultiIndex.from_tuples([], names=["account_id", "night"])
        return pd.DataFrame(columns=columns, index=empty, dtype="int64")
    frame = frame.assign(night=pd.to_datetime(frame["night"]).dt.date)
    return frame.groupby(["account_id", "night"])[columns].sum().astype("int64")


def _through(frame: pd.DataFrame, column: str, account: str, night: date) -> int:
    """The sum of `column` over the practice's nights up to and including `night`."""
    if frame.empty:
        return 0
    rows = frame.reset_index()
    mine = rows[(rows["account_id"] == account) & (rows["night"] <= night)]
    return int(mine[column].sum())
