"""`scenario load` on the embedded default (no BILLING_DATABASE_URL): a scenario with its own
accounts goes into a new database when the embedded one already holds accounts, and the old one
is kept under a dated name; a file of more records for loaded accounts is added; a refused file
moves nothing. Contract scenarios run one after another on the default then each report only
their own world."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from billing_pipeline.cli import main
from billing_pipeline.db.engine import dispose_engines
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.scenario.embedded import accounts_in, self_contained
from tests.conftest import CONTRACT

SCENARIOS = CONTRACT / "scenarios"


def load(data: Path, stripe: LocalStripe, path: Path) -> Result:
    env = {
        "BILLING_DATABASE_URL": None,
        "BILLING_DATA_DIR": str(data),
        "STRIPE_API_KEY": "sk_test_billing_pipeline",
        "STRIPE_API_BASE": stripe.url,
    }
    try:
        return CliRunner().invoke(main, ["scenario", "load", str(path)], env=env)
    finally:
        dispose_engines()


def files(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.name.endswith(".db"))


def test_a_second_scenario_on_the_embedded_default_starts_a_new_database_and_keeps_the_old(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    data = tmp_path / "data"
    embedded = data / "billing.db"
    first = load(data, localstripe, SCENARIOS / "daily_autopay.json")
    assert first.exit_code == 0, first.output
    assert first.stderr == ""
    assert accounts_in(embedded) == ("acct-sunrise",)

    second = load(data, localstripe, SCENARIOS / "sharing_defaults.json")
    assert second.exit_code == 0, second.output
    assert accounts_in(embedded) == ("acct-manual", "acct-prairie")
    [kept] = [name for name in files(data) if name != "billing.db"]
    assert kept.startswith("billing.2") and kept.endswith("Z.db")
    assert accounts_in(data / kept) == ("acct-sunrise",)  # nothing deleted
    assert second.stderr == (
        f"the embedded database already held accounts (acct-sunrise): kept as {data / kept}; "
        "sharing_defaults.json is loaded into a new one (set BILLING_DATABASE_URL to add files "
        "to one database)\n"
    )

    # More clients for an account already loaded: added to the same database.
    more = tmp_path / "more.json"
    client = {"id": "cl-more", "account_id": "acct-prairie", "name": "More Client",
              "created_at": "2026-11-02T15:00:00Z", "settings": {}}  # fmt: skip
    more.write_text(json.dumps({"accounts": [], "clients": [client], "sessions": []}))
    added = load(data, localstripe, more)
    assert added.exit_code == 0, added.output
    assert added.stderr == ""
    assert files(data) == sorted(["billing.db", kept])

    # A new account with a client of an account loaded before: added too (not a world apart).
    account = json.loads((SCENARIOS / "sharing_defaults.json").read_text())["accounts"][0]
    mixed = {"accounts": [{**account, "id": "acct-new"}],
             "clients": [{**client, "id": "cl-more-2"}], "sessions": []}  # fmt: skip
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    added = load(data, localstripe, tmp_path / "mixed.json")
    assert added.exit_code == 0, added.output
    assert files(data) == sorted(["billing.db", kept])
    assert accounts_in(embedded) == ("acct-manual", "acct-new", "acct-prairie")


def test_a_file_is_a_world_of_its_own_when_all_its_records_belong_to_its_accounts() -> None:
    doc = json.loads((SCENARIOS / "monthly_billing_contacts.json").read_text())
    assert self_contained(doc)
    assert not self_contained({**doc, "accounts": []})
    foreign_session = {**doc["sessions"][0], "client_id": "cl-elsewhere"}
    assert not self_contained({**doc, "sessions": [*doc["sessions"], foreign_session]})
    foreign_contact = {**doc["billing_contacts"][0], "account_id": "acct-elsewhere"}
    assert not self_contained({**doc, "billing_contacts": [foreign_contact]})
    change = {"kind": "client_settings", "client_id": "cl-elsewhere", "settings": {}}
    assert not self_contained({**doc, "changes": [change]})
    assert self_contained({**doc, "changes": [{**change, "client_id": doc["clients"][0]["id"]}]})


def test_a_refused_scenario_moves_nothing_and_leaves_no_half_written_database(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    data = tmp_path / "data"
    embedded = data / "billing.db"
    assert load(data, localstripe, SCENARIOS / "daily_autopay.json").exit_code == 0
    before = embedded.read_bytes()

    # Refused by the schema, before anything is opened.
    broken = json.loads((SCENARIOS / "sharing_defaults.json").read_text())
    broken["accounts"][0]["timezone"] = 7
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    # Refused by the checks against the database, after the new database was begun.
    orphan = json.loads((SCENARIOS / "sharing_defaults.json").read_text())
    orphan["clients"][0]["account_id"] = "acct-nowhere"
    (tmp_path / "orphan.json").write_text(json.dumps(orphan))

    for name, field in (("broken.json", "accounts[0].timezone"), ("orphan.json", "clients[0]")):
        refused = load(data, localstripe, tmp_path / name)
        assert refused.exit_code == 2, refused.output
        assert f"{tmp_path / name}: {field}" in refused.stderr
        assert files(data) == ["billing.db"]  # no kept copy, no database being loaded
        assert not any(p.name.startswith("billing.loading") for p in data.iterdir())
        assert accounts_in(embedded) == ("acct-sunrise",)
    assert embedded.read_bytes() == before
