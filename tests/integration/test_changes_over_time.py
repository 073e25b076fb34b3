"""Changes over time as history: each change kind is in force from its instant (not one minute
before, still one minute after) as the nights read it; `changes apply` records further changes
into a loaded database after some nights ran; a re-run (backfill) of an old night after later
changes gives what the night gave, resolved settings included. SQLite and PostgreSQL, real
localstripe, real Dagster runs (in process, on an ephemeral instance)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from billing_pipeline.db import models as m
from billing_pipeline.db import store
from billing_pipeline.domain import calendar as cal
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.resources.payments import Payments
from billing_pipeline.scenario.load import apply_changes, load_scenario
from billing_pipeline.scenario.read import ScenarioError
from tests.conftest import CONTRACT
from tests.contract.runner import cli_in_process, report_of, simulate_in_process

EXAMPLE = CONTRACT / "scenarios" / "next" / "changes_over_time.json"
TZ = "America/Chicago"
MINUTE = timedelta(minutes=1)


def write(tmp_path: Path, doc: object, name: str) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=2))
    return path


def iso(at: datetime) -> str:
    return at.isoformat()


# --- Each kind, one minute before, at and one minute after its step's instant -------------------

NIGHT = date(2026, 11, 10)
BILLS_AT = cal.bills_instant(NIGHT, TZ)  # 2026-11-11T00:00-06:00
AUTOPAY_AT = cal.autopay_instant(NIGHT, TZ)  # 2026-11-11T00:30-06:00


def kinds_doc() -> dict[str, Any]:
    sharing = {
        "share_bills": True, "bill_delay_minutes": 60, "share_superbills": False,
        "superbill_delay_minutes": 0, "share_statements": False, "statement_delay_minutes": 0,
    }  # fmt: skip
    return {
        "accounts": [
            {"id": "acct-k", "name": "Kinds", "timezone": TZ,
             "settings": {"bill_creation": "daily", "superbill_day_of_month": 1,
                          "autopay_enabled": True, "new_client_defaults": sharing}},
        ],
        "billing_contacts": [
            {"id": "bc-k", "account_id": "acct-k", "name": "Kit Vale", "email": "kit@example.com",
             "autopay_enabled": True,
             "payment_method": {"card": "4242424242424242", "exp_month": 1, "exp_year": 2031}},
        ],
        "clients": [
            {"id": "cl-k", "account_id": "acct-k", "name": "Kay Moss",
             "created_at": "2026-01-01T00:00:00Z", "billing_contact_id": None,
             "payment_method": {"card": "4242424242424242", "exp_month": 2, "exp_year": 2031},
             "settings": {"autopay_enabled": True}},
        ],
        "sessions": [
            {"id": "s-k", "client_id": "cl-k", "starts_at": "2026-11-10T10:00:00-06:00",
             "source": "imported", "services": [{"cpt": None, "fee_cents": 9000}]},
        ],
        "changes": [
            # at the bills instant (00:00): what bills and superbills read
            {"at": iso(BILLS_AT), "kind": "account_settings", "account_id": "acct-k",
             "settings": {"bill_creation": "monthly", "superbill_day_of_month": 11}},
            {"at": iso(BILLS_AT), "kind": "client_settings", "client_id": "cl-k",
             "settings": {"auto_bill": False, "superbills_enabled": True, "share_bills": False}},
            {"at": iso(BILLS_AT), "kind": "session_services", "session_id": "s-k",
             "services": [{"cpt": "90834", "units": 2, "fee_cents": 9000}]},
            # at the AutoPay instant (00:30): what AutoPay reads
            {"at": iso(AUTOPAY_AT), "kind": "account_settings", "account_id": "acct-k",
             "settings": {"autopay_enabled": False}},
            {"at": iso(AUTOPAY_AT), "kind": "client_settings", "client_id": "cl-k",
             "settings": {"autopay_enabled": False}},
            {"at": iso(AUTOPAY_AT), "kind": "billing_contact", "client_id": "cl-k",
             "billing_contact_id": "bc-k"},
            {"at": iso(AUTOPAY_AT), "kind": "billing_contact_settings",
             "billing_contact_id": "bc-k", "autopay_enabled": False},
            {"at": iso(AUTOPAY_AT), "kind": "payment_method", "billing_contact_id": "bc-k",
             "payment_method": {"card": "4000000000000341", "exp_month": 3, "exp_year": 2032}},
        ],
    }  # fmt: skip


def what_the_steps_read(engine: Engine, offset: timedelta) -> dict[str, Any]:
    """Every changed value as the night's bills (00:00) and AutoPay (00:30) read it, each read
    `offset` away from its step's instant."""
    with engine.connect() as conn:
        bills = store.load_practice(conn, "acct-k", BILLS_AT + offset)
        autopay = store.load_practice(conn, "acct-k", AUTOPAY_AT + offset)
        (session,) = store.load_sessions(
            conn, ["cl-k"], BILLS_AT - timedelta(days=2), BILLS_AT, at=BILLS_AT + offset
        )
    client, payer = bills.clients["cl-k"], autopay.clients["cl-k"]
    contact = autopay.contacts["bc-k"]
    return {
        "bill_creation": bills.account.bill_creation.value,
        "superbill_day_of_month": bills.account.superbill_day_of_month,
        "auto_bill": client.auto_bill,
        "superbills_enabled": client.superbills_enabled,
        "share_bills": client.sharing.share_bills,
        "services": [(s.cpt, s.units) for s in session.services],
        "account_autopay": autopay.account.autopay_enabled,
        "client_autopay": payer.autopay_enabled,
        "billing_contact_id": payer.billing_contact_id,
        "contact_autopay": contact.autopay_enabled,
        "contact_card_last4": contact.card.last4 if contact.card else None,
    }


