"""`billing-pipeline demo`: a realistic practice, last month replayed night by night.

Runs on the embedded default: a SQLite billing database and a Dagster home in data/demo/, and a
localstripe on loopback that the demo starts and stops itself. The practice is written as a
scenario file and loaded through the same loader as any scenario; each night is replayed with
`simulate` (the production assets, checks, jobs and sensor, on the logical clock).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine, case, func, select

from billing_pipeline.config import data_dir
from billing_pipeline.domain.money import dollars

PRACTICES = [
    {
        "id": "acct-cedar",
        "name": "Cedar Grove Counseling",
        "timezone": "America/Los_Angeles",
        "bill_creation": "daily",
        "superbill_day_of_month": 1,
        "provider": {"name": "Dana Whitfield", "credentials": "LMFT", "npi": "1093817465"},
    },
    {
        "id": "acct-harbor",
        "name": "Harbor Family Therapy",
        "timezone": "America/New_York",
        "bill_creation": "monthly",
        "superbill_day_of_month": 1,
        "provider": {"name": "Luis Ortega", "credentials": "PsyD", "npi": "1184726350"},
    },
]

# (id, practice, name, weekday, card or None, settings, billing contact)
CLIENTS: list[tuple[str, str, str, int, str | None, dict[str, Any], str | None]] = [
    (
        "cl-avery",
        "acct-cedar",
        "Avery Stone",
        0,
        "4242424242424242",
        {"autopay_enabled": True, "superbills_enabled": True},
        None,
    ),
    (
        "cl-blake",
        "acct-cedar",
        "Blake Moreno",
        1,
        "4000000000000341",
        {"autopay_enabled": True},
        None,
    ),
    (
        "cl-casey",
        "acct-cedar",
        "Casey Nguyen",
        2,
        "4000002500003155",
        {"autopay_enabled": True},
        None,
    ),
    ("cl-devon", "acct-cedar", "Devon Park", 3, None, {"superbills_enabled": True}, None),
    (
        "cl-emery",
        "acct-cedar",
        "Emery Brooks",
        4,
        "4242424242424242",
        {"autopay_enabled": True, "bill_delay_minutes": 15},
        None,
    ),
    ("cl-finley", "acct-cedar", "Finley Shah", 1, None, {"auto_bill": False}, None),
    (
        "cl-gray",
        "acct-harbor",
        "Gray Kim",
        0,
        None,
        {"autopay_enabled": True, "superbills_enabled": True},
        "bc-kim",
    ),
    ("cl-harper", "acct-harbor", "Harper Diaz", 2, None, {"autopay_enabled": True}, "bc-eap"),
    (
        "cl-indigo",
        "acct-harbor",
        "Indigo Reyes",
        3,
        "4242424242424242",
        {"autopay_enabled": True, "share_statements": False},
        None,
    ),
    (
        "cl-jules",
        "acct-harbor",
        "Jules Carter",
        4,
        "4242424242424242",
        {"autopay_enabled": True, "superbills_enabled": True},
        None,
    ),
]

CONTACTS = [
    {
        "id": "bc-kim",
        "account_id": "acct-harbor",
        "name": "Morgan Kim",
        "email": "morgan.kim@example.com",
        "autopay_enabled": True,
        "payment_method": {"card": "4242424242424242", "exp_month": 6, "exp_year": 2030},
    },
    {
        "id": "bc-eap",
        "account_id": "acct-harbor",
        "name": "Northwind EAP",
        "email": "claims@northwind.example.com",
        "autopay_enabled": False,
        "payment_method": {"card": "4242424242424242", "exp_month": 6, "exp_year": 2030},
    },
]


def last_full_month(today: date) -> tuple[date, date]:
    last = today.replace(day=1) - timedelta(days=1)
    return last.replace(day=1), last


def demo_scenario(first: date, last: date) -> dict[str, Any]:
    """A scenario (contract format) with weekly sessions in [first, last] for each client."""
    from billing_pipeline.domain.calendar import zone

    accounts = [
        {
            "id": p["id"],
            "name": p["name"],
            "timezone": p["timezone"],
            "npi": "1245319599",
            "tax_id": "98-7654321",
            "provider": p["provider"],
            "settings": {
                "bill_creation": p["bill_creation"],
                "superbill_day_of_month": p["superbill_day_of_month"],
                "autopay_enabled": True,
                "new_client_defaults": {
                    "share_bills": True,
                    "bill_delay_minutes": 60,
                    "share_superbills": True,
                    "superbill_delay_minutes": 0,
                    "share_statements": True,
                    "statement_delay_minutes": 0,
                },
            },
        }
        for p in PRACTICES
    ]
    tz_of = {p["id"]: p["timezone"] for p in PRACTICES}
    created = (first - timedelta(days=120)).isoformat() + "T17:00:00Z"
    clients, sessions = [], []
    for n, (cid, acct, name, weekday, card, settings, contact) in enumerate(CLIENTS):
        first_name = name.split()[0].lower()
        clients.append(
            {
                "id": cid,
                "account_id": acct,
                "name": name,
                "email": f"{first_name}@example.com",
                "date_of_birth": f"19{80 + n}-0{1 + n % 9}-1{n}",
                "created_at": created,
                "billing_contact_id": contact,
                "diagnoses": ["F41.1", "F32.1", "F43.23", "F90.0"][n % 4 : n % 4 + 1],
                "payment_method": (
                    {"card": card, "exp_month": 12, "exp_year": 2030} if card else None
                ),
                "settings": settings,
            }
        )
        tz = zone(tz_of[acct])
        day = first + timedelta(days=(weekday - first.weekday()) % 7)
        week = 0
        while day <= last:
            start = datetime.combine(day, datetime.min.time(), tzinfo=tz).replace(hour=9 + n % 8)
            status = "no_show" if (n + week) % 9 == 4 else "attended"
            cpt, fee = ("90837", 18000) if n % 3 == 0 else ("90834", 15000)
            services = [{"cpt": cpt, "units": 1, "fee_cents": fee}]
            if n % 4 == 1:
                services.append({"cpt": "90785", "units": 1, "fee_cents": 2000})
            sessions.append(
                {
                    "id": f"s-{cid[3:]}-{day.isoformat()}",
                    "client_id": cid,
                    "starts_at": start.isoformat(),
                    "status": status,
                    "place_of_service": "11",
                    "services": services,
                }
            )
            day += timedelta(days=7)
            week += 1
        if n % 5 == 2:  # history imported from the previous EHR: no CPT codes
            old = datetime.combine(first - timedelta(days=20), datetime.min.time(), tzinfo=tz)
            sessions.append(
                {
                    "id": f"s-{cid[3:]}-imported",
                    "client_id": cid,
                    "starts_at": old.replace(hour=10).isoformat(),
                    "source": "imported",
                    "services": [{"cpt": None, "units": 1, "fee_cents": 15000}],
                }
            )
    return {
        "scenario": "demo",
        "description": "Two practices (daily in Los Angeles, monthly in New York), billing "
        "contacts, imported history, a declining card and one that needs authentication.",
        "accounts": accounts,
        "billing_contacts": CONTACTS,
        "clients": clients,
        "sessions": sessions,
    }


def summary_lines(engine: Engine) -> list[str]:
    """The demo's closing summary: bills, the open balance, AutoPay, documents, flags, the
    same per practice, and the warnings `report` contains. Ids and amounts only."""
    from billing_pipeline.db import models as m
    from billing_pipeline.db.report import report_warnings

    with engine.connect() as conn:
        bills = conn.execute(
            select(
                m.Bill.account_id,
                func.count(),
                func.coalesce(func.sum(m.Bill.amount_cents), 0),
                func.coalesce(func.sum(case((m.Bill.status == "paid", 1), else_=0)), 0),
                func.coalesce(
                    func.sum(case((m.Bill.status == "open", m.Bill.amount_cents), else_=0)), 0
                ),
            ).group_by(m.Bill.account_id)
        ).all()
        per_bills = {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in bills}
        outcomes = conn.execute(
            select(m.AutopayAttempt.account_id, m.AutopayAttempt.status, func.count()).group_by(
                m.AutopayAttempt.account_id, m.AutopayAttempt.status
            )
        ).all()
        collected = dict(
            conn.execute(
                select(m.Payment.account_id, func.sum(m.Payment.amount_cents)).group_by(
                    m.Payment.account_id
                )
            ).all()
        )
        accounts = list(conn.execute(select(m.Account.id).order_by(m.Account.id)).scalars())
        superbills = conn.execute(select(func.count()).select_from(m.Superbill)).scalar_one()
        statements = conn.execute(select(func.count()).select_from(m.Statement)).scalar_one()
        shared = conn.execute(
            select(func.count()).where(m.Delivery.delivered_at.is_not(None))
        ).scalar_one()
        waiting = conn.execute(
            select(func.count()).where(m.Delivery.delivered_at.is_(None))
        ).scalar_one()
        flags = conn.execute(select(func.count()).select_from(m.CheckFlag)).scalar_one()
        warnings = report_warnings(conn)

    def charges(rows: list[tuple[str, int]]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(rows)) or "none"

    n_bills = sum(b[0] for b in per_bills.values())
    billed = sum(b[1] for b in per_bills.values())
    paid = sum(b[2] for b in per_bills.values())
    open_cents = sum(b[3] for b in per_bills.values())
    all_outcomes: dict[str, int] = {}
    for _, status, n in outcomes:
        all_outcomes[status] = all_outcomes.get(status, 0) + int(n)
    lines = [
        f"Bills:       {n_bills} for {dollars(billed)} ({paid} paid, {n_bills - paid} open)",
        f"Open:        {dollars(open_cents)} still owed on open bills",
        f"AutoPay:     {charges(list(all_outcomes.items()))}; collected "
        f"{dollars(sum(int(v) for v in collected.values()))}",
        f"Documents:   {superbills} superbills, {statements} statements",
        f"Deliveries:  {shared} shared, {waiting} still scheduled",
        f"Flags:       {flags} imported sessions without CPT codes for staff to bill",
        "Per practice:",
    ]
    for account in accounts:
        n, amount, n_paid, open_part = per_bills.get(account, (0, 0, 0, 0))
        mine = [(str(status), int(k)) for a, status, k in outcomes if a == account]
        lines.append(
            f"  {account}: {n} bills for {dollars(amount)} ({n_paid} paid), open "
            f"{dollars(open_part)}; AutoPay {charges(mine)}, collected "
            f"{dollars(int(collected.get(account, 0)))}"
        )
    lines.append(f"Warnings:    {len(warnings)} (as in `billing-pipeline report`)")
    lines.extend(f"  {w['code']} ({w['client_id']}): {w['message']}" for w in warnings)
    return lines


def closing_hints(root: Path, home: Path, db_url: str) -> list[str]:
    """What to run next, as commands one can paste whole (no placeholder in them)."""
    data = f"BILLING_DATA_DIR={shlex.quote(str(home.parent.parent))}"
    cd = f"cd {shlex.quote(str(root))}"
    return [
        "To see the runs, their metadata and the asset lineage in the Dagster UI, with the "
        "daemon and this demo's local Stripe (then open http://127.0.0.1:3000/runs; Ctrl-C "
        "stops them):",
        f"  {cd} && {data} .venv/bin/billing-pipeline ui",
        "Explain a client:",
        f"  {cd} && BILLING_DATABASE_URL={shlex.quote(db_url)} .venv/bin/billing-pipeline "
        "explain cl-blake",
        "Everything the automation produced:",
        f"  {cd} && BILLING_DATABASE_URL={shlex.quote(db_url)} .venv/bin/billing-pipeline "
        "report --json",
    ]


def run_demo(fresh: bool = True) -> int:
    from tqdm import tqdm

    from billing_pipeline.db.engine import dispose_engines, get_engine, upgrade
    from billing_pipeline.localstripe_server import LocalStripe
    from billing_pipeline.resources.payments import Payments
    from billing_pipeline.resources.renderer import DocumentRenderer
    from billing_pipeline.scenario.load import load_scenario
    from billing_pipeline.services.documents import export_documents
    from billing_pipeline.simulate import POOLED_INSTANCE_YAML, dagster_instance, simulate
    from billing_pipeline.smtp_sink import SmtpSink

    started = time.monotonic()
    folder = data_dir() / "demo"
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{folder / 'billing.db'}"
    home = folder / "dagster_home"
    os.environ.update(
        {
            "BILLING_DATABASE_URL": db_url,
            "DAGSTER_HOME": str(home),
            "STRIPE_API_KEY": "sk_test_demo",
        }
    )
    first, last = last_full_month(datetime.now(UTC).date())
    scenario_path = folder / "scenario.json"
    scenario_path.write_text(json.dumps(demo_scenario(first, last), indent=1))

    emails = folder / "emails"
    # The local Stripe's customers and cards are kept in data/demo/ when it stops, so that
    # `billing-pipeline ui` can start it again with them and AutoPay can charge in a backfill.
    stripe_store = str(folder / "localstripe.pickle")
    with LocalStripe(store=stripe_store) as stripe_server, SmtpSink(emails) as smtp_sink:
        os.environ["STRIPE_API_BASE"] = stripe_server.url
        # The delivery runs send their notification emails here (.eml files in emails/).
        os.environ["BILLING_SMTP_HOST"] = "127.0.0.1"
        os.environ["BILLING_SMTP_PORT"] = str(smtp_sink.port)
        os.environ["BILLING_SMTP_TLS"] = "none"
        engine = get_engine(db_url)
        upgrade(engine)
        summary = load_scenario(
            scenario_path, engine, Payments(api_key="sk_test_demo", api_base=stripe_server.url)
        )
        click.echo(f"Demo practices loaded: {summary}")
        click.echo(f"Replaying {first:%B %Y} night by night ({first} .. {last}):")
        instance = dagster_instance(POOLED_INSTANCE_YAML)
        nights = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        runs = 0
        with tqdm(nights, unit="night", ncols=80) as bar:
            for night in bar:
                bar.set_postfix_str(night.isoformat())
                result = simulate(night, night, instance)
                runs += len(result.run_ids)
                if not result.success:
                    click.echo(f"night {night} failed: runs {result.failed}", err=True)
                    return 1
    for line in summary_lines(engine):
        click.echo("  " + line)
    # The simulation shares without rendering (nobody reads it as it runs): the PDFs are
    # rendered now, each as it was shared, and kept in the database once per content too.
    pdf_folder = folder / "documents"
    click.echo("Rendering the documents (WeasyPrint)...")
    pdfs = export_documents(engine, DocumentRenderer(), pdf_folder)
    n_emails = len(list(emails.glob("*.eml")))
    click.echo(f"  PDFs:        {len(pdfs)} in {pdf_folder}")
    click.echo(f"  Emails:      {n_emails} notification emails (.eml) in {emails}")
    dispose_engines()
    root = Path(__file__).resolve().parents[1]
    click.echo(f"\n{runs} Dagster runs in {time.monotonic() - started:.0f} s.")
    for line in closing_hints(root, home, db_url):
        click.echo(line)
    return 0
