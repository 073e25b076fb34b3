"""billing-pipeline: load a scenario, simulate nights, report, explain a client, run the demo.

Exit codes: 0 ok, 1 the work failed, 2 bad usage or bad input.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # imported where used: the CLI starts without loading them
    from sqlalchemy import Engine

    from billing_pipeline.resources.payments import Payments


class BadInput(click.ClickException):
    exit_code = 2


def _engine() -> Engine:
    """The configured billing database, which must have been set up (`scenario load` or `db
    upgrade`): an empty one is refused, naming it, and nothing is created."""
    from billing_pipeline.config import database_url
    from billing_pipeline.db.engine import set_up_engine

    return set_up_engine(database_url())


def _new_engine() -> Engine:
    """The configured billing database, created and migrated if need be (`scenario load`)."""
    from billing_pipeline.config import database_url
    from billing_pipeline.db.engine import get_engine, upgrade

    engine = get_engine(database_url())
    upgrade(engine)
    return engine


def _payments() -> Payments:
    from billing_pipeline.resources.payments import Payments

    return Payments(
        api_key=os.environ.get("STRIPE_API_KEY") or None,
        api_base=os.environ.get("STRIPE_API_BASE") or None,
    )


def _date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


class WithheldErrors(click.Group):
    """An unexpected error is reported by its type and where it arose, never by its message:
    a database or validation error can quote a row (a name, a birth date). Exit code 1.
    A SafeMessageError (a bad setting, a database that is busy or does not answer) carries
    no PHI: its message is printed, with its exit code."""

    def invoke(self, ctx: click.Context) -> object:
        from billing_pipeline.errors import SafeMessageError

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except SafeMessageError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:  # the message is withheld on purpose
            click.echo(
                f"error: {type(exc).__name__} at {_where(exc)} (the message is withheld: it "
                "may quote a client's data; the ids in the logs say which practice)",
                err=True,
            )
            sys.exit(1)


def _where(exc: BaseException) -> str:
    """The innermost frame in this package, as `module.py:line`."""
    package = Path(__file__).resolve().parent
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if package in path.parents:
            where = f"{path.relative_to(package)}:{frame.lineno}"
    return where


@click.group(cls=WithheldErrors, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Nightly billing automation for therapy practices (a Dagster code location)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Dagster's beta notices are for developers of this package, not for its users.
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")


@main.group()
def db() -> None:
    """The billing database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations (the other commands do this by themselves)."""
    from billing_pipeline.config import database_url, redact_url
    from billing_pipeline.db.engine import current_revision, get_engine, upgrade

    engine = get_engine(database_url())
    changed = upgrade(engine)
    state = "upgraded to" if changed else "already at"
    click.echo(f"{redact_url(database_url())}: {state} revision {current_revision(engine)}")


@main.group()
def scenario() -> None:
    """Scenario files (../shared/contract/README.md)."""


@scenario.command("load")
@click.argument("path", type=click.Path(path_type=Path))
def scenario_load(path: Path) -> None:
    """Validate PATH whole, then write it in one transaction (cards go to Stripe).

    With BILLING_DATABASE_URL set, PATH is added to that database. On the embedded default, a
    self-contained file (every record belongs to its own accounts) goes into a new embedded
    database when the old one already holds accounts; the old one is kept beside it under a
    dated name. A file that refers to loaded records is added to it.
    """
    from billing_pipeline.config import DATABASE_URL_ENV, embedded_database_path
    from billing_pipeline.resources.payments import PaymentsNotConfigured
    from billing_pipeline.scenario.embedded import HELD_SHOWN, load_into_embedded
    from billing_pipeline.scenario.load import load_scenario
    from billing_pipeline.scenario.read import ScenarioError

    try:
        if os.environ.get(DATABASE_URL_ENV):
            summary = load_scenario(path, _new_engine(), _payments())
        else:
            embedded = load_into_embedded(path, embedded_database_path(), _payments())
            summary = embedded.summary
            if embedded.kept_as is not None:
                shown = embedded.held[:HELD_SHOWN]
                more = ", ..." if len(embedded.held) > HELD_SHOWN else ""
                click.echo(
                    f"the embedded database already held accounts ({', '.join(shown)}{more}): "
                    f"kept as {embedded.kept_as}; {path.name} is loaded into a new one (set "
                    f"{DATABASE_URL_ENV} to add files to one database)",
                    err=True,
                )
    except ScenarioError as err:
        raise BadInput(f"{path}: {err}") from None
    except PaymentsNotConfigured as err:
        raise BadInput(str(err)) from None
    click.echo(f"loaded {path.name}: {summary}")


@main.group()
def changes() -> None:
    """Changes over time (settings, cards, services), recorded as history."""


@changes.command("apply")
@click.argument("path", type=click.Path(path_type=Path))
def changes_apply(path: Path) -> None:
    """Validate PATH (`{"changes": [...]}`) whole against the loaded database, then record its
    changes in one transaction (new cards go to Stripe). Nights already run stay as they ran."""
    from billing_pipeline.resources.payments import PaymentsNotConfigured
    from billing_pipeline.scenario.load import apply_changes
    from billing_pipeline.scenario.read import ScenarioError

    try:
        written = apply_changes(path, _engine(), _payments())
    except ScenarioError as err:
        raise BadInput(f"{path}: {err}") from None
    except PaymentsNotConfigured as err:
        raise BadInput(str(err)) from None
    click.echo(f"applied {path.name}: {written} change{'' if written == 1 else 's'} recorded")


@main.command("simulate")
@click.option("--from", "first", required=True, help="First service date (YYYY-MM-DD).")
@click.option("--to", "last", required=True, help="Last service date (YYYY-MM-DD).")
def simulate_cmd(first: str, last: str) -> None:
    """Replay the nightly automation for service dates FROM..TO through Dagster."""
    from billing_pipeline.simulate import dagster_instance, simulate

    d1, d2 = _date(first, "--from"), _date(last, "--to")
    if d2 < d1:
        raise BadInput(f"--to {d2} is before --from {d1}")
    _engine()
    with dagster_instance() as instance:
        result = simulate(d1, d2, instance)
    click.echo(
        f"simulated {d1}..{d2}: {len(result.run_ids)} Dagster runs, "
        f"{result.delivered} documents shared"
    )
    if not result.success:
        for problem in result.problems:
            click.echo(f"failed check {problem}", err=True)
        click.echo(f"failed runs: {', '.join(result.failed)}", err=True)
        sys.exit(1)


@main.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report_cmd(as_json: bool) -> None:
    """Everything the automation produced (../shared/contract/report.schema.json)."""
    from billing_pipeline.db import audit
    from billing_pipeline.db.report import build_report

    engine = _engine()
    with engine.connect() as conn:
        report = build_report(conn)
    # Recorded, and committed, before anything is shown.
    audit.record(engine, "report", audit.client_ids_in(report), "shown")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for key, items in report.items():
        click.echo(f"{key}: {len(items)}")


@main.group()
def finance() -> None:
    """Finance's figures per practice and night (the `finance_daily` table)."""


