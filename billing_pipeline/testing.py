"""Test-only hooks. Production never sets their variables; then each is one lookup.

`fault_point` lets tests/integration/test_autopay_crashes.py kill a run with SIGKILL at an
exact place in AutoPay, like a machine dying there.
"""

from __future__ import annotations

import os
import signal
import threading
from enum import StrEnum

FAULT_ENV = "BILLING_FAULT"


class FaultPoint(StrEnum):
    BEFORE_STRIPE = "before_stripe"  # a charge is claimed and committed, not yet sent
    AFTER_STRIPE_SUCCESS = "after_stripe_success"  # Stripe charged; outcome not yet written
    AFTER_OUTCOME = "after_outcome"  # the outcome is committed


_fault_hits: dict[str, int] = {}
_fault_lock = threading.Lock()


def fault_point(point: FaultPoint) -> None:
    """TEST-ONLY crash hook for tests/integration/test_autopay_crashes.py.

    With `BILLING_FAULT=<point>[@n]` in the environment, the process kills itself with SIGKILL
    the n-th time (default 1) it reaches `point`: no exception, no `finally`, no rollback
    beyond what the database does for an open transaction, exactly like a machine dying.
    Production never sets the variable; then this is one dictionary lookup."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name not in FaultPoint.__members__.values():
        raise ValueError(f"{FAULT_ENV}: unknown fault point {name!r}")
    if name != point.value:
        return
    with _fault_lock:
        _fault_hits[name] = _fault_hits.get(name, 0) + 1
        hit = _fault_hits[name] == int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)


STEP_FAULT_ENV = "BILLING_STEP_FAULT"


class InjectedFault(RuntimeError):
    """TEST-ONLY: the failure `step_fault` raises."""


_step_fault_hits: dict[str, int] = {}


def step_fault(asset: str, account_id: str, night: str) -> None:
    """TEST-ONLY failure hook for the catch-up tests (tests/integration/test_catch_up.py).

    With `BILLING_STEP_FAULT=<asset>:<account id>:<night>[@n]` in the environment (several,
    separated by commas), the asset's work for that practice's night raises InjectedFault the
    first n times (default 1) in this process, like a bug or an outage that goes away.
    Production never sets the variable."""
    spec = os.environ.get(STEP_FAULT_ENV)
    if not spec:
        return
    target = f"{asset}:{account_id}:{night}"
    faults = {}
    for one in spec.split(","):
        where, _, times = one.partition("@")
        faults[where] = int(times or 1)
    if target not in faults:
        return
    with _fault_lock:
        _step_fault_hits[target] = _step_fault_hits.get(target, 0) + 1
        fail = _step_fault_hits[target] <= faults[target]
    if fail:
        raise InjectedFault(f"injected fault in {asset} for {account_id} night {night}")


def reset_step_faults() -> None:
    """TEST-ONLY: forget the injected faults already raised in this process."""
    with _fault_lock:
        _step_fault_hits.clear()
