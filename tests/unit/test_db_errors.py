"""Database failures said without PHI: the tables a cancelled statement named, the timeout
settings and their validation, and a database that cannot be reached (host, port and name,
never the password; a SQLite file by its path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from billing_pipeline.config import (
    LOCK_TIMEOUT_ENV,
    STATEMENT_TIMEOUT_ENV,
    DatabaseTimeouts,
    database_timeouts,
)
from billing_pipeline.db.engine import make_engine, postgres_connect_args
from billing_pipeline.db.errors import (
    busy_for_lock,
    busy_too_long,
    describe_url,
    tables_in,
    unreachable,
)
from billing_pipeline.errors import SafeMessageError, SettingError
from billing_pipeline.resources.database import DatabaseBusy, DatabaseUnreachable

ROOT = Path(__file__).resolve().parents[2]

# --- Which tables a statement names ----------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("LOCK TABLE bills IN ACCESS EXCLUSIVE MODE", ("bills",)),
        ("LOCK bills, sessions IN SHARE MODE", ("bills", "sessions")),
        ("LOCK TABLE ONLY public.bills", ("public.bills",)),
        (
            "INSERT INTO bills (account_id, night) VALUES (%(account_id)s, %(night)s) "
            "RETURNING bills.id",
            ("bills",),
        ),
        (
            "SELECT bills.id FROM bills LEFT OUTER JOIN bill_lines ON bill_lines.bill_id = "
            "bills.id WHERE bills.night IN (%(night_1_1)s, %(night_1_2)s)",
            ("bills", "bill_lines"),
        ),
        (
            "UPDATE bills SET status=%(status)s WHERE bills.id IN "
            "(SELECT autopay_attempt_bills.bill_id FROM autopay_attempt_bills)",
            ("bills", "autopay_attempt_bills"),
        ),
        ("DELETE FROM eligible_sessions WHERE eligible_sessions.night = ?", ("eligible_sessions",)),
        # comma lists, aliases, quoted and qualified names, subqueries in FROM
        (
            'SELECT * FROM bills AS b, "Night Steps" ns, public.sessions WHERE b.id = ns.id',
            ("bills", "Night Steps", "public.sessions"),
        ),
        (
            "SELECT * FROM (SELECT id FROM bills) AS anon_1, sessions",
            ("bills", "sessions"),
        ),
        ("SELECT coalesce((SELECT max(id) FROM bills), 0) AS n", ("bills",)),
        # FROM inside a function's arguments, IS DISTINCT FROM, FOR UPDATE, ON CONFLICT DO
        # UPDATE, a WITH query's name, a function in FROM: none of them is a table
        (
            "SELECT EXTRACT(year FROM bills.created_at), SUBSTRING(x FROM 2) FROM bills "
            "WHERE a IS DISTINCT FROM b FOR UPDATE OF bills SKIP LOCKED",
            ("bills",),
        ),
        (
            "INSERT INTO night_steps (step) VALUES ($1) ON CONFLICT (step) DO UPDATE SET step = 1",
            ("night_steps",),
        ),
        (
            "WITH open AS (SELECT * FROM bills), paid AS (SELECT * FROM payments) "
            "SELECT * FROM open JOIN paid ON true, generate_series(1, 3) AS g",
            ("bills", "payments"),
        ),
        ("SELECT 1", ()),
        ("", ()),
        (None, ()),
    ],
)
def test_the_tables_a_statement_names(sql: str | None, tables: tuple[str, ...]) -> None:
    assert tables_in(sql) == tables


def test_literals_comments_and_parameters_are_never_read_as_tables() -> None:
    sql = (
        "SELECT * FROM bills -- from ada_lovelace\n"
        "/* join grace_hopper */ WHERE note = 'paid from ada_lovelace, into hopper' "
        "AND x = E'from \\' lin' AND y = $q$ from zed $q$ AND z = :from_name"
    )
    assert tables_in(sql) == ("bills",)


# --- The messages -----------------------------------------------------------------------------


def test_a_lock_timeout_names_the_tables_the_timeout_and_its_setting() -> None:
    err = busy_for_lock(("bills",), 15.0)
    assert isinstance(err, SafeMessageError) and isinstance(err, DatabaseBusy)
    assert str(err) == (
        "a statement on table bills waited more than 15 s for a lock and was cancelled "
        "(BILLING_DB_LOCK_TIMEOUT_SECONDS)"
    )
    assert "tables bills, bill_sessions" in str(busy_for_lock(("bills", "bill_sessions"), 2.5))
    assert "2.5 s" in str(busy_for_lock(("bills",), 2.5))


def test_a_statement_timeout_names_the_tables_the_timeout_and_its_setting() -> None:
    err = busy_too_long(("bills", "bill_lines"), 300.0)
    assert str(err) == (
        "a statement on tables bills, bill_lines ran longer than 300 s and was cancelled "
        "(BILLING_DB_STATEMENT_TIMEOUT_SECONDS)"
    )
    assert str(busy_too_long((), 300.0)).startswith("a statement ran longer than 300 s")


def test_a_url_is_described_by_host_port_and_database_never_the_password() -> None:
    url = "postgresql+psycopg2://billing:secretpw@db.internal/billing?password=secretpw"
    assert describe_url(url) == "postgresql://billing@db.internal:5432/billing"
    assert describe_url("postgresql://u:p@127.0.0.1:5499/b") == "postgresql://u@127.0.0.1:5499/b"
    assert describe_url("sqlite:////srv/billing.db") == "file /srv/billing.db"


def test_an_unreachable_database_says_which_and_why() -> None:
    driver_error = Exception(
        'connection to server at "127.0.0.1", port 5499 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?\n"
    )
    err = unreachable("postgresql://u:secretpw@127.0.0.1:5499/billing", driver_error)
    assert isinstance(err, DatabaseUnreachable)
    assert str(err) == (
        "billing database postgresql://u@127.0.0.1:5499/billing does not answer: connection refused"
    )
    missing = Exception(
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  database "nodb" '
        "does not exist\n"
    )
    assert str(unreachable("postgresql://u@127.0.0.1/nodb", missing)) == (
        "billing database postgresql://u@127.0.0.1:5432/nodb refused the connection: database "
        '"nodb" does not exist'
    )
    quoted = Exception("authentication failed for secretpw")
    assert "secretpw" not in str(unreachable("postgresql://u:secretpw@h/b", quoted))


# --- The settings -----------------------------------------------------------------------------


def test_the_timeouts_default_to_15_and_300_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOCK_TIMEOUT_ENV, raising=False)
    monkeypatch.setenv(STATEMENT_TIMEOUT_ENV, "  ")
    assert database_timeouts() == DatabaseTimeouts(lock_seconds=15, statement_seconds=300)


def test_the_timeouts_are_read_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "2")
    monkeypatch.setenv(STATEMENT_TIMEOUT_ENV, "0.5")
    assert database_timeouts() == DatabaseTimeouts(lock_seconds=2, statement_seconds=0.5)


@pytest.mark.parametrize("env", [LOCK_TIMEOUT_ENV, STATEMENT_TIMEOUT_ENV])
@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "15s", "1e9", "0.0001"])
def test_a_bad_timeout_names_the_variable_and_the_value(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingError) as caught:
        database_timeouts()
    assert str(caught.value).startswith(f"{env}={value!r} is not a number of seconds")
    assert caught.value.exit_code == 2


def test_the_timeouts_become_server_settings_of_every_postgres_connection() -> None:
    args = postgres_connect_args(
        "postgresql+psycopg2://u@h/b", DatabaseTimeouts(lock_seconds=2, statement_seconds=0.25)
    )
    assert args == {
        "options": "-c lock_timeout=2000 -c statement_timeout=250 -c jit=off",
        "connect_timeout": 10,
    }
    own = postgres_connect_args(
        "postgresql+psycopg2://u@h/b?options=-csearch_path%3Dbilling&connect_timeout=3",
        DatabaseTimeouts(),
    )
    assert own == {
        "options": "-csearch_path=billing -c lock_timeout=15000 -c statement_timeout=300000 "
        "-c jit=off"
    }


def test_a_bad_timeout_stops_a_postgres_engine_but_not_a_sqlite_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "soon")
    with pytest.raises(SettingError, match="BILLING_DB_LOCK_TIMEOUT_SECONDS='soon'"):
        make_engine("postgresql://postgres@127.0.0.1:1/nodb")
    make_engine(f"sqlite:///{tmp_path / 'billing.db'}").dispose()


# --- Through the CLI --------------------------------------------------------------------------


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return subprocess.run(
        [sys.executable, "-m", "billing_pipeline.cli", *args],
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_cli_says_which_database_does_not_answer_never_its_password(
    tmp_path: Path,
) -> None:
    done = _cli(
        {
            "BILLING_DATABASE_URL": "postgresql://postgres:secretpw@127.0.0.1:1/nodb",
            "BILLING_DATA_DIR": str(tmp_path),
        },
        "report",
        "--json",
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "error: billing database postgresql://postgres@127.0.0.1:1/nodb does not answer: "
        "connection refused"
    ], done.stderr
    assert "secretpw" not in done.stderr + done.stdout


@pytest.mark.slow
def test_the_cli_says_which_setting_is_bad(tmp_path: Path) -> None:
    done = _cli(
        {
            "BILLING_DATABASE_URL": "postgresql://postgres:secretpw@127.0.0.1:1/nodb",
            "BILLING_DATA_DIR": str(tmp_path),
            STATEMENT_TIMEOUT_ENV: "five minutes",
        },
        "report",
        "--json",
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: BILLING_DB_STATEMENT_TIMEOUT_SECONDS='five minutes' is not a number of seconds "
        "between 0.001 and 86400 (unset, it is 300)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_the_cli_says_which_sqlite_file_cannot_be_opened(tmp_path: Path, where: str) -> None:
    if where == "a folder":
        path = tmp_path / "billing.db"
        path.mkdir()
    else:
        (tmp_path / "plain").write_text("not a folder")
        path = tmp_path / "plain" / "billing.db"
    done = _cli(
        {"BILLING_DATABASE_URL": f"sqlite:///{path}", "BILLING_DATA_DIR": str(tmp_path)},
        "report",
        "--json",
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().startswith(
        f"error: billing database file {path} cannot be opened: "
    ), done.stderr