@finance.command("export")
@click.option("--month", required=True, help="The month of the service dates (YYYY-MM).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (integer cents).")
def finance_export(month: str, as_csv: bool) -> None:
    """Print finance_daily's rows of MONTH: per night and practice, bills made and their
    total, collected by AutoPay, declined, requires action, open balance, documents shared.
    Amounts are integer cents in CSV, dollars otherwise."""
    import calendar
    import csv
    import re

    from billing_pipeline.db import audit
    from billing_pipeline.db.finance import COLUMNS, finance_month
    from billing_pipeline.domain.money import dollars

    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise BadInput(f"--month {month[:20]!r} is not a month (YYYY-MM)")
    year, number = int(month[:4]), int(month[5:])
    first = date(year, number, 1)
    last = date(year, number, calendar.monthrange(year, number)[1])
    engine = _engine()
    with engine.connect() as conn:
        rows = finance_month(conn, first, last).to_dict("records")
    # A read of the practices' figures (no client ids in them): recorded, and committed,
    # before anything is shown, as `report` does.
    audit.record(engine, "finance_export", [], f"shown: {month}, {len(rows)} row(s)")
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([str(row[k])[:10] if k == "night" else row[k] for k in COLUMNS])
        return
    for row in rows:
        click.echo(
            f"{row['night']} {row['account_id']}: {row['bills']} bill(s) for "
            f"{dollars(int(row['bills_cents']))}; AutoPay collected "
            f"{dollars(int(row['collected_cents']))} in {row['charges_succeeded']} charge(s), "
            f"{row['charges_declined']} declined ({dollars(int(row['declined_cents']))}), "
            f"{row['charges_requires_action']} need the client's action; open "
            f"{dollars(int(row['open_balance_cents']))}; {row['documents_shared']} document(s) "
            "shared"
        )
    if not rows:
        click.echo(f"no figures for {month}: materialise finance_daily for its nights first")


