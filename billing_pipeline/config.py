"""Where things live: the data folder, the billing database URL, the Dagster home.

Read only when asked (never at import time), so tests and the CLI can point a process at
another database by setting the environment first.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from billing_pipeline.domain.schedule import CatchUpPolicy
from billing_pipeline.errors import SettingError

DATABASE_URL_ENV = "BILLING_DATABASE_URL"
LOCK_TIMEOUT_ENV = "BILLING_DB_LOCK_TIMEOUT_SECONDS"
STATEMENT_TIMEOUT_ENV = "BILLING_DB_STATEMENT_TIMEOUT_SECONDS"
DEFAULT_LOCK_TIMEOUT_SECONDS = 15.0
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 300.0


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The project's data folder (SQLite file, Dagster home of the demo); `BILLING_DATA_DIR`
    moves it."""
    path = Path(os.environ.get("BILLING_DATA_DIR") or project_root() / "data")
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_database_path() -> Path:
    """The embedded SQLite file in the data folder. Naming it creates nothing: only the
    commands that set a database up (`scenario load`, `db upgrade`) make the file."""
    folder = Path(os.environ.get("BILLING_DATA_DIR") or project_root() / "data")
    return folder / "billing.db"


def default_database_url() -> str:
    return f"sqlite:///{embedded_database_path()}"


def normalize_database_url(url: str) -> str:
    """Accept the plain `postgresql://user@host:port/db` people paste.

    SQLAlchemy 2.1 maps `postgresql://` to psycopg 3, which this project does not install;
    dagster-postgres needs psycopg2 anyway, so every PostgreSQL URL is pinned to psycopg2.
    """
    url = url.strip()
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def database_url() -> str:
    return normalize_database_url(os.environ.get(DATABASE_URL_ENV) or default_database_url())


def redact_url(url: str) -> str:
    """The URL with its password masked (`***`), for messages; also a URL that does not parse
    (a URL is configuration, not PHI: people need to see what they set)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparsable: mask whatever stands between `user:` and `@`
        return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", url)


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long one statement on the billing database (PostgreSQL) may wait for a lock, and
    run in all, before the server cancels it."""

    lock_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS
    statement_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS


def database_timeouts() -> DatabaseTimeouts:
    """BILLING_DB_LOCK_TIMEOUT_SECONDS and BILLING_DB_STATEMENT_TIMEOUT_SECONDS, validated."""
    return DatabaseTimeouts(
        lock_seconds=seconds_setting(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_SECONDS),
        statement_seconds=seconds_setting(STATEMENT_TIMEOUT_ENV, DEFAULT_STATEMENT_TIMEOUT_SECONDS),
    )


def seconds_setting(name: str, default: float) -> float:
    """A duration in seconds from the environment variable `name` (unset or blank: `default`).
    A whole or decimal number above 0 and at most a day, to the millisecond."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0.001 <= seconds <= 86400):
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise SettingError(
            f"{name}={shown!r} is not a number of seconds between 0.001 and 86400 "
            f"(unset, it is {format_seconds(default)})"
        )
    return seconds


def format_seconds(seconds: float) -> str:
    """15.0 -> '15', 2.5 -> '2.5' (to the millisecond, as the server is told)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


SMTP_TLS_MODES = ("none", "starttls", "ssl")


@dataclass(frozen=True)
class SmtpSettings:
    """Where notification emails go. An empty host means no email is sent (the deliveries'
    emails wait, pending, until one is set)."""

    host: str = ""
    port: int = 25
    user: str = ""
    password: str = ""
    tls: str = "none"
    sender: str = "billing@localhost"
    timeout_seconds: float = 10.0

    def describe(self) -> str:
        """Host, port and TLS mode: never the user or the password."""
        return f"{self.host}:{self.port} ({self.tls})"


