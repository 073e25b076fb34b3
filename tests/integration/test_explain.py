"""`explain` answers for every client of the public scenarios, in words staff understand."""

from __future__ import annotations

import pytest

from tests.conftest import CONTRACT
from tests.contract.runner import cli, cli_in_process
from tests.simulated import Simulations

SCENARIOS = CONTRACT / "scenarios"


def _explain(env: dict[str, str], client_id: str, night: str) -> str:
    done = cli_in_process(env, "explain", client_id, "--date", night)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_explain_monthly_billing_contacts(backend: str, simulations: Simulations) -> None:
    cli_env = simulations.get(SCENARIOS / "monthly_billing_contacts.json", backend).env

    lily = _explain(cli_env, "cl-lily", "2026-10-31")
    assert "monthly: one bill per client on the last night of the month" in lily
    assert "This night makes bills." in lily
    assert "s-lily-1005 on 2026-10-05: billed tonight" in lily
    assert "Bills are shared with the billing contact Maria C. 2 hours after they are made." in lily
    assert "AutoPay will charge the billing contact Maria C. on the visa card ending 4242" in lily
    assert "$320.00 from the billing contact: charged successfully" in lily
    assert "Maria Chen" not in lily  # short names only

    omar = _explain(cli_env, "cl-omar", "2026-10-31")
    assert "AutoPay: AutoPay is off for the billing contact Acme E." in omar
    assert "Acme E.." not in omar
    assert "AutoPay attempts" not in omar

    rosa = _explain(cli_env, "cl-rosa", "2026-11-30")
    assert "The card of the client Rosa S. expired (visa ending 4242, 10/2026)" in rosa
    assert "s-rosa-1109 on 2026-11-09: not billed: the session was not attended" in rosa
    assert "s-rosa-1102 on 2026-11-02: billed tonight" in rosa

    early = _explain(cli_env, "cl-rosa", "2026-11-15")
    assert "This night makes no bills." in early
    assert "s-rosa-1102 on 2026-11-02: billed by the night of 2026-11-30" in early


@pytest.mark.slow
def test_explain_daily_autopay_and_sharing_defaults(backend: str, simulations: Simulations) -> None:
    cli_env = simulations.get(SCENARIOS / "daily_autopay.json", backend).env
    ana = _explain(cli_env, "cl-ana", "2026-11-03")
    assert "daily: every night bills that day's sessions, one bill each" in ana
    assert "AutoPay will charge the client Ana T." in ana
    assert "Superbills: on in the client's settings" in ana
    ben = _explain(cli_env, "cl-ben", "2026-11-03")
    assert "AutoPay is off in the client's Billing Settings" in ben
    assert (
        "s-ben-imported on 2026-11-03: not billed: no service on the session has a CPT code; "
        "flagged for staff: imported from another EHR without CPT codes"
    ) in ben

    cli_env = simulations.get(SCENARIOS / "sharing_defaults.json", backend).env
    late = _explain(cli_env, "cl-late", "2026-11-20")
    assert "Bills are not shared automatically." in late
    own = _explain(cli_env, "cl-own", "2026-11-20")
    assert "Bills are shared with the client 30 minutes after they are made." in own
    excluded = _explain(cli_env, "cl-excluded", "2026-11-20")
    assert "off: this client is left out of automatic bills" in excluded
    assert "client is left out of automatic bills (auto_bill is off)" in excluded
    manual = _explain(cli_env, "cl-manual", "2026-11-20")
    assert "manual: staff create bills by hand; automation makes none" in manual


@pytest.mark.slow
def test_explain_unknown_client_is_bad_input(cli_env: dict[str, str]) -> None:
    done = cli(cli_env, "explain", "cl-nobody")
    assert done.returncode == 2
    assert "client_id: no client 'cl-nobody'" in done.stderr


@pytest.mark.slow
def test_every_public_client_is_explained(backend: str, simulations: Simulations) -> None:
    for scenario in sorted(SCENARIOS.glob("*.json")):
        if scenario.name.endswith(".expected.json"):
            continue
        sim = simulations.get(scenario, backend)
        for client in sim.doc["clients"]:
            text = _explain(sim.env, client["id"], "2026-11-01")
            assert text.startswith(f"Client {client['id']} (")
            assert "AutoPay:" in text and "Bill creation:" in text