@main.command("explain")
@click.argument("client_id")
@click.option("--date", "night", default=None, help="Service date (default: last night).")
def explain_cmd(client_id: str, night: str | None) -> None:
    """Why the automation does what it does for CLIENT_ID on a night, in plain words."""
    from billing_pipeline.db import audit
    from billing_pipeline.db.access import practice_of_client
    from billing_pipeline.services.explain import UnknownClient, explain

    engine = _engine()
    on = _date(night, "--date") if night else None
    with engine.connect() as conn:
        account_id = practice_of_client(conn, client_id)
        try:
            text = explain(conn, client_id, on)
        except UnknownClient as err:
            refused: UnknownClient | None = err
        else:
            refused = None
    # Recorded, and committed, before anything is shown; a refused attempt too.
    outcome = "refused: unknown client" if refused else "shown"
    audit.record(engine, "explain", [client_id[:64]], outcome, account_id=account_id)
    if refused is not None:
        raise BadInput(str(refused))
    click.echo(text)


@main.command("preview")
@click.argument("account_id")
@click.option("--night", default=None, help="Service date (default: the coming night).")
@click.option("--json", "as_json", is_flag=True, help="Print the preview as JSON.")
def preview_cmd(account_id: str, night: str | None, as_json: bool) -> None:
    """What ACCOUNT_ID's night would do (bills, superbills, statements, AutoPay with each
    gate, documents to share and when, against the night before), computed by the night's own
    code in a transaction that is rolled back: nothing is written, nothing is charged."""
    from datetime import UTC, datetime

    from billing_pipeline.db import audit
    from billing_pipeline.services.preview import UnknownAccount, build_preview, render_preview

    day = _date(night, "--night") if night else None
    engine = _engine()
    try:
        preview = build_preview(engine, account_id, day, datetime.now(UTC))
    except UnknownAccount as err:
        raise BadInput(str(err)) from None
    # A read of the practice's clients' figures: recorded, and committed, before it is shown
    # (the audit row is the trail of the read; the preview writes no billing data).
    audit.record(
        engine, "preview", audit.client_ids_in(preview), "shown", account_id=account_id[:64]
    )
    click.echo(json.dumps(preview, indent=2) if as_json else render_preview(preview))


@main.group()
def summary() -> None:
    """The evening summary: tonight's preview emailed to a practice's staff."""