def smtp_settings() -> SmtpSettings:
    """BILLING_SMTP_HOST, _PORT, _USER, _PASSWORD, _TLS (none | starttls | ssl), _FROM and
    _TIMEOUT_SECONDS, read when an email is about to be sent (never at import)."""
    tls = os.environ.get("BILLING_SMTP_TLS", "").strip().lower() or "none"
    if tls not in SMTP_TLS_MODES:
        raise SettingError(
            f"BILLING_SMTP_TLS={tls[:20]!r} is not one of {', '.join(SMTP_TLS_MODES)}"
        )
    raw_port = os.environ.get("BILLING_SMTP_PORT", "").strip()
    default_port = {"none": 25, "starttls": 587, "ssl": 465}[tls]
    if raw_port and not (raw_port.isdigit() and 0 < int(raw_port) < 65536):
        raise SettingError(f"BILLING_SMTP_PORT={raw_port[:20]!r} is not a port number")
    return SmtpSettings(
        host=os.environ.get("BILLING_SMTP_HOST", "").strip(),
        port=int(raw_port) if raw_port else default_port,
        user=os.environ.get("BILLING_SMTP_USER", ""),
        password=os.environ.get("BILLING_SMTP_PASSWORD", ""),
        tls=tls,
        sender=os.environ.get("BILLING_SMTP_FROM", "").strip() or "billing@localhost",
        timeout_seconds=seconds_setting("BILLING_SMTP_TIMEOUT_SECONDS", 10.0),
    )


ALERT_EMAIL_ENV = "BILLING_ALERT_EMAIL"


def alert_email() -> str:
    """Where the alerts of failed runs go by email (staff or on-call, never a client):
    BILLING_ALERT_EMAIL; empty: alerts are recorded and logged only."""
    return os.environ.get(ALERT_EMAIL_ENV, "").strip()


HORIZON_ENV = "BILLING_CATCHUP_HORIZON_NIGHTS"
MAX_TRIES_ENV = "BILLING_STEP_MAX_TRIES"
RETRY_BACKOFF_ENV = "BILLING_STEP_RETRY_BACKOFF_MINUTES"
CATCHUP_INTERVAL_ENV = "BILLING_CATCHUP_INTERVAL_SECONDS"
DEFAULT_CATCHUP_INTERVAL_SECONDS = 30


def catch_up_interval_seconds() -> int:
    """How often the daemon evaluates `launch_due_nights`: BILLING_CATCHUP_INTERVAL_SECONDS,
    whole seconds from 1 to 3600 (default 30). A practice's nights are launched one step per
    evaluation (bills before AutoPay, night N before N+1), so a catch-up of three nights takes
    six intervals plus the runs. Read when the code location loads: the daemon's code server
    must have it in its environment."""
    return whole_number_setting(CATCHUP_INTERVAL_ENV, DEFAULT_CATCHUP_INTERVAL_SECONDS, 1, 3600)


def catch_up_policy() -> CatchUpPolicy:
    """How the `launch_due_nights` sensor catches up: BILLING_CATCHUP_HORIZON_NIGHTS (default
    7: older nights are shown missed, not launched), BILLING_STEP_MAX_TRIES (default 3) and
    BILLING_STEP_RETRY_BACKOFF_MINUTES (default 10, doubled after each failed try)."""
    default = CatchUpPolicy()
    return CatchUpPolicy(
        horizon_nights=whole_number_setting(HORIZON_ENV, default.horizon_nights, 1, 3660),
        max_tries=whole_number_setting(MAX_TRIES_ENV, default.max_tries, 1, 100),
        backoff=timedelta(
            minutes=whole_number_setting(
                RETRY_BACKOFF_ENV, int(default.backoff.total_seconds() // 60), 0, 1440
            )
        ),
    )


def whole_number_setting(name: str, default: int, low: int, high: int) -> int:
    """A whole number from the environment variable `name` in [low, high] (unset: default)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise SettingError(
            f"{name}={shown!r} is not a whole number between {low} and {high} "
            f"(unset, it is {default})"
        )
    return int(raw)
