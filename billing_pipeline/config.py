"""Where things live: the data folder, the billing database URL, the Dagster home.

Read only when asked (never at import time), so tests and the CLI can point a process at
another database by setting the environment first.
"""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_URL_ENV = "BILLING_DATABASE_URL"


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The project's data folder (SQLite file, Dagster home of the demo); `BILLING_DATA_DIR`
    moves it."""
    path = Path(os.environ.get("BILLING_DATA_DIR") or project_root() / "data")
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'billing.db'}"


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
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