@summary.command("staff")
@click.argument("account_id")
@click.option("--email", required=True, help="The practice staff's address (not a client's).")
@click.option("--hour", type=click.IntRange(0, 23), default=18, help="Local hour (default 18).")
def summary_staff(account_id: str, email: str, hour: int) -> None:
    """Send ACCOUNT_ID's evening summary to EMAIL from HOUR, local time."""
    from datetime import UTC, datetime

    from billing_pipeline.db.store import list_accounts
    from billing_pipeline.db.summary import set_staff

    if "@" not in email or len(email) > 320:
        raise BadInput("--email: not an email address")
    with _engine().begin() as conn:
        if not list_accounts(conn, [account_id]):
            raise BadInput(f"account_id: no account {account_id!r} in the billing database")
        set_staff(conn, account_id, email.strip(), hour, datetime.now(UTC))
    click.echo(f"account {account_id}: evening summary at {hour:02d}:00 local time")


@summary.command("send-due")
def summary_send_due() -> None:
    """Send the evening summaries whose local hour has come (once per practice and night);
    run it every few minutes."""
    from datetime import UTC, datetime

    from billing_pipeline.config import database_url
    from billing_pipeline.resources.database import BillingDatabase
    from billing_pipeline.resources.notifier import Notifier
    from billing_pipeline.services.summary import send_due_summaries

    fingerprint = BillingDatabase(url=database_url()).fingerprint()
    done = send_due_summaries(_engine(), Notifier(), datetime.now(UTC), fingerprint)
    if done.smtp_not_configured:
        raise BadInput("no SMTP host is set (BILLING_SMTP_HOST): no summary sent")
    click.echo(f"summaries: {done.sent} sent, {done.failed} failed (retried on the next call)")
    if done.failed:
        sys.exit(1)


@main.command("trail")
@click.argument("bill_id")
@click.option("--json", "as_json", is_flag=True, help="Print the trail as JSON.")
def trail_cmd(bill_id: str, as_json: bool) -> None:
    """BILL_ID's whole story in order (bill-N as in report --json): sessions and services,
    settings and where each came from, Dagster runs, AutoPay, payment, deliveries. Ids and
    amounts only."""
    from billing_pipeline.config import database_url
    from billing_pipeline.db import audit
    from billing_pipeline.resources.database import BillingDatabase
    from billing_pipeline.services.trail import UnknownBill, build_trail, render_trail

    engine = _engine()
    with engine.connect() as conn:
        try:
            trail = build_trail(conn, bill_id, BillingDatabase(url=database_url()).fingerprint())
        except UnknownBill as err:
            raise BadInput(str(err)) from None
    # Recorded, and committed, before anything is shown.
    audit.record(engine, "trail", audit.client_ids_in(trail), "shown")
    click.echo(json.dumps(trail, indent=2) if as_json else render_trail(trail))


@main.group()
def autopay() -> None:
    """AutoPay nights the anomaly guard held, and its thresholds."""


def _who(by: str | None) -> str:
    import getpass

    who = by or os.environ.get("BILLING_STAFF") or getpass.getuser()
    return who.strip()[:120] or "unknown"


@autopay.command("holds")
@click.option("--account", "account_id", default=None, help="Only this practice's.")
def autopay_holds(account_id: str | None) -> None:
    """The nights the guard held, why, and who released them and when."""
    from billing_pipeline.db.guard import holds
    from billing_pipeline.services.guard import hold_words

    with _engine().connect() as conn:
        found = holds(conn, [account_id] if account_id else None)
    for hold in found:
        click.echo(hold_words(hold))
    if not found:
        click.echo("no night held")


@autopay.command("release")
@click.argument("account_id")
@click.argument("night")
@click.option("--by", default=None, help="Who releases it (default: $BILLING_STAFF, the user).")
def autopay_release(account_id: str, night: str, by: str | None) -> None:
    """Release ACCOUNT_ID's NIGHT held by the anomaly guard: the night's next AutoPay run
    charges it (once). Who and when are recorded."""
    from datetime import UTC, datetime

    from billing_pipeline.db.guard import hold_of, release_hold

    day = _date(night, "NIGHT")
    who = _who(by)
    with _engine().begin() as conn:
        hold = hold_of(conn, account_id, day)
        if hold is None:
            raise BadInput(f"no AutoPay hold for account {account_id!r} on the night of {day}")
        if hold.released:
            click.echo(f"already released by {hold.released_by} at {hold.released_at}")
            return
        release_hold(conn, account_id, day, who, datetime.now(UTC))
    click.echo(
        f"released AutoPay for account {account_id} night {day} (by {who}); the night's next "
        "AutoPay run charges it"
    )


