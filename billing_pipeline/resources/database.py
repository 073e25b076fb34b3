"""BillingDatabase: the billing database (SQLite or PostgreSQL) for assets and sensors."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TypeVar

import dagster as dg
from pydantic import Field
from sqlalchemy import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from billing_pipeline.config import database_url
from billing_pipeline.db.engine import SchemaBehind, get_engine, require_current
from billing_pipeline.db.errors import DatabaseBusy, DatabaseUnreachable
from billing_pipeline.errors import SafeMessageError

__all__ = [
    "BillingDatabase",
    "DatabaseBusy",
    "DatabaseUnreachable",
    "SafeMessageError",
    "SchemaBehind",
]

T = TypeVar("T")
_checked: set[str] = set()


class BillingDatabase(dg.ConfigurableResource):
    """The billing database. Empty `url` means BILLING_DATABASE_URL, else the embedded SQLite
    file in the project's data folder. On first use it checks that the schema is at the newest
    migration and refuses to run otherwise (SchemaBehind, naming `billing-pipeline db
    upgrade`): migrations are a deploy step, never done from inside a run."""

    url: str = Field(default="", description="SQLAlchemy URL; empty for the environment's.")

    def resolved_url(self) -> str:
        return self.url or database_url()

    def fingerprint(self) -> str:
        """A short id of this database (never its password), to tell apart the runs of
        several billing databases that share one Dagster instance (simulations, tests)."""
        url = make_url(self.resolved_url()).set(password=None)
        return hashlib.sha256(url.render_as_string().encode()).hexdigest()[:12]

    @property
    def engine(self) -> Engine:
        url = self.resolved_url()
        engine = get_engine(url)
        if url not in _checked:
            require_current(engine)
            _checked.add(url)
        return engine

    def transact(self, work: Callable[[Connection], T], attempts: int = 4) -> T:
        """Run `work` in one transaction. A unique key refused by a concurrent run, a deadlock
        or a serialization failure rolls the whole transaction back and runs it again; the
        idempotent work then finds what the other run did and does nothing twice.

        A statement cancelled by the lock or statement timeout (PostgreSQL) is not run again:
        the engine raises it as DatabaseBusy (db/errors.py), naming its tables and the
        timeout, and the practice's night is left for the next run."""
        for attempt in range(attempts):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except (IntegrityError, OperationalError) as exc:
                if attempt + 1 >= attempts or not _retryable(exc):
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")


def _retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    text = str(exc.orig).lower()
    return any(s in text for s in ("deadlock", "serializ", "locked", "could not obtain"))
