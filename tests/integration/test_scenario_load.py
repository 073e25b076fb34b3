"""Loading scenario files: the public scenarios load through the domain, bad files are refused
whole with a message naming the first bad field, and nothing of a refused file stays behind,
in the database (SQLite and PostgreSQL) or in Stripe (localstripe)."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stripe
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from billing_pipeline.cli import main
from billing_pipeline.db import models as m
from billing_pipeline.db import store
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.resources.payments import Payments, PaymentsNotConfigured
from billing_pipeline.scenario import read, validate
from billing_pipeline.scenario.load import LoadSummary, load_scenario
from billing_pipeline.scenario.read import CardRegistrationError, ScenarioError, read_scenario
from billing_pipeline.scenario.validate import ExistingRecords, validate_scenario
from tests.conftest import CONTRACT

SCENARIOS = sorted(
    p for p in (CONTRACT / "scenarios").glob("*.json") if not p.name.endswith(".expected.json")
)
CARD = "4242424242424242"
DECLINED_ON_ATTACH = "4000000000000002"  # localstripe refuses to attach it, as Stripe does


@pytest.fixture
def payments(localstripe: LocalStripe) -> Payments:
    return Payments(api_key="sk_test_x", api_base=localstripe.url)


@pytest.fixture
def stripe_owners(localstripe: LocalStripe) -> Callable[[], list[str]]:
    """The `owner_ref` of every customer localstripe holds now."""
    client = stripe.StripeClient("sk_test_x", base_addresses={"api": localstripe.url})

    def owners() -> list[str]:
        page = client.v1.customers.list(params={"limit": 100})
        return sorted(
            (c.to_dict().get("metadata") or {}).get("owner_ref", "")
            for c in page.auto_paging_iter()
        )

    return owners


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every billing table, in primary key order."""
    with engine.connect() as conn:
        return {
            table.name: [
                tuple(row)
                for row in conn.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in m.Base.metadata.sorted_tables
        }


def write(tmp_path: Path, doc: object, name: str = "scenario.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return path


def count(engine: Engine, model: type[m.Base]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


# --- The public scenarios ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_public_scenario_loads_with_cards_in_stripe_only(
    scenario: Path, engine: Engine, payments: Payments
) -> None:
    doc = json.loads(scenario.read_text())
    contacts = doc.get("billing_contacts", [])
    owners = [("billing_contact", c) for c in contacts] + [("client", c) for c in doc["clients"]]
    with_cards = [(kind, o) for kind, o in owners if o.get("payment_method")]

    summary = load_scenario(scenario, engine, payments)

    assert summary == LoadSummary(
        accounts=len(doc["accounts"]),
        billing_contacts=len(contacts),
        clients=len(doc["clients"]),
        sessions=len(doc["sessions"]),
        payment_methods=len(with_cards),
    )
    assert count(engine, m.Account) == len(doc["accounts"])
    assert count(engine, m.AccountSharingDefaults) == sum(
        1 + len(a["settings"].get("settings_history", [])) for a in doc["accounts"]
    )
    assert count(engine, m.BillingContact) == len(contacts)
    assert count(engine, m.Client) == len(doc["clients"])
    assert count(engine, m.Diagnosis) == sum(len(c.get("diagnoses", [])) for c in doc["clients"])
    assert count(engine, m.SessionRow) == len(doc["sessions"])
    assert count(engine, m.SessionService) == sum(len(s["services"]) for s in doc["sessions"])
    assert count(engine, m.PaymentMethod) == len(with_cards)

    with engine.connect() as conn:
        methods = {r.id: r for r in conn.execute(select(m.PaymentMethod.__table__))}
        linked = {
            ("client", r.id): r.payment_method_id
            for r in conn.execute(select(m.Client.id, m.Client.payment_method_id))
        } | {
            ("billing_contact", r.id): r.payment_method_id
            for r in conn.execute(select(m.BillingContact.id, m.BillingContact.payment_method_id))
        }
        sessions = {r.id: r for r in conn.execute(select(m.SessionRow.__table__))}
    for kind, owner in owners:
        pm = owner.get("payment_method")
        if pm is None:
            assert linked[(kind, owner["id"])] is None
            continue
        row = methods[linked[(kind, owner["id"])]]
        assert (row.owner_type, row.owner_id) == (kind, owner["id"])
        assert row.account_id == owner["account_id"]
        assert (row.brand, row.last4) == ("visa", pm["card"][-4:])
        assert (row.exp_month, row.exp_year) == (pm["exp_month"], pm["exp_year"])
        assert row.stripe_customer_id.startswith("cus_")
        assert row.stripe_payment_method_id.startswith("pm_")
    for s in doc["sessions"]:
        row = sessions[s["id"]]
        assert row.starts_at == datetime.fromisoformat(s["starts_at"]).astimezone(UTC)
        assert row.status == s.get("status", "attended")
        assert row.source == s.get("source", "native")

    # No card number (nor anything like one) anywhere in the database.
    for table, rows in snapshot(engine).items():
        for row in rows:
            for value in row:
                assert not re.search(r"\d{12,}", str(value)), f"a card-like number in {table}"


def test_sharing_defaults_in_force_at_created_at(engine: Engine, payments: Payments) -> None:
    load_scenario(CONTRACT / "scenarios" / "sharing_defaults.json", engine, payments)
    with engine.connect() as conn:
        clients = {r.id: r for r in conn.execute(select(m.Client.__table__))}
    assert clients["cl-early"].share_bills is True  # created before the change of defaults
    assert clients["cl-early"].bill_delay_minutes == 0
    assert clients["cl-late"].share_bills is False  # created after it
    assert clients["cl-late"].share_superbills is True  # the change left the rest alone
    assert clients["cl-own"].share_bills is True  # the client's own setting wins
    assert clients["cl-own"].bill_delay_minutes == 30
    assert clients["cl-excluded"].auto_bill is False
    assert clients["cl-late"].auto_bill is True  # switches default: auto_bill on,
    assert clients["cl-late"].superbills_enabled is False  # superbills off,
    assert clients["cl-late"].autopay_enabled is False  # AutoPay off
    assert clients["cl-manual"].autopay_enabled is True
    assert clients["cl-manual"].bill_delay_minutes == 60  # its own account's defaults
    with engine.connect() as conn:
        versions = store.defaults_history_of(conn, "acct-prairie")
    assert [v.sharing.share_bills for v in versions] == [True, False]
    assert versions[1].effective_at == datetime(2026, 11, 10, tzinfo=UTC)


def test_packaged_schema_is_the_contracts() -> None:
    contract = json.loads((CONTRACT / "scenario.schema.json").read_text())
    assert read.scenario_schema() == contract


def test_changes_over_time_become_history_rows_from_their_instants() -> None:
    """The public example's changes, one row per changed field, each from its instant in UTC;
    the replaced card is a card of its own, on file from the change's instant."""
    doc = json.loads((CONTRACT / "scenarios" / "next" / "changes_over_time.json").read_text())
    scenario = validate_scenario(doc)
    rows = [(c.subject, c.subject_id, c.field, c.value, c.effective_at) for c in scenario.changes]
    new_card = "pm-client-cl-jordan-20261109T173000Z"

    def utc(*parts: int) -> datetime:
        return datetime(2026, *parts, tzinfo=UTC)

    assert rows == [
        ("client", "cl-maya", "autopay_enabled", False, utc(11, 5, 20, 10)),
        ("client", "cl-jordan", "payment_method_id", new_card, utc(11, 9, 17, 30)),
        ("client", "cl-maya", "autopay_enabled", True, utc(11, 9, 22, 45)),
        ("session", "s-sam-1028-imported", "services",
         [{"cpt": "90837", "units": 1, "fee_cents": 18000, "modifiers": []}], utc(11, 12, 22, 0)),
        ("account", "acct-willow", "bill_creation", "monthly", utc(11, 16, 14, 0)),
    ]  # fmt: skip
    assert {c.account_id for c in scenario.changes} == {"acct-willow"}
    assert [(c.id, c.since) for c in scenario.cards if c.since] == [
        (new_card, datetime(2026, 11, 9, 17, 30, tzinfo=UTC))
    ]
    assert validate_scenario({**doc, "changes": []}).changes == ()


# --- Bad input ---------------------------------------------------------------------------------

SHARING = {
    "share_bills": True,
    "bill_delay_minutes": 60,
    "share_superbills": False,
    "superbill_delay_minutes": 0,
    "share_statements": True,
    "statement_delay_minutes": 0,
}


def account(ident: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": ident,
        "name": f"Practice {ident}",
        "timezone": "America/Chicago",
        "settings": {
            "bill_creation": "daily",
            "superbill_day_of_month": 1,
            "autopay_enabled": True,
            "new_client_defaults": dict(SHARING),
        },
        **extra,
    }


def first_doc() -> dict[str, Any]:
    """Loaded before each bad file: what a refused file must leave as it was."""
    return {
        "accounts": [account("acct-1")],
        "billing_contacts": [
            {"id": "bc-1", "account_id": "acct-1", "name": "Pat Doe",
             "email": "pat@example.com", "autopay_enabled": True},
        ],
        "clients": [
            {"id": "cl-1", "account_id": "acct-1", "name": "Sam Roe", "email": "sam@example.com",
             "created_at": "2026-11-01T15:00:00Z", "billing_contact_id": "bc-1",
             "payment_method": {"card": CARD, "exp_month": 12, "exp_year": 2030}},
        ],
        "sessions": [
            {"id": "s-1", "client_id": "cl-1", "starts_at": "2026-11-20T10:00:00-06:00",
             "services": [{"cpt": "90834", "units": 1, "fee_cents": 15000}]},
        ],
    }  # fmt: skip


EXISTING = ExistingRecords(
    accounts=frozenset({"acct-1"}),
    billing_contacts={"bc-1": "acct-1"},
    clients={"cl-1": "acct-1"},
    sessions=frozenset({"s-1"}),
    client_created={"cl-1": datetime(2026, 11, 1, 15, 0, tzinfo=UTC)},
    session_clients={"s-1": "cl-1"},
)


def second_doc() -> dict[str, Any]:
    """A good second file; each bad case breaks one thing in it."""
    return {
        "accounts": [
            account("acct-2"),
            account("acct-3", timezone="America/New_York"),
        ],
        "billing_contacts": [
            {"id": "bc-2", "account_id": "acct-2", "name": "Lee Moe",
             "email": "lee@example.com", "autopay_enabled": True,
             "payment_method": {"card": CARD, "exp_month": 1, "exp_year": 2031}},
            {"id": "bc-3", "account_id": "acct-3", "name": "Kim Poe",
             "email": "kim@example.com", "autopay_enabled": False},
        ],
        "clients": [
            {"id": "cl-2", "account_id": "acct-2", "name": "Ada Lin", "email": "ada@example.com",
             "date_of_birth": "1990-01-31", "created_at": "2026-11-02T15:00:00Z",
             "billing_contact_id": "bc-2", "diagnoses": ["F41.1"], "settings": {}},
        ],
        "sessions": [
            {"id": "s-2", "client_id": "cl-2", "starts_at": "2026-11-20T10:00:00-06:00",
             "services": [{"cpt": "90834", "units": 1, "fee_cents": 15000}]},
        ],
    }  # fmt: skip


def _set(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


def _drop(*path: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return mutate


def _duplicate_session(doc: dict[str, Any]) -> None:
    doc["sessions"].append(copy.deepcopy(doc["sessions"][0]))


def _history_out_of_order(doc: dict[str, Any]) -> None:
    doc["accounts"][0]["settings"]["settings_history"] = [
        {"effective_at": "2026-11-10T00:00:00Z", "new_client_defaults": {"share_bills": False}},
        {"effective_at": "2026-11-01T00:00:00Z", "new_client_defaults": {"share_bills": True}},
    ]


# Good changes, of records of the file (cl-2) and of the database (cl-1, s-1); each bad case
# below adds one bad change after them.
GOOD_CHANGES: list[dict[str, Any]] = [
    {"at": "2026-11-10T12:00:00Z", "kind": "client_settings", "client_id": "cl-2",
     "settings": {"share_bills": False}},
    {"at": "2026-11-10T12:00:00Z", "kind": "client_settings", "client_id": "cl-1",
     "settings": {"autopay_enabled": True}},
    {"at": "2026-11-11T12:00:00Z", "kind": "billing_contact", "client_id": "cl-1",
     "billing_contact_id": None},
    {"at": "2026-11-12T12:00:00Z", "kind": "session_services", "session_id": "s-1",
     "services": [{"cpt": "90837", "units": 1, "fee_cents": 18000}]},
]  # fmt: skip


def _change(bad: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        doc["changes"] = [*copy.deepcopy(GOOD_CHANGES), bad]

    return mutate


def _client_change(at: str, client_id: str = "cl-2", **settings: Any) -> dict[str, Any]:
    return {"at": at, "kind": "client_settings", "client_id": client_id, "settings": settings}


# (case, mutation, the whole message, a value that must not appear in it)
BAD: list[tuple[str, Callable[[dict[str, Any]], None], str, str | None]] = [
    (
        "change_unknown_client",
        _change(_client_change("2026-11-20T12:00:00Z", "cl-x", auto_bill=False)),
        "changes[4].client_id: unknown client 'cl-x'",
        None,
    ),
    (
        "change_unknown_session",
        _change(
            {
                "at": "2026-11-20T12:00:00Z",
                "kind": "session_services",
                "session_id": "s-x",
                "services": [{"cpt": "90834", "fee_cents": 100}],
            }
        ),
        "changes[4].session_id: unknown session 's-x'",
        None,
    ),
    (
        "change_unknown_billing_contact",
        _change(
            {
                "at": "2026-11-20T12:00:00Z",
                "kind": "billing_contact_settings",
                "billing_contact_id": "bc-x",
                "autopay_enabled": True,
            }
        ),
        "changes[4].billing_contact_id: unknown billing contact 'bc-x'",
        None,
    ),
    (
        "change_unknown_account",
        _change(
            {
                "at": "2026-11-20T12:00:00Z",
                "kind": "account_settings",
                "account_id": "acct-x",
                "settings": {"bill_creation": "monthly"},
            }
        ),
        "changes[4].account_id: unknown account 'acct-x'",
        None,
    ),
    (
        "change_billing_contact_of_another_account",
        _change(
            {
                "at": "2026-11-20T12:00:00Z",
                "kind": "billing_contact",
                "client_id": "cl-2",
                "billing_contact_id": "bc-3",
            }
        ),
        "changes[4].billing_contact_id: billing contact 'bc-3' belongs to account 'acct-3', "
        "not 'acct-2'",
        None,
    ),
    (
        "change_of_one_field_twice_at_one_instant",
        # 06:00-06:00 is 12:00Z: the instant of changes[1], written with another offset.
        _change(_client_change("2026-11-10T06:00:00-06:00", "cl-1", autopay_enabled=False)),
        "changes[4].settings.autopay_enabled: a second change of autopay_enabled of client "
        "'cl-1' at the same instant (also at changes[1].settings.autopay_enabled)",
        None,
    ),
    (
        "change_naive_instant",
        _change(_client_change("2026-11-20T12:00:00", auto_bill=False)),
        "changes[4].at: '2026-11-20T12:00:00' has no UTC offset",
        None,
    ),
    (
        "change_before_the_client_was_created",
        _change(_client_change("2026-11-02T14:59:59Z", auto_bill=False)),
        "changes[4].at: '2026-11-02T14:59:59Z' is before client 'cl-2' was created "
        "(2026-11-02T15:00:00+00:00)",
        None,
    ),
    (
        "change_bad_value",
        _change(_client_change("2026-11-20T12:00:00Z", autopay_enabled="yes")),
        "changes[4].settings.autopay_enabled: 'yes' is not of type boolean",
        None,
    ),
    (
        "change_unknown_kind",
        _change({"at": "2026-11-20T12:00:00Z", "kind": "client_name", "client_id": "cl-2"}),
        'changes[4].kind: \'client_name\' is not one of "client_settings", "account_settings", '
        '"billing_contact", "billing_contact_settings", "payment_method", "session_services"',
        None,
    ),
    (
        "change_card_number_withheld",
        _change(
            {
                "at": "2026-11-20T12:00:00Z",
                "kind": "payment_method",
                "client_id": "cl-2",
                "payment_method": {"card": "4242x4242", "exp_month": 1, "exp_year": 2031},
            }
        ),
        "changes[4].payment_method.card: (value withheld) does not match ^[0-9]{12,19}$",
        "4242x4242",
    ),
    (
        "bad_cpt",
        _set("sessions", 0, "services", 0, "cpt", value="9083"),
        "sessions[0].services[0].cpt: '9083' does not match ^[0-9]{4}[0-9A-Z]$",
        None,
    ),
    (
        "unknown_timezone",
        _set("accounts", 1, "timezone", value="America/Atlantis"),
        "accounts[1].timezone: 'America/Atlantis' is not an IANA timezone",
        None,
    ),
    (
        "unknown_account",
        _set("clients", 0, "account_id", value="acct-x"),
        "clients[0].account_id: unknown account 'acct-x'",
        None,
    ),
    (
        "unknown_account_of_contact",
        _set("billing_contacts", 1, "account_id", value="acct-x"),
        "billing_contacts[1].account_id: unknown account 'acct-x'",
        None,
    ),
    (
        "unknown_client",
        _set("sessions", 0, "client_id", value="cl-x"),
        "sessions[0].client_id: unknown client 'cl-x'",
        None,
    ),
    (
        "unknown_billing_contact",
        _set("clients", 0, "billing_contact_id", value="bc-x"),
        "clients[0].billing_contact_id: unknown billing contact 'bc-x'",
        None,
    ),
    (
        "billing_contact_of_another_account",
        _set("clients", 0, "billing_contact_id", value="bc-3"),
        "clients[0].billing_contact_id: billing contact 'bc-3' belongs to account 'acct-3', "
        "not 'acct-2'",
        None,
    ),
    (
        "billing_contact_of_another_account_in_db",
        _set("clients", 0, "billing_contact_id", value="bc-1"),
        "clients[0].billing_contact_id: billing contact 'bc-1' belongs to account 'acct-1', "
        "not 'acct-2'",
        None,
    ),
    (
        "duplicate_id_in_file",
        _duplicate_session,
        "sessions[1].id: duplicate id 's-2' (also at sessions[0].id)",
        None,
    ),
    (
        "duplicate_id_in_db",
        _set("billing_contacts", 1, "id", value="bc-1"),
        "billing_contacts[1].id: billing contact 'bc-1' already exists in the database",
        None,
    ),
    (
        "duplicate_account_in_db",
        _set("accounts", 0, "id", value="acct-1"),
        "accounts[0].id: account 'acct-1' already exists in the database",
        None,
    ),
    (
        "negative_fee",
        _set("sessions", 0, "services", 0, "fee_cents", value=-100),
        "sessions[0].services[0].fee_cents: -100 is less than the minimum of 0",
        None,
    ),
    (
        "time_without_offset",
        _set("sessions", 0, "starts_at", value="2026-11-20T10:00:00"),
        "sessions[0].starts_at: '2026-11-20T10:00:00' has no UTC offset",
        None,
    ),
    (
        "created_at_without_offset",
        _set("clients", 0, "created_at", value="2026-11-02 15:00"),
        "clients[0].created_at: '2026-11-02 15:00' has no UTC offset",
        None,
    ),
    (
        "settings_history_out_of_order",
        _history_out_of_order,
        "accounts[0].settings.settings_history[1].effective_at: '2026-11-01T00:00:00Z' is not "
        "after the change before it ('2026-11-10T00:00:00Z'): settings_history must be in "
        "time order",
        None,
    ),
    (
        "bad_email",
        _set("clients", 0, "email", value="ada.lin.example.com"),
        "clients[0].email: (value withheld: personal data) is not an email address",
        "ada.lin",
    ),
    (
        "bad_date_of_birth",
        _set("clients", 0, "date_of_birth", value="1990-02-30"),
        "clients[0].date_of_birth: (value withheld: personal data) is not a date (YYYY-MM-DD)",
        "1990",
    ),
    (
        "bad_diagnosis",
        _set("clients", 0, "diagnoses", value=["F41.1", "HIV+"]),
        "clients[0].diagnoses[1]: (value withheld: personal data) does not match "
        r"^[A-TV-Z][0-9][0-9AB](\.[0-9A-TV-Z]{1,4})?$",
        "HIV",
    ),
    (
        "bad_card_number",
        _set("billing_contacts", 0, "payment_method", "card", value="4242-4242-4242-4242"),
        "billing_contacts[0].payment_method.card: (value withheld) does not match ^[0-9]{12,19}$",
        "4242",
    ),
    (
        "missing_required_field",
        _drop("clients", 0, "created_at"),
        "clients[0].created_at: required field is missing",
        None,
    ),
    (
        "unknown_field",
        _set("clients", 0, "ssn", value="123-45-6789"),
        "clients[0].ssn: unknown field (not in the scenario schema)",
        "6789",
    ),
    (
        "wrong_type_of_record",
        _set("clients", 0, value="Ada Lin"),
        "clients[0]: 'Ada Lin' is not of type object",
        None,
    ),
    (
        "session_amount_beyond_32_bits",
        _set(
            "sessions",
            0,
            "services",
            value=[
                {"units": 20, "fee_cents": 100_000_000},
                {"units": 2, "fee_cents": 100_000_000},
            ],
        ),
        "sessions[0].services[1]: the session's amount reaches 2,200,000,000 cents, more than "
        "the database holds (2,147,483,647)",
        None,
    ),
    (
        "first_error_in_document_order",
        lambda d: (
            _set("sessions", 0, "client_id", value="cl-x")(d),
            _set("clients", 0, "billing_contact_id", value="bc-x")(d),
        ),
        "clients[0].billing_contact_id: unknown billing contact 'bc-x'",
        None,
    ),
]


def test_second_doc_is_good_so_each_case_breaks_one_thing() -> None:
    scenario = validate_scenario(second_doc(), EXISTING)
    assert [c.id for c in scenario.clients] == ["cl-2"]
    assert [c.owner for c in scenario.cards] == [("billing_contact", "bc-2")]


@pytest.mark.parametrize(("case", "mutate", "message", "secret"), BAD, ids=[b[0] for b in BAD])
def test_bad_document_is_refused_naming_the_field(
    case: str,
    mutate: Callable[[dict[str, Any]], None],
    message: str,
    secret: str | None,
) -> None:
    doc = second_doc()
    mutate(doc)
    with pytest.raises(ScenarioError) as refused:
        validate_scenario(doc, EXISTING)
    assert str(refused.value) == message
    assert "\n" not in str(refused.value)
    if secret is not None:
        assert secret not in str(refused.value)


def test_personal_data_is_withheld_wherever_it_breaks_the_schema() -> None:
    doc = second_doc()
    doc["clients"][0]["name"] = {"first": "Ada", "last": "Lin"}
    doc["billing_contacts"][0]["email"] = 42
    doc["accounts"][1]["phone"] = ["555-0100"]
    messages = []
    for part in ("accounts", "billing_contacts", "clients"):
        only = second_doc()
        only[part] = doc[part]
        with pytest.raises(ScenarioError) as refused:
            validate_scenario(only)
        messages.append(str(refused.value))
    assert messages == [
        "accounts[1].phone: (value withheld: personal data) is not of type string",
        "billing_contacts[0].email: (value withheld: personal data) is not of type string",
        "clients[0].name: (value withheld: personal data) is not of type string",
    ]


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"^no such file$"):
        read_scenario(tmp_path / "missing.json")
    broken = write(tmp_path, '{\n  "accounts": [,\n]}')
    with pytest.raises(ScenarioError) as refused:
        read_scenario(broken)
    assert str(refused.value) == ("not valid JSON: Expecting value at line 2, column 16")


@pytest.mark.slow
def test_a_refused_file_leaves_the_database_and_stripe_as_they_were(
    engine: Engine,
    payments: Payments,
    stripe_owners: Callable[[], list[str]],
    tmp_path: Path,
) -> None:
    load_scenario(write(tmp_path, first_doc(), "first.json"), engine, payments)
    before = snapshot(engine)
    owners = stripe_owners()
    assert before["clients"] and before["payment_methods"]

    failures = []
    for case, mutate, message, _secret in BAD:
        doc = second_doc()
        mutate(doc)
        try:
            load_scenario(write(tmp_path, doc, f"{case}.json"), engine, payments)
        except ScenarioError as err:
            if str(err) != message:
                failures.append(f"{case}: {err}")
        else:
            failures.append(f"{case}: loaded")
        if snapshot(engine) != before:
            failures.append(f"{case}: the database changed")
    for text in ('{"accounts": [', "", "[1, 2]"):
        with pytest.raises(ScenarioError):
            load_scenario(write(tmp_path, text, "broken.json"), engine, payments)
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "missing.json", engine, payments)
    assert failures == []
    assert snapshot(engine) == before
    assert stripe_owners() == owners  # no card of a refused file reached Stripe

    # The same file, unbroken, loads; so does a file that only refers to records loaded before.
    summary = load_scenario(write(tmp_path, second_doc(), "second.json"), engine, payments)
    assert summary == LoadSummary(2, 2, 1, 1, 1)
    more = {
        "accounts": [],
        "clients": [
            {"id": "cl-1b", "account_id": "acct-1", "name": "Bo Roe",
             "created_at": "2026-11-03T15:00:00Z", "billing_contact_id": "bc-1"},
        ],
        "sessions": [
            {"id": "s-1b", "client_id": "cl-1", "starts_at": "2026-11-21T10:00:00-06:00",
             "services": [{"units": 2, "fee_cents": 5000, "modifiers": ["95"]}]},
        ],
    }  # fmt: skip
    assert load_scenario(write(tmp_path, more, "more.json"), engine, payments) == LoadSummary(
        0, 0, 1, 1, 0
    )
    with engine.connect() as conn:
        service = conn.execute(
            select(m.SessionService.__table__).where(m.SessionService.session_id == "s-1b")
        ).one()
    assert (service.cpt, service.units, service.fee_cents, service.modifiers) == (
        None,
        2,
        5000,
        "95",
    )
    assert count(engine, m.Client) == 3


# --- Failures after the checks -----------------------------------------------------------------


def unique_owners_doc() -> tuple[dict[str, Any], str, str]:
    tag = uuid.uuid4().hex[:10]
    doc = first_doc()
    doc["clients"][0]["id"] = good = f"cl-good-{tag}"
    doc["sessions"][0]["client_id"] = good
    doc["clients"].append(
        {"id": f"cl-bad-{tag}", "account_id": "acct-1", "name": "Jo Poe",
         "created_at": "2026-11-01T15:00:00Z",
         "payment_method": {"card": DECLINED_ON_ATTACH, "exp_month": 12, "exp_year": 2030}}
    )  # fmt: skip
    return doc, good, f"cl-bad-{tag}"


def test_a_card_stripe_refuses_undoes_the_cards_before_it(
    engine: Engine,
    payments: Payments,
    stripe_owners: Callable[[], list[str]],
    tmp_path: Path,
) -> None:
    doc, good, _bad = unique_owners_doc()
    before = snapshot(engine)
    with pytest.raises(CardRegistrationError) as refused:
        load_scenario(write(tmp_path, doc), engine, payments)
    message = str(refused.value)
    assert message.startswith("clients[1].payment_method: Stripe refused the card (card_declined")
    assert message.endswith("; nothing was written")
    assert DECLINED_ON_ATTACH not in message
    assert snapshot(engine) == before
    assert good not in stripe_owners()  # the first client's customer was deleted again


@pytest.fixture
def failing_session_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The write fails after the accounts, cards, contacts and clients went in."""

    def boom(conn: object, session: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "create_session", boom)


def test_a_failed_write_rolls_back_everything_and_deletes_the_customers(
    engine: Engine,
    payments: Payments,
    stripe_owners: Callable[[], list[str]],
    tmp_path: Path,
    failing_session_write: None,
) -> None:
    doc, good, bad = unique_owners_doc()
    doc["clients"][1]["payment_method"]["card"] = CARD
    before = snapshot(engine)
    with pytest.raises(RuntimeError, match="disk full"):
        load_scenario(write(tmp_path, doc), engine, payments)
    assert snapshot(engine) == before
    owners = stripe_owners()
    assert good not in owners
    assert bad not in owners


def test_a_database_refusal_names_no_personal_data(
    engine: Engine,
    payments: Payments,
    stripe_owners: Callable[[], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc, good, bad = unique_owners_doc()
    doc["clients"][1]["payment_method"]["card"] = CARD
    monkeypatch.setattr(
        validate, "payment_method_id", lambda owner_type, owner_id, since=None: "pm-same"
    )
    before = snapshot(engine)
    with pytest.raises(ScenarioError) as refused:
        load_scenario(write(tmp_path, doc), engine, payments)
    message = str(refused.value)
    assert message.startswith("the database refused the write (")
    assert message.endswith("; nothing was written")
    assert "Sam" not in message and "Jo Poe" not in message and "example.com" not in message
    assert snapshot(engine) == before
    assert not {good, bad} & set(stripe_owners())


def test_cards_need_stripe_but_a_file_without_cards_does_not(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)  # Payments() would read it
    before = snapshot(engine)
    with pytest.raises(PaymentsNotConfigured, match="STRIPE_API_KEY"):
        load_scenario(write(tmp_path, first_doc()), engine, Payments())
    assert snapshot(engine) == before
    no_cards = first_doc()
    del no_cards["clients"][0]["payment_method"]
    summary = load_scenario(write(tmp_path, no_cards), engine, Payments())
    assert summary == LoadSummary(1, 1, 1, 1, 0)
    assert str(summary) == ("1 account, 1 billing contact, 1 client, 1 session, 0 payment methods")


# --- Hostile shapes ------------------------------------------------------------------------------
# Each file is second_doc() as JSON text with one thing made hostile. It is refused as a whole
# with the path of the place, before anything is written, quoting no personal data.

PERSONAL_VALUES = ("Ada", "Lin", "ada@", "eve@", "1990", "F41", "Lee Moe", "lee@", "Kim Poe")
TOO_DEEP = "arrays and objects nested more than 64 levels deep"
OUT_OF_INT32 = "is outside the range -2,147,483,648..2,147,483,647"


def second_text(old: str, new: str) -> str:
    """second_doc() as JSON text, with the one occurrence of `old` replaced by `new`."""
    text = json.dumps(second_doc(), indent=2)
    assert text.count(old) == 1, old
    return text.replace(old, new)


@pytest.fixture
def loaded(engine: Engine, payments: Payments, tmp_path: Path) -> Engine:
    """The database with first_doc() in it: what a refused file must leave as it was."""
    load_scenario(write(tmp_path, first_doc(), "first.json"), engine, payments)
    return engine


def refused(engine: Engine, payments: Payments, path: Path) -> str:
    """The message of the ScenarioError loading `path` raises; the database is unchanged."""
    before = snapshot(engine)
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path, engine, payments)
    assert snapshot(engine) == before, "the database changed"
    message = str(raised.value)
    assert "\n" not in message and "\x00" not in message
    assert not [v for v in PERSONAL_VALUES if v in message], message
    return message


def test_deep_nesting_is_refused_naming_where_it_got_too_deep(
    loaded: Engine, payments: Payments, tmp_path: Path
) -> None:
    # modifiers is at depth 6 (document, sessions, session, services, service, modifiers):
    # the 65th level is reached after 59 more.
    deep_arrays = "sessions[0].services[0].modifiers" + "[0]" * 59
    # settings is at depth 4: the 65th level is its 61st nested "a".
    deep_objects = "clients[0].settings" + ".a" * 61
    cases = {
        # json.loads itself fails (RecursionError) on these: the path comes from a scan.
        "arrays_10000": second_text(
            '"cpt": "90834"', '"cpt": "90834", "modifiers": ' + "[" * 10_000 + "]" * 10_000
        ),
        "objects_10000": second_text(
            '"settings": {}', '"settings": ' + '{"a": ' * 10_000 + "1" + "}" * 10_000
        ),
        # json.loads copes with these: the path comes from the parsed document.
        "arrays_100": second_text(
            '"cpt": "90834"', '"cpt": "90834", "modifiers": ' + "[" * 100 + "]" * 100
        ),
        "objects_100": second_text(
            '"settings": {}', '"settings": ' + '{"a": ' * 100 + "1" + "}" * 100
        ),
    }
    expected = {
        "arrays_10000": f"{deep_arrays}: {TOO_DEEP}",
        "objects_10000": f"{deep_objects}: {TOO_DEEP}",
        "arrays_100": f"{deep_arrays}: {TOO_DEEP}",
        "objects_100": f"{deep_objects}: {TOO_DEEP}",
    }
    messages = {
        case: refused(loaded, payments, write(tmp_path, text, f"{case}.json"))
        for case, text in cases.items()
    }
    assert messages == expected
    # 64 levels are allowed (the schema then refuses what they hold).
    at_limit = second_text('"settings": {}', '"settings": ' + '{"a": ' * 60 + "1" + "}" * 60)
    assert "nested" not in refused(loaded, payments, write(tmp_path, at_limit, "at_limit.json"))


@pytest.mark.slow
def test_integers_beyond_32_bits_are_refused_before_the_database_sees_them(
    loaded: Engine, payments: Payments, tmp_path: Path
) -> None:
    fee = "sessions[0].services[0].fee_cents"
    cases = {
        # Python's int() refuses more than 4300 digits with a bare ValueError.
        "fee_5000_digits": (
            second_text('"fee_cents": 15000', '"fee_cents": ' + "9" * 5000),
            f"{fee}: integer with 5000 digits {OUT_OF_INT32}",
        ),
        # More than a PostgreSQL INTEGER or BIGINT column holds.
        "fee_30_digits": (
            second_text('"fee_cents": 15000', '"fee_cents": ' + "1" * 30),
            f"{fee}: integer with 30 digits {OUT_OF_INT32}",
        ),
        "fee_negative_30_digits": (
            second_text('"fee_cents": 15000', '"fee_cents": -' + "1" * 30),
            f"{fee}: integer with 30 digits {OUT_OF_INT32}",
        ),
        "units_just_beyond_int32": (
            second_text('"units": 1', '"units": 2147483648'),
            f"sessions[0].services[0].units: integer with 10 digits {OUT_OF_INT32}",
        ),
        # In a personal field the message says no more than anywhere else.
        "phone_30_digits": (
            second_text('"id": "acct-3",', '"id": "acct-3", "phone": ' + "5" * 30 + ","),
            f"accounts[1].phone: integer with 30 digits {OUT_OF_INT32}",
        ),
        "fee_too_large_a_number": (
            second_text('"fee_cents": 15000', '"fee_cents": 1e999'),
            f"{fee}: number is too large to represent",
        ),
        "fee_nan": (
            second_text('"fee_cents": 15000', '"fee_cents": NaN'),
            f"{fee}: NaN is not a JSON number",
        ),
        # The largest INTEGER passes the parse; the schema's own maximum then refuses it.
        "fee_int32_max": (
            second_text('"fee_cents": 15000', '"fee_cents": 2147483647'),
            f"{fee}: 2147483647 is greater than the maximum of 100000000",
        ),
    }
    messages = {
        case: refused(loaded, payments, write(tmp_path, text, f"{case}.json"))
        for case, (text, _message) in cases.items()
    }
    assert messages == {case: message for case, (_text, message) in cases.items()}
    assert "5" * 12 not in messages["phone_30_digits"]


def test_duplicate_keys_are_refused_naming_the_key(
    loaded: Engine, payments: Payments, tmp_path: Path
) -> None:
    cases = {
        "client_email": (
            second_text(
                '"email": "ada@example.com"',
                '"email": "ada@example.com", "email": "eve@example.com"',
            ),
            'clients[0].email: duplicate key "email" in an object (JSON would keep only the last)',
        ),
        "fee": (
            second_text('"fee_cents": 15000', '"fee_cents": 15000, "fee_cents": 0'),
            'sessions[0].services[0].fee_cents: duplicate key "fee_cents" in an object '
            "(JSON would keep only the last)",
        ),
        "top_level": (
            second_text('"sessions": [', '"sessions": [], "sessions": ['),
            'sessions: duplicate key "sessions" in an object (JSON would keep only the last)',
        ),
    }
    messages = {
        case: refused(loaded, payments, write(tmp_path, text, f"{case}.json"))
        for case, (text, _message) in cases.items()
    }
    assert messages == {case: message for case, (_text, message) in cases.items()}


def test_nul_characters_are_refused_wherever_they_are(
    loaded: Engine, payments: Payments, tmp_path: Path
) -> None:
    cases = {
        "client_name": (
            second_text('"name": "Ada Lin"', '"name": "Ada\\u0000Lin"'),
            "clients[0].name: contains a NUL character (\\u0000)",
        ),
        "diagnosis": (
            second_text('"F41.1"', '"F41.1\\u0000"'),
            "clients[0].diagnoses[0]: contains a NUL character (\\u0000)",
        ),
        "session_id": (
            second_text('"id": "s-2"', '"id": "s-2\\u0000"'),
            "sessions[0].id: contains a NUL character (\\u0000)",
        ),
        "key": (
            second_text('"settings": {}', '"settings": {"x\\u0000": true}'),
            'clients[0].settings["x\\u0000"]: key contains a NUL character',
        ),
    }
    messages = {
        case: refused(loaded, payments, write(tmp_path, text, f"{case}.json"))
        for case, (text, _message) in cases.items()
    }
    assert messages == {case: message for case, (_text, message) in cases.items()}


def test_files_over_the_size_limit_are_refused_before_they_are_read(
    loaded: Engine, payments: Payments, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sparse file of 10 GiB: reading it whole would take long and all the memory.
    huge = tmp_path / "huge.json"
    with huge.open("wb") as file:
        file.truncate(10 * 2**30)
    assert refused(loaded, payments, huge) == (
        "is 10,737,418,240 bytes, over the limit of 52,428,800 bytes "
        "(set BILLING_SCENARIO_MAX_BYTES to change it)"
    )
    assert read.MAX_BYTES == 50 * 2**20

    path = write(tmp_path, second_doc())
    size = path.stat().st_size
    monkeypatch.setenv("BILLING_SCENARIO_MAX_BYTES", str(size - 1))
    assert refused(loaded, payments, path) == (
        f"is {size:,} bytes, over the limit of {size - 1:,} bytes "
        "(set BILLING_SCENARIO_MAX_BYTES to change it)"
    )
    monkeypatch.setenv("BILLING_SCENARIO_MAX_BYTES", "lots")
    assert refused(loaded, payments, path) == (
        "BILLING_SCENARIO_MAX_BYTES='lots' is not a positive whole number of bytes"
    )
    monkeypatch.setenv("BILLING_SCENARIO_MAX_BYTES", str(size))  # at the limit: it loads
    assert load_scenario(path, loaded, payments) == LoadSummary(2, 2, 1, 1, 1)


@pytest.mark.slow
def test_the_cli_refuses_a_hostile_file_with_exit_code_2(
    loaded: Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        second_text(
            '"cpt": "90834"', '"cpt": "90834", "modifiers": ' + "[" * 10_000 + "]" * 10_000
        ),
        "deep.json",
    )
    before = snapshot(loaded)
    result = CliRunner().invoke(main, ["scenario", "load", str(path)], env=cli_env)
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"Error: {path}: sessions[0].services[0].modifiers{'[0]' * 59}: {TOO_DEEP}\n"
    )
    assert snapshot(loaded) == before