@autopay.command("guard")
@click.argument("account_id")
@click.option("--multiple-percent", type=click.IntRange(101, 10_000), default=None)
@click.option("--min-nights", type=click.IntRange(1, 365), default=None)
@click.option("--window-nights", type=click.IntRange(1, 365), default=None)
@click.option("--min-extra-charges", type=click.IntRange(0, 100_000), default=None)
@click.option("--min-extra-cents", type=click.IntRange(0, 10**9), default=None)
@click.option("--client-cap-cents", type=click.IntRange(1, 10**9), default=None)
@click.option("--by", default=None, help="Who changes them (default: $BILLING_STAFF, the user).")
def autopay_guard(account_id: str, by: str | None, **given: int | None) -> None:
    """Show ACCOUNT_ID's anomaly-guard thresholds, or change those given."""
    from dataclasses import asdict, replace
    from datetime import UTC, datetime

    from billing_pipeline.db.guard import guard_settings, set_guard_settings
    from billing_pipeline.db.store import list_accounts

    with _engine().begin() as conn:
        if not list_accounts(conn, [account_id]):
            raise BadInput(f"account_id: no account {account_id!r} in the billing database")
        settings = guard_settings(conn, account_id)
        changes = {k: v for k, v in given.items() if v is not None}
        if changes:
            settings = replace(settings, **changes)
            set_guard_settings(conn, account_id, settings, _who(by), datetime.now(UTC))
    for key, value in asdict(settings).items():
        click.echo(f"{key}: {value}")


@main.group()
def documents() -> None:
    """PDFs of the bills, superbills and statements the automation made."""


@documents.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--client", "client_id", default=None, help="Only this client's documents.")
@click.option("--month", default=None, help="Only this month's (YYYY-MM).")
def documents_export(directory: Path, client_id: str | None, month: str | None) -> None:
    """Write the PDFs into DIRECTORY, named by practice, kind, client id and date: each as it
    was shared (a bill paid by then says PAID), else as it stands now."""
    import re

    from billing_pipeline.resources.renderer import DocumentRenderer
    from billing_pipeline.services.documents import export_documents

    if month is not None and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise BadInput(f"--month {month[:20]!r} is not a month (YYYY-MM)")
    written = export_documents(_engine(), DocumentRenderer(), directory, client_id, month)
    click.echo(f"wrote {len(written)} PDF(s) to {directory}")


@main.group("audit")
def audit_group() -> None:
    """The audit log of reads of client data (append-only, hash-chained)."""


@audit_group.command("verify")
def audit_verify() -> None:
    """Check the hash chain from the first row; exit 1 naming the first broken link."""
    from billing_pipeline.db import audit

    with _engine().connect() as conn:
        result = audit.verify(conn)
    if not result.ok:
        click.echo(f"audit log BROKEN: {result.reason}", err=True)
        sys.exit(1)
    click.echo(f"audit log intact: {result.rows} row(s), every link holds")


