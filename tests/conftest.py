"""Shared fixtures: a fresh billing database on SQLite and on PostgreSQL, localstripe.

PostgreSQL tests create and drop a database of their own on 127.0.0.1:5432. They never skip:
if the server does not answer, they fail (CI starts it first; see .ci/run).
"""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Connection, create_engine, text

from billing_pipeline.db.engine import dispose_engines, get_engine, make_engine, upgrade
from billing_pipeline.localstripe_server import LocalStripe
from tests import gc_tuned  # noqa: F401  (imported for its effect: see the module)

if TYPE_CHECKING:
    from tests.simulated import Simulations

PG_ADMIN_URL = os.environ.get(
    "BILLING_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def _contract_dir() -> Path:
    """The shared contract (scenarios, schemas, check_report.py): BILLING_CONTRACT_DIR, else
    `shared/contract` beside the checkout or above it."""
    if os.environ.get("BILLING_CONTRACT_DIR"):
        return Path(os.environ["BILLING_CONTRACT_DIR"])
    root = Path(__file__).resolve().parents[1]
    for folder in root.parents:
        if (folder / "shared" / "contract" / "check_report.py").is_file():
            return folder / "shared" / "contract"
    return root.parent / "shared" / "contract"


CONTRACT = _contract_dir()
SCENARIOS = Path(__file__).with_name("scenarios")


def _admin_engine():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


_template: list[str] = []  # this worker's migrated template database, made on first use


def _migrated_template() -> str:
    """A database migrated to head once per test process; each test's database is cloned
    from it (CREATE DATABASE ... TEMPLATE: a file copy, ~10x faster than running Alembic)."""
    if not _template:
        name = f"bp_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = _admin_engine()
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # a PostgreSQL test must fail, never skip
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not answering: {exc}", pytrace=False)
        finally:
            admin.dispose()
        engine = make_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        upgrade(engine)
        engine.dispose()  # a template must have no connections when it is copied
        _template.append(name)
        atexit.register(_drop_database, name)
    return _template[0]


SERVICE_ROLE = "billing_pipeline_service"  # made by migration 0007 (cluster-wide)


def as_role(url: str, role: str) -> str:
    """`url` logging in as `role` (the test server trusts loopback logins)."""
    from sqlalchemy import make_url

    return make_url(url).set(username=role).render_as_string(hide_password=False)


def create_pg_database(migrated: bool = False) -> str:
    """A new database of our own: empty (its URL logs in as the superuser, which migrates it),
    or (`migrated`) a copy of the migrated template, whose URL logs in as the pipeline's
    service role: no owner, no superuser, under row-level security, as in production."""
    name = f"bp_test_{uuid.uuid4().hex[:12]}"
    template = f' TEMPLATE "{_migrated_template()}"' if migrated else ""
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{template}'))
            # A test database need not survive a crash of the server (only of its clients):
            # commits return without waiting for the disk. Visibility, locks and every other
            # semantic are the same.
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    except Exception as exc:  # a PostgreSQL test must fail, never skip
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not answering: {exc}", pytrace=False)
    finally:
        admin.dispose()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    return as_role(url, SERVICE_ROLE) if migrated else url


# What a test may not change in the database it is lent: its tables, columns, row-level
# security and policies, grants and the database's own settings. A reused database whose
# schema differs from when it was made is dropped and made anew.
SCHEMA_FINGERPRINT = """
SELECT md5(concat_ws('|',
  (SELECT string_agg(table_name || '.' || column_name || ':' || data_type || ':' || is_nullable,
                     ',' ORDER BY table_name, column_name)
     FROM information_schema.columns WHERE table_schema = 'public'),
  (SELECT string_agg(relname || ':' || relrowsecurity || relforcerowsecurity
                     || coalesce(array_to_string(relacl, ';'), ''), ',' ORDER BY relname)
     FROM pg_class WHERE relnamespace = 'public'::regnamespace),
  (SELECT string_agg(tablename || '.' || policyname || ':' || qual, ',' ORDER BY 1)
     FROM pg_policies WHERE schemaname = 'public'),
  (SELECT string_agg(array_to_string(setconfig, ';'), ',') FROM pg_db_role_setting
     WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())),
  (SELECT version_num FROM alembic_version)))
"""

_scratch: dict[str, str] = {}  # this worker's reusable test database: URL, fingerprint, query


def lent_pg_database() -> str:
    """A migrated, empty database logging in as the service role, as `create_pg_database(
    migrated=True)` gives, but lent: the same database for each test of this process, emptied
    (TRUNCATE ... RESTART IDENTITY, so ids start at 1 again) before each, instead of made and
    dropped (~1 s of the server's time per test: CREATE and DROP DATABASE each force the
    database's files to disk). Connections a test left open are ended first. A test that
    changed the schema (SCHEMA_FINGERPRINT) gets its database made anew for the next one."""
    if _scratch:
        engine = create_engine(_as_admin(_scratch["url"]), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                if conn.execute(text(SCHEMA_FINGERPRINT)).scalar_one() == _scratch["schema"]:
                    touched = list(conn.execute(text(_scratch["touched"])).scalars())
                    if touched:
                        conn.execute(
                            text(f"TRUNCATE {', '.join(touched)} RESTART IDENTITY CASCADE")
                        )
                    return _scratch["url"]
        finally:
            engine.dispose()
        _drop_database(_scratch["url"].rsplit("/", 1)[1])
        _scratch.clear()
    url = create_pg_database(migrated=True)
    engine = create_engine(_as_admin(url))
    try:
        with engine.connect() as conn:
            _scratch.update(
                url=url,
                schema=conn.execute(text(SCHEMA_FINGERPRINT)).scalar_one(),
                touched=_touched_tables(conn),
            )
    finally:
        engine.dispose()
    return url


# The lent database's tables that a test may have touched: those with a row, and those whose
# id sequence was drawn from (an insert rolled back still moves it on). Truncating only these
# leaves the database as TRUNCATE of every table would (ids start at 1 again) at a fraction of
# the server's time: TRUNCATE makes new files for each table and index it empties.
_SEQUENCE_OWNERS = """
SELECT DISTINCT quote_ident(t.relname) FROM pg_sequences s
JOIN pg_class q ON q.relname = s.sequencename AND q.relnamespace = 'public'::regnamespace
JOIN pg_depend d ON d.objid = q.oid AND d.deptype IN ('a', 'i')
JOIN pg_class t ON t.oid = d.refobjid
WHERE s.schemaname = 'public' AND s.last_value IS NOT NULL
"""


def _touched_tables(conn: Connection) -> str:
    """A query for the names of the lent database's touched tables (see _SEQUENCE_OWNERS)."""
    tables = conn.execute(
        text(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version' ORDER BY 1"
        )
    ).scalars()
    with_rows = " UNION ".join(f"SELECT '{t}' WHERE EXISTS (SELECT FROM {t})" for t in tables)
    return f"{with_rows} UNION {_SEQUENCE_OWNERS}"


def _as_admin(url: str) -> str:
    """The same database, logging in as the test server's administrator."""
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]


@atexit.register
def _drop_lent() -> None:
    """At the end of the process: the lent database goes."""
    if _scratch:
        _drop_database(_scratch["url"].rsplit("/", 1)[1])
        _scratch.clear()


def _drop_database(name: str) -> None:
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def drop_pg_database(url: str) -> None:
    dispose_engines()
    _drop_database(url.rsplit("/", 1)[1])


_sqlite_template: list[Path] = []  # this process's migrated SQLite file, made on first use


def _copy_migrated_sqlite(target: Path) -> None:
    """A new SQLite billing database at `target`, migrated to head: a copy (SQLite's backup
    API) of a file this process migrated once, instead of Alembic's eleven migrations per test
    (~0.35 s of CPU each time)."""
    import shutil
    import sqlite3
    import tempfile

    if not _sqlite_template:
        folder = Path(tempfile.mkdtemp(prefix="bp-sqlite-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = folder / "billing.db"
        engine = get_engine(f"sqlite:///{template}")
        upgrade(engine)
        engine.dispose()
        _sqlite_template.append(template)
    source = sqlite3.connect(_sqlite_template[0])
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A billing database URL on each backend, migrated, with no data: a new SQLite file, or
    this process's lent PostgreSQL database, emptied (lent_pg_database). Migrations from
    nothing are tested in tests/integration/test_migrations.py; Dagster's resources refuse a
    database behind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'billing.db'}"
        _copy_migrated_sqlite(tmp_path / "billing.db")
        yield url
        dispose_engines()
        return
    url = lent_pg_database()
    yield url
    dispose_engines()


@pytest.fixture
def engine(database_url: str):
    """An engine on a migrated, empty billing database."""
    eng = get_engine(database_url)
    upgrade(eng)
    return eng


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    with LocalStripe() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each billing database backend, for tests that read a shared simulation."""
    return str(request.param)


@pytest.fixture(scope="session")
def simulations(
    tmp_path_factory: pytest.TempPathFactory, localstripe: LocalStripe
) -> Iterator[Simulations]:
    """Scenarios simulated once per test session and backend (tests/simulated.py)."""
    from tests.simulated import Simulations

    yield Simulations(shared_simulations_folder(tmp_path_factory.getbasetemp()), localstripe.url)


def shared_simulations_folder(basetemp: Path) -> Path:
    """A folder all processes of the session share: the xdist workers' basetemp folders are
    `popen-gwN` inside the session's one."""
    root = basetemp.parent if basetemp.name.startswith("popen-gw") else basetemp
    return root / "shared-simulations"


@pytest.fixture
def cli_env(database_url: str, localstripe: LocalStripe, tmp_path: Path) -> dict[str, str]:
    """Environment for running the CLI against a fresh database and instance."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    return {
        "BILLING_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "sk_test_billing_pipeline",
        "STRIPE_API_BASE": localstripe.url,
        "DAGSTER_HOME": str(home),
        "BILLING_DATA_DIR": str(tmp_path / "data"),
    }


# The longest tests, roughly longest first: they start first, so that the run does not end
# waiting on one of them while the other workers sit idle (xdist's worksteal hands each worker
# a contiguous share of the collection in order, and a worker that runs out takes the end of
# another's share).
LONGEST_FIRST = (
    "tests/integration/test_backfill.py",
    "tests/integration/test_ui_end_to_end.py",
    "tests/integration/test_catch_up.py",
    "tests/integration/test_autopay_recovery.py",
    "tests/integration/test_autopay_concurrency.py",
    "tests/integration/test_autopay_crashes.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first, then the other slow tests, then the rest (each group in its
    collection order: every worker must collect the same order)."""

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        if path in LONGEST_FIRST:
            return LONGEST_FIRST.index(path)
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)  # stable: the collection order within a rank


def pytest_configure(config: pytest.Config) -> None:
    if not (CONTRACT / "check_report.py").is_file():
        raise pytest.UsageError(
            f"the shared contract is not at {CONTRACT}: set BILLING_CONTRACT_DIR to the folder "
            "that holds check_report.py and scenarios/"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the shared simulations' databases once (in the controlling process: the workers'
    sessions end before it). Then: a skipped test is a failure, nothing here may quietly not
    run (in CI above all). Set BILLING_ALLOW_SKIPS=1 for a local run that deliberately
    deselects by skipping."""
    if not hasattr(session.config, "workerinput"):
        from tests.simulated import drop_shared_databases

        factory = session.config._tmp_path_factory  # type: ignore[attr-defined]  # pytest's own
        drop_shared_databases(shared_simulations_folder(factory.getbasetemp()))
    if os.environ.get("BILLING_ALLOW_SKIPS"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        reporter.write_line(f"{skipped} test(s) skipped; failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