BEFORE = {
    "bill_creation": "daily",
    "superbill_day_of_month": 1,
    "auto_bill": True,
    "superbills_enabled": False,
    "share_bills": True,
    "services": [(None, 1)],
    "account_autopay": True,
    "client_autopay": True,
    "billing_contact_id": None,
    "contact_autopay": True,
    "contact_card_last4": "4242",
}
AFTER = {
    "bill_creation": "monthly",
    "superbill_day_of_month": 11,
    "auto_bill": False,
    "superbills_enabled": True,
    "share_bills": False,
    "services": [("90834", 2)],
    "account_autopay": False,
    "client_autopay": False,
    "billing_contact_id": "bc-k",
    "contact_autopay": False,
    "contact_card_last4": "0341",
}


def test_each_change_kind_is_in_force_from_the_instant_of_its_step(
    engine: Engine, localstripe: LocalStripe, tmp_path: Path
) -> None:
    """A change at T is in force at T, not one minute before; still one minute after. The
    latest values (no instant) have every change."""
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(write(tmp_path, kinds_doc(), "kinds.json"), engine, payments)
    assert what_the_steps_read(engine, -MINUTE) == BEFORE
    assert what_the_steps_read(engine, timedelta(0)) == AFTER
    assert what_the_steps_read(engine, MINUTE) == AFTER
    with engine.connect() as conn:
        latest = store.load_practice(conn, "acct-k")
        initial = store.list_accounts(conn, ["acct-k"])[0]
    assert latest.account.bill_creation.value == "monthly"
    assert initial.bill_creation.value == "daily"  # the account's row is never overwritten


def test_the_same_card_details_re_entered_are_the_same_card(
    engine: Engine, localstripe: LocalStripe, tmp_path: Path
) -> None:
    """Stripe's fingerprint, the payer and the expiry make a card's identity: re-entered
    identical details keep the count of failures; another expiry or payer does not."""
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    doc = kinds_doc()
    card = {"card": "4242424242424242", "exp_month": 2, "exp_year": 2031}
    doc["changes"] = [
        {"at": "2026-11-05T12:00:00Z", "kind": "payment_method", "client_id": "cl-k",
         "payment_method": card},
        {"at": "2026-11-06T12:00:00Z", "kind": "payment_method", "client_id": "cl-k",
         "payment_method": {**card, "exp_year": 2032}},
        {"at": "2026-11-07T12:00:00Z", "kind": "payment_method", "client_id": "cl-k",
         "payment_method": None},
    ]  # fmt: skip
    load_scenario(write(tmp_path, doc, "cards.json"), engine, payments)

    def key(day: int) -> str | None:
        with engine.connect() as conn:
            found = store.load_practice(conn, "acct-k", datetime(2026, 11, day, 13, tzinfo=UTC))
        card = found.clients["cl-k"].card
        return card.key if card else None

    first = key(4)
    assert first is not None and "fp:" in first
    assert key(5) == first  # a new payment method, the same card
    assert key(6) not in (None, first)  # another expiry: another card
    assert key(7) is None  # removed
    with engine.connect() as conn:
        contact = store.load_practice(conn, "acct-k").contacts["bc-k"]
    assert contact.card is not None and contact.card.key != first  # another payer