@audit_group.command("list")
@click.option("--client", "client_id", default=None, help="Only rows naming this client id.")
@click.option("--since", default=None, help="Only rows at or after this instant (ISO 8601).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list.")
def audit_list(client_id: str | None, since: str | None, as_json: bool) -> None:
    """The audit rows, oldest first (reading them is not a read of client data)."""
    from datetime import UTC, datetime

    from billing_pipeline.db import audit

    after = None
    if since is not None:
        try:
            after = datetime.fromisoformat(since)
        except ValueError:
            raise BadInput(f"--since {since[:40]!r} is not an instant (ISO 8601)") from None
        if after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
    with _engine().connect() as conn:
        rows = audit.entries(conn, client_id, after)
    if as_json:
        click.echo(json.dumps([r.as_json() for r in rows], indent=2))
        return
    for r in rows:
        ids = ",".join(r.client_ids)
        click.echo(f"{r.id} {r.at.isoformat()} {r.actor} {r.action} [{ids}] {r.outcome}")


@main.group("ui", invoke_without_command=True)
@click.option(
    "--from-env",
    is_flag=True,
    help="The instance of the environment (DAGSTER_HOME, BILLING_DATABASE_URL, STRIPE_API_KEY) "
    "instead of the demo's.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True, type=int)
@click.pass_context
def ui_group(ctx: click.Context, from_env: bool, host: str, port: int) -> None:
    """Start the Dagster UI and daemon (`billing-pipeline ui`): on the demo's instance and its
    local Stripe by default. Subcommands: the UI behind a login (deploy/README.md)."""
    if ctx.invoked_subcommand is not None:
        return
    from billing_pipeline.ui_stack import UiSetupError, demo_instance, env_instance, serve

    try:
        ui = env_instance(os.environ) if from_env else demo_instance()
        sys.exit(serve(ui, host, port, click.echo))
    except UiSetupError as err:
        raise BadInput(str(err)) from None


@ui_group.command("user-add")
@click.argument("name")
@click.option("--role", type=click.Choice(["analyst", "finance"]), required=True)
@click.option("--users-file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.password_option(help="The password (asked for when not given).")
def ui_user_add(name: str, role: str, users_file: Path, password: str) -> None:
    """Add (or replace) NAME in the users file, its password hashed (PBKDF2-SHA256)."""
    from billing_pipeline.ui_proxy import add_user

    try:
        add_user(users_file, name, password, role)
    except ValueError as err:
        raise BadInput(str(err)) from None
    click.echo(f"{name} ({role}) in {users_file}")


@ui_group.command("proxy")
@click.option("--users-file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--analyst-upstream", default="http://127.0.0.1:3001", show_default=True)
@click.option("--finance-upstream", default="http://127.0.0.1:3002", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True, type=int)
@click.option("--secure-cookies", is_flag=True, help="Mark the session cookie Secure (TLS).")
def ui_proxy_cmd(
    users_file: Path,
    analyst_upstream: str,
    finance_upstream: str,
    host: str,
    port: int,
    secure_cookies: bool,
) -> None:
    """Serve the login and proxy each signed-in user to the webserver of their role
    (analyst: the writable one; finance: the --read-only one). BILLING_UI_SESSION_SECRET
    signs the sessions (at least 32 characters)."""
    from billing_pipeline.ui_proxy import ProxyConfig, read_users, serve

    secret = os.environ.get("BILLING_UI_SESSION_SECRET", "")
    if len(secret) < 32:
        raise BadInput("BILLING_UI_SESSION_SECRET: set it to at least 32 random characters")
    try:
        read_users(users_file)
    except (OSError, ValueError) as err:
        raise BadInput(f"--users-file: {err}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = ProxyConfig(
        users_file=users_file,
        secret=secret.encode(),
        upstreams={"analyst": analyst_upstream, "finance": finance_upstream},
        secure_cookies=secure_cookies,
    )
    serve(config, host, port)


@main.command("demo")
@click.option("--keep", is_flag=True, help="Keep the previous demo data instead of starting over.")
def demo_cmd(keep: bool) -> None:
    """Create a demo practice and replay last month night by night (SQLite, localstripe)."""
    from billing_pipeline.demo import run_demo

    sys.exit(run_demo(fresh=not keep))


if __name__ == "__main__":  # pragma: no cover
    main()
