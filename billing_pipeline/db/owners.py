"""Who holds an AutoPay claim, and whether that holder is still alive.

A run that claims attempts does so as a `ClaimOwner`: a token naming the Dagster run, host and
process, a lease on its pending attempts that a background thread renews, and a lock that the
database or the kernel releases the moment the process dies:

- PostgreSQL: a session-level advisory lock held on a connection of its own. A SIGKILL closes
  the socket; the server ends the session and frees the lock at once.
- SQLite (a file on this machine): an exclusive `flock` on a file beside the database, which
  the kernel releases when the process dies.

Another run asks `OwnerProbe.lock_released(token)`: it tries to take the same lock; if it can,
nobody holds it, so the owner is dead (the probe lets it go again at once). The rule that
combines this with the lease and Dagster's view of the run is `domain.autopay.owner_is_dead`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine, and_, text, update

from billing_pipeline.db import models as m
from billing_pipeline.domain.autopay import Outcome

log = logging.getLogger(__name__)

# Advisory-lock keys of claim owners live in their own namespace (the first int of the pair).
_PG_NAMESPACE = 0x62696C6C  # "bill"


def new_token(run_id: str | None) -> str:
    """run id | host | pid | random: unique per claiming run, readable by an operator."""
    host = socket.gethostname()[:40]
    return f"{run_id or 'no-run'}|{host}|{os.getpid()}|{uuid.uuid4().hex[:12]}"


def run_id_of(token: str) -> str | None:
    run_id = token.split("|", 1)[0]
    return None if run_id == "no-run" else run_id


def _pg_key(token: str) -> int:
    """A signed 32-bit key for pg_advisory_lock(int, int)."""
    raw = int.from_bytes(hashlib.sha256(token.encode()).digest()[:4], "big")
    return raw - (1 << 32) if raw >= (1 << 31) else raw


def _sqlite_lock_dir(engine: Engine) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(f"{database}.owners")


def _lock_file(folder: Path, token: str) -> Path:
    return folder / (hashlib.sha256(token.encode()).hexdigest()[:32] + ".lock")


class OwnerProbe:
    """Tells whether another run's session-bound lock is still held."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def lock_released(self, token: str) -> bool | None:
        """True when no process holds the owner's lock (it died or finished), False while one
        does, None when this database has no such lock (then the lease decides)."""
        if self._engine.dialect.name == "postgresql":
            with self._engine.connect() as conn:
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(:ns, :key)"),
                    {"ns": _PG_NAMESPACE, "key": _pg_key(token)},
                ).scalar_one()
                if got:
                    conn.execute(
                        text("SELECT pg_advisory_unlock(:ns, :key)"),
                        {"ns": _PG_NAMESPACE, "key": _pg_key(token)},
                    )
                conn.commit()
                return bool(got)
        folder = _sqlite_lock_dir(self._engine)
        if folder is None:
            return None
        path = _lock_file(folder, token)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing also lets go of a lock we took
        return True


class ClaimOwner:
    """This run, as the holder of the AutoPay attempts it claims. Use as a context manager:
    on entry it takes its lock and starts renewing its lease; on exit (the run finished, or
    raised) it lets go of both, so the next run settles whatever it left pending at once.

    `lost` turns true when the lock's connection broke or a renewal failed: others may then
    take its attempts over, so it must send no further charge."""

    def __init__(self, engine: Engine, run_id: str | None, lease: timedelta) -> None:
        self.token = new_token(run_id)
        self.lease = lease
        self._engine = engine
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pg: Connection | None = None
        self._pg_lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def still_held(self) -> bool:
        """Asks the lock's session now (one round trip): before each batch of claims."""
        if not self.lost and not self._lock_alive():
            self._lost.set()
        return not self.lost

    def lease_until(self) -> datetime:
        return datetime.now(UTC) + self.lease

    def __enter__(self) -> ClaimOwner:
        self._take_lock()
        self._thread = threading.Thread(target=self._renew_loop, name="claim-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            with self._engine.begin() as conn:
                self._expire_lease(conn)
        except Exception as err:  # the lock below still goes; the lease runs out by itself
            log.warning("could not end the AutoPay lease (%s)", type(err).__name__)
        self._release_lock()

    # --- lock ---------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        if self._engine.dialect.name == "postgresql":
            conn = self._engine.connect()
            conn.execute(
                text("SELECT pg_advisory_lock(:ns, :key)"),
                {"ns": _PG_NAMESPACE, "key": _pg_key(self.token)},
            )
            conn.commit()
            self._pg = conn
            return
        folder = _sqlite_lock_dir(self._engine)
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self._path = _lock_file(folder, self.token)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _lock_alive(self) -> bool:
        if self._pg is None:
            return True
        with self._pg_lock:  # the lease thread and the charging thread both ask
            try:
                self._pg.execute(text("SELECT 1"))
                self._pg.commit()
            except Exception:
                return False
            return True

    def _release_lock(self) -> None:
        if self._pg is not None:
            try:
                self._pg.execute(
                    text("SELECT pg_advisory_unlock(:ns, :key)"),
                    {"ns": _PG_NAMESPACE, "key": _pg_key(self.token)},
                )
                self._pg.commit()
                self._pg.close()
            except Exception:
                self._pg.invalidate()  # a broken session: the server frees its locks
            self._pg = None
        if self._fd is not None:
            if self._path is not None:
                self._path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    # --- lease --------------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        interval = max(self.lease.total_seconds() / 4, 0.05)
        while not self._stop.wait(interval):
            if not self._lock_alive():
                self._lost.set()
                log.error("AutoPay lost its claim lock; no further charge is sent")
                return
            try:
                with self._engine.begin() as conn:
                    self.renew(conn)
            except Exception as err:
                self._lost.set()
                log.error("AutoPay could not renew its lease (%s)", type(err).__name__)
                return

    def renew(self, conn: Connection) -> int:
        return conn.execute(
            update(m.AutopayAttempt)
            .where(
                and_(
                    m.AutopayAttempt.owner == self.token,
                    m.AutopayAttempt.status == Outcome.PENDING.value,
                )
            )
            .values(lease_expires_at=self.lease_until())
        ).rowcount

    def _expire_lease(self, conn: Connection) -> None:
        """What we still hold pending (Stripe did not answer) is left for the next run now."""
        conn.execute(
            update(m.AutopayAttempt)
            .where(
                and_(
                    m.AutopayAttempt.owner == self.token,
                    m.AutopayAttempt.status == Outcome.PENDING.value,
                )
            )
            .values(lease_expires_at=datetime.now(UTC))
        )