# --- changes apply, after some nights ran --------------------------------------------------------


def _items(report: dict[str, Any], name: str, *leave_out: str) -> list[str]:
    return sorted(
        json.dumps({k: v for k, v in item.items() if k not in ("id", "document_id", *leave_out)})
        for item in report[name]
    )


@pytest.mark.slow
def test_changes_applied_after_some_nights_ran_reach_only_the_nights_not_run_yet(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The public example loaded without its changes and run to Nov 10; then its changes are
    recorded with `changes apply` (some dated before nights that ran) and the month finished.
    What the first ten nights made stays as it was; the later nights read the changes."""
    doc = json.loads(EXAMPLE.read_text())
    changes = doc.pop("changes")
    loaded = cli_in_process(cli_env, "scenario", "load", str(write(tmp_path, doc, "s.json")))
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    assert simulate_in_process(cli_env, "2026-11-02", "2026-11-10") == []
    first = report_of(cli_env, run=cli_in_process)

    path = write(tmp_path, {"changes": changes}, "changes.json")
    applied = cli_in_process(cli_env, "changes", "apply", str(path))
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert applied.stdout.strip() == "applied changes.json: 5 changes recorded"
    again = cli_in_process(cli_env, "changes", "apply", str(path))  # refused whole: all exist
    assert again.returncode == 2
    assert "changes[0].settings.autopay_enabled: autopay_enabled of client 'cl-maya' already " in (
        again.stderr
    )
    assert simulate_in_process(cli_env, "2026-11-11", "2026-11-30") == []
    second = report_of(cli_env, run=cli_in_process)

    # Nights already run: nothing undone or redone (a bill's status is today's).
    for name in ("bills", "autopay_attempts", "superbills", "statements", "deliveries"):
        leave = ("status",) if name == "bills" else ()
        assert set(_items(first, name, *leave)) <= set(_items(second, name, *leave)), name
    maya = [a["attempted_at"] for a in second["autopay_attempts"] if a["client_id"] == "cl-maya"]
    # Maya's AutoPay was on when nights Nov 5..9 ran (the pause came later): her Nov 6 session
    # was charged on night Nov 6, unlike in the public example where the pause holds it.
    assert "2026-11-07T06:30:00+00:00" in maya or "2026-11-07T06:30:00Z" in maya
    jordan = [
        (a["attempted_at"][:16], a["amount_cents"], a["outcome"])
        for a in second["autopay_attempts"]
        if a["client_id"] == "cl-jordan"
    ]
    # Three declines, stopped on nights Nov 8..10 (no card change recorded yet); the card
    # replaced on the 9th is in force for night Nov 11: both open bills in one attempt.
    assert jordan[:4] == [
        ("2026-11-05T06:30", 18000, "declined"),
        ("2026-11-06T06:30", 18000, "declined"),
        ("2026-11-07T06:30", 18000, "declined"),
        ("2026-11-12T06:30", 36000, "succeeded"),
    ]
    # From night Nov 11 on, the nights read the changes as the public example's did.
    expected = json.loads(EXAMPLE.with_suffix(".expected.json").read_text())
    later = [b for b in expected["bills"] if b["created_at"] >= "2026-11-12"]
    got = [
        {k: b[k] for k in ("client_id", "session_ids", "amount_cents", "status")}
        for b in second["bills"]
        if b["created_at"] >= "2026-11-12"
    ]
    assert sorted(got, key=json.dumps) == sorted(
        ({k: b[k] for k in ("client_id", "session_ids", "amount_cents", "status")} for b in later),
        key=json.dumps,
    )
    assert second["superbills"][0]["session_ids"] == ["s-sam-1028-imported"]


# --- A backfill of an old night after later changes ----------------------------------------------


def _resolved(engine_url: str, nights: list[date]) -> list[tuple[Any, ...]]:
    from billing_pipeline.db.engine import get_engine

    with get_engine(engine_url).connect() as conn:
        rows = conn.execute(
            select(m.ResolvedSettings.__table__)
            .where(m.ResolvedSettings.night.in_(nights))
            .order_by(m.ResolvedSettings.night, m.ResolvedSettings.client_id)
        ).all()
    return [tuple(r) for r in rows]


@pytest.mark.slow
def test_a_backfill_of_an_old_night_after_later_changes_gives_what_the_night_gave(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The public example run to Nov 8; then later changes (dated from Nov 20: every switch
    off, manual bills, another card) are applied and nights Nov 3..6 run again: the report
    and each night's resolved settings are as before."""
    loaded = cli_in_process(cli_env, "scenario", "load", str(EXAMPLE))
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    assert simulate_in_process(cli_env, "2026-11-02", "2026-11-08") == []
    before = report_of(cli_env, run=cli_in_process)
    nights = [date(2026, 11, d) for d in range(3, 7)]
    url = cli_env["BILLING_DATABASE_URL"]
    resolved = _resolved(url, nights)
    assert len(resolved) == 4 * 3
    # resolved_settings holds what each night applied: Maya's AutoPay paused from Nov 5 14:10.
    columns = [c.name for c in m.ResolvedSettings.__table__.columns]
    night, client, reason = (columns.index(c) for c in ("night", "client_id", "autopay_reason"))
    maya = {r[night]: r for r in resolved if r[client] == "cl-maya"}
    assert maya[date(2026, 11, 4)][reason] == "runs"
    assert maya[date(2026, 11, 5)][reason] == "client_autopay_off"

    later = {
        "changes": [
            {"at": "2026-11-20T09:00:00-06:00", "kind": "account_settings",
             "account_id": "acct-willow",
             "settings": {"bill_creation": "manual", "autopay_enabled": False,
                          "superbill_day_of_month": 3}},
            {"at": "2026-11-20T09:00:00-06:00", "kind": "client_settings", "client_id": "cl-maya",
             "settings": {"autopay_enabled": False, "share_bills": False, "auto_bill": False}},
            {"at": "2026-11-20T09:00:00-06:00", "kind": "payment_method", "client_id": "cl-maya",
             "payment_method": {"card": "4000000000000341", "exp_month": 1, "exp_year": 2030}},
            {"at": "2026-11-20T09:00:00-06:00", "kind": "session_services",
             "session_id": "s-maya-1103", "services": [{"cpt": None, "fee_cents": 1}]},
        ]
    }  # fmt: skip
    applied = cli_in_process(cli_env, "changes", "apply", str(write(tmp_path, later, "later.json")))
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert simulate_in_process(cli_env, "2026-11-03", "2026-11-06") == []
    assert report_of(cli_env, run=cli_in_process) == before
    assert _resolved(url, nights) == resolved


def test_changes_apply_refuses_a_bad_file_whole_and_writes_nothing(
    engine: Engine, localstripe: LocalStripe, tmp_path: Path
) -> None:
    """A file of changes is checked against the loaded database as a whole: a bad change
    after good ones (here, a second change of one field at one instant) leaves it as it was."""
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    doc = kinds_doc()
    doc.pop("changes")
    load_scenario(write(tmp_path, doc, "k.json"), engine, payments)
    good = copy.deepcopy(kinds_doc()["changes"])
    bad = {"changes": [*good, {**good[1], "at": "2026-11-11T06:00:00Z"}]}
    with pytest.raises(ScenarioError) as refused:
        apply_changes(write(tmp_path, bad, "bad.json"), engine, payments)
    assert str(refused.value) == (
        "changes[8].settings.auto_bill: a second change of auto_bill of client 'cl-k' at the "
        "same instant (also at changes[1].settings.auto_bill)"
    )
    with engine.connect() as conn:
        assert conn.execute(select(m.SettingChange.id)).first() is None
        assert len(conn.execute(select(m.PaymentMethod.id)).all()) == 2
    unknown = {"changes": [{**good[1], "client_id": "cl-nobody"}]}
    with pytest.raises(ScenarioError, match=r"^changes\[0\]\.client_id: unknown client"):
        apply_changes(write(tmp_path, unknown, "unknown.json"), engine, payments)
    not_changes = {"changes": [], "clients": []}
    with pytest.raises(ScenarioError, match=r"^clients: unknown field"):
        apply_changes(write(tmp_path, not_changes, "scenario.json"), engine, payments)
    assert apply_changes(write(tmp_path, {"changes": good}, "good.json"), engine, payments) == 11


def test_the_imported_cpt_check_resolves_a_session_given_a_code(
    engine: Engine, localstripe: LocalStripe, tmp_path: Path
) -> None:
    """A flagged imported session warns on the nights that meet it without a CPT code and
    counts as open overall; once staff add its code the next night passes, nothing is open,
    and the flag stays in the history (the report still lists it)."""
    from billing_pipeline.checks.invariants import imported_sessions_have_cpt_codes
    from billing_pipeline.services.nightly import record_eligible_sessions

    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    doc = kinds_doc()
    services_change = [c for c in doc.pop("changes") if c["kind"] == "session_services"]
    load_scenario(write(tmp_path, doc, "k.json"), engine, payments)
    with engine.begin() as conn:
        practice = store.load_practice(conn, "acct-k", BILLS_AT)
        figures = record_eligible_sessions(conn, practice, NIGHT)
    assert figures.counts["new_flags"] == 1
    with engine.connect() as conn:
        check = imported_sessions_have_cpt_codes(conn, figures.ids)
    assert not check.passed
    assert check.metadata["session_ids"].value == ["s-k"]
    assert check.metadata["open_overall"].value == 1

    apply_changes(write(tmp_path, {"changes": services_change}, "cpt.json"), engine, payments)
    with engine.connect() as conn:
        flags = conn.execute(select(m.CheckFlag.session_id)).scalars().all()
        practice = store.load_practice(conn, "acct-k", BILLS_AT + MINUTE)
    assert flags == ["s-k"]
    with engine.begin() as conn:  # the next night: eligible (auto_bill on), no longer flagged
        figures = record_eligible_sessions(conn, practice, NIGHT + timedelta(days=1))
    with engine.connect() as conn:
        check = imported_sessions_have_cpt_codes(conn, figures.ids)
    assert check.passed
    assert check.metadata["open_overall"].value == 0
    assert (
        figures.counts["eligible_sessions"],
        figures.counts["imported_sessions_missing_cpt"],
    ) == (
        1,
        0,
    )


def test_explain_shows_each_setting_on_the_night_and_where_it_came_from(
    engine: Engine, localstripe: LocalStripe
) -> None:
    from billing_pipeline.services.explain import explain

    load_scenario(EXAMPLE, engine, Payments(api_key="sk_test_x", api_base=localstripe.url))
    with engine.connect() as conn:
        before = explain(conn, "cl-maya", date(2026, 11, 4))
        paused = explain(conn, "cl-maya", date(2026, 11, 5))
        monthly = explain(conn, "cl-sam", date(2026, 11, 16))
        daily = explain(conn, "cl-sam", date(2026, 11, 15))
        sam_before = explain(conn, "cl-sam", date(2026, 11, 11))
        sam_after = explain(conn, "cl-sam", date(2026, 11, 12))
    assert "  autopay_enabled: on (the client's own, since creation)" in before
    assert "AutoPay will charge the client Maya P." in before
    assert "  autopay_enabled: off (changed on 2026-11-05 14:10)" in paused
    assert "AutoPay is off in the client's Billing Settings" in paused
    assert "  share_bills: on (the account's default for new clients when the client was" in paused
    assert "  practice bill_creation: monthly (changed on 2026-11-16 08:00)" in monthly
    assert "  practice bill_creation: daily (the practice's setting from the start)" in daily
    assert "  superbills_enabled: on (the client's own, since creation)" in daily
    assert "  share_superbills: on (the client's own, since creation)" in daily
    assert "s-sam-1028-imported on 2026-10-28: not billed: no service on the session" in sam_before
    assert "flagged for staff" in sam_before
    assert "s-sam-1028-imported on 2026-10-28: billed tonight" in sam_after
    assert "Maya Patel" not in paused  # short names only
