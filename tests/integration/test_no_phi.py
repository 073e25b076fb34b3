"""No PHI reaches Dagster or the CLI's logs: a scenario rich in personal data is loaded and
simulated through the CLI, then everything Dagster kept and everything the CLI printed is
searched for every client name, email, date of birth and diagnosis of the scenario.

What is searched (the "haystack"):

- stdout and stderr of `scenario load`, `simulate` and `report --json` (the report is ids,
  amounts and instants only: report.schema.json). `simulate` runs with Dagster's console
  logger at DEBUG (the CLI has no flag for it: the same click command runs in a subprocess
  with `billing_pipeline.simulate.QUIET_LOGS` patched), so every engine event is printed.
  Python's own logging is left as the CLI sets it: turning the root logger to DEBUG would
  make SQLAlchemy echo query parameters, which no deployment does.
- `explain`'s stderr, for every client. Its stdout is for staff and names people on purpose,
  as first name and initial ("Mina P.", tests/integration/test_explain.py), so it is searched
  only for what it never shows: full names, emails, dates of birth, diagnoses, cards.
- the Dagster instance, opened with `DagsterInstance.from_config(DAGSTER_HOME)`: every run
  (tags, run config, the whole serialised run), every event of every run (serialised, plus
  its message, materialisation metadata, asset check evaluations and any error with its
  stack trace), every materialisation record of every asset key;
- every file under DAGSTER_HOME as text (the SQLite run, event and schedule storages, compute
  logs), bytes decoded with errors="ignore", and the same with JSON's \\uXXXX escapes undone
  (serialised events escape non-ASCII letters); the data folder (BILLING_DATA_DIR) likewise.

What is searched for (the "needles"), all derived from the scenario file itself:

- client and billing contact names, whole (case-insensitive, any whitespace between words);
- each part of a name of 4 letters or more as a whole word, case-sensitive as written.
  Shorter parts ("Ray", "Zoe", "Ana") are left out: they are too often inside other words.
  Parts that are a word of the product's own source text are left out too ("Client",
  "Settings", "Share", "Field", "Park"... in fixture names such as "Client Before" or
  "Oscar Field"): the product may print them as vocabulary. The whole name is still searched.
- emails (case-insensitive, and URL-encoded);
- dates of birth as written (ISO) and as other code might render them: 04/12/1988, 12/04/1988,
  1988/04/12, 19880412, April 12, 1988, Apr 12, 1988, datetime.date(1988, 4, 12). A date of
  birth that is also a date the pipeline legitimately prints (a session or creation date, a
  night of the simulation, the partitions' start date, today) is left out, or it would match
  the partition keys and timestamps.
- diagnoses: the scenario format has ICD-10 codes only (no descriptions: scenario.schema.json),
  searched as whole codes ("F41.1" does not match inside "F41.10"). Upper-case letter, digits
  and a dot: no id, hash or timestamp Dagster writes has that shape.
- client addresses, phone numbers and insurance member ids when the scenario has them, and
  card numbers (secrets, not PHI, but never to be logged either).

The practice's own name, address and provider are not client data and are not searched.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import create_engine, text

from billing_pipeline.partitions import service_dates
from tests.conftest import CONTRACT, SCENARIOS
from tests.contract.runner import cli_in_process, how
from tests.simulated import Simulations, cli, debug_cli, output_of

PACKAGE = Path(__file__).resolve().parents[2] / "billing_pipeline"
# Public contract scenario with billing contacts, two months (superbills, statements), the
# contract's changes over time (a card replaced, settings and services changed), and our own
# richest one: 11 clients, 4 billing contacts, every AutoPay gate.
PHI_SCENARIOS = [
    CONTRACT / "scenarios" / "monthly_billing_contacts.json",
    CONTRACT / "scenarios" / "next" / "changes_over_time.json",
    SCENARIOS / "autopay_gates.json",
]
MIN_NAME_PART = 4

# --- needles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    kind: str  # "name", "name part", "email", "date of birth", "diagnosis", ...
    text: str
    pattern: re.Pattern[str]

    @property
    def probe(self) -> str:
        """A lower-case piece every match contains: a fast `in` before the regex."""
        return self.text.split()[0].lower()


def _literal(kind: str, value: str, ignore_case: bool = False) -> Needle:
    return Needle(kind, value, re.compile(re.escape(value), re.IGNORECASE if ignore_case else 0))


def _word(kind: str, value: str, ignore_case: bool = False) -> Needle:
    words = r"\s+".join(re.escape(w) for w in value.split())
    flags = re.IGNORECASE if ignore_case else 0
    return Needle(kind, value, re.compile(rf"(?<![\w]){words}(?![\w])", flags))


def date_renderings(day: date) -> list[str]:
    return [
        day.isoformat(),
        day.strftime("%m/%d/%Y"),
        day.strftime("%d/%m/%Y"),
        day.strftime("%Y/%m/%d"),
        day.strftime("%Y%m%d"),
        f"{day:%B} {day.day}, {day.year}",
        f"{day:%b} {day.day}, {day.year}",
        f"{day:%B} {day:%d}, {day.year}",
        repr(day),  # datetime.date(1988, 4, 12)
    ]


def legit_dates(doc: dict[str, Any], first: date, last: date) -> set[date]:
    """Dates the pipeline prints without any PHI: every date the scenario's instants fall on
    (a day either side, for zones), every night of the simulation and the days its steps run,
    the partitions' start, and the days around today (log timestamps)."""
    found: set[date] = set()
    raw = json.dumps(doc)
    for match in re.finditer(r"\d{4}-\d{2}-\d{2}T", raw):
        day = date.fromisoformat(match.group(0)[:-1])
        found.update(day + timedelta(days=d) for d in (-1, 0, 1))
    day = first - timedelta(days=1)
    while day <= last + timedelta(days=3):
        found.add(day)
        day += timedelta(days=1)
    found.add(service_dates.start.date())
    today = datetime.now(UTC).date()
    found.update(today + timedelta(days=d) for d in (-1, 0, 1))
    return found


def product_vocabulary() -> set[str]:
    """Every word of the package's source: text the product itself may print."""
    words: set[str] = set()
    for path in PACKAGE.rglob("*"):
        if path.suffix in {".py", ".json", ".yaml", ".ini", ".mako"} and path.is_file():
            words.update(re.findall(r"\w+", path.read_text(errors="ignore")))
    return words


def phi_needles(doc: dict[str, Any], first: date, last: date) -> list[Needle]:
    """The personal data of a scenario, as the strings that must never be printed."""
    vocabulary = product_vocabulary()
    shown_dates = legit_dates(doc, first, last)
    needles: dict[tuple[str, str], Needle] = {}

    def add(needle: Needle) -> None:
        needles[(needle.kind, needle.text)] = needle

    people = [*doc.get("clients", []), *doc.get("billing_contacts", [])]
    for person in people:
        name = person["name"]
        add(_word("name", name, ignore_case=True))
        for part in re.findall(r"[^\W\d_]+(?:['-][^\W\d_]+)*", name):
            if len(part) >= MIN_NAME_PART and part not in vocabulary:
                add(_word("name part", part))
        if person.get("email"):
            email = person["email"]
            add(_literal("email", email, ignore_case=True))
            add(_literal("email", urllib.parse.quote(email, safe=""), ignore_case=True))
        if person.get("date_of_birth"):
            born = date.fromisoformat(person["date_of_birth"])
            if born not in shown_dates:
                for rendering in date_renderings(born):
                    add(_word("date of birth", rendering))
        for code in person.get("diagnoses") or ():
            add(Needle("diagnosis", code, re.compile(rf"(?<![\w.]){re.escape(code)}(?![\w])")))
        for field in ("address", "phone", "insurance_member_id"):
            if person.get(field):
                add(_literal(field.replace("_", " "), person[field], ignore_case=True))
        card = (person.get("payment_method") or {}).get("card")
        if card:
            add(_word("card number", card))
    return list(needles.values())


def hits(needles: Iterable[Needle], haystack: dict[str, str]) -> list[str]:
    """'where: kind 'text' in ...context...' for every needle found."""
    found = []
    for where, content in haystack.items():
        for variant in {content, unescape_json(content)}:
            lowered = variant.lower()
            for needle in needles:
                match = needle.probe in lowered and needle.pattern.search(variant)
                if match:
                    context = variant[max(0, match.start() - 60) : match.end() + 60]
                    found.append(f"{where}: {needle.kind} {needle.text!r} in {context!r}")
    return sorted(set(found))


def unescape_json(content: str) -> str:
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), content)


# --- haystacks -------------------------------------------------------------------------------


def files_under(root: Path, skip: Iterable[Path] = ()) -> dict[str, str]:
    skipped = {p.resolve() for p in skip}
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.resolve() not in skipped:
            out[f"file {path}"] = path.read_bytes().decode("utf-8", errors="ignore")
    return out


def _plain(value: object) -> str:
    try:
        return dg.serialize_value(value)  # type: ignore[arg-type]  # any value is tried; a non-serdes one raises
    except Exception:  # not a serdes type: its repr keeps every field
        return repr(value)


def instance_haystack(home: Path) -> dict[str, str]:
    """Everything the Dagster instance of `home` kept, one entry per run and per asset."""
    out: dict[str, str] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        out["runs"] = "\n".join(r.job_name for r in runs)
        for run in runs:
            parts = [
                _plain(run),
                json.dumps(dict(run.tags), ensure_ascii=False),
                json.dumps(run.run_config, ensure_ascii=False, default=str),
            ]
            for entry in instance.all_logs(run.run_id):
                parts.extend([_plain(entry), entry.message, entry.user_message or ""])
                event = entry.dagster_event
                if event is None:
                    continue
                data = event.event_specific_data
                parts.append(repr(data))
                metadata = getattr(getattr(data, "materialization", None), "metadata", None)
                metadata = metadata or getattr(data, "metadata", None) or {}
                parts.extend(f"{k}: {v.value!r}" for k, v in metadata.items())
                errors = (getattr(data, "error", None), getattr(event, "error_info", None))
                parts.extend(e.to_string() for e in errors if e is not None)
            out[f"run {run.job_name} {run.run_id}"] = "\n".join(parts)
        for key in instance.get_asset_keys():
            records, cursor, more = [], None, True
            while more:
                page = instance.fetch_materializations(key, limit=1000, cursor=cursor)
                records.extend(page.records)
                cursor, more = page.cursor, page.has_more
            out[f"materializations {key.to_user_string()}"] = "\n".join(_plain(r) for r in records)
    return out


def dagster_and_files(env: dict[str, str]) -> dict[str, str]:
    home = Path(env["DAGSTER_HOME"])
    return {
        **instance_haystack(home),
        **files_under(home),
        **(files_under(Path(env["BILLING_DATA_DIR"])) if env.get("BILLING_DATA_DIR") else {}),
    }


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("scenario", PHI_SCENARIOS, ids=lambda p: p.stem)
def test_no_phi_in_the_instance_or_the_cli_logs(
    scenario: Path, backend: str, simulations: Simulations
) -> None:
    sim = simulations.get(scenario, backend)
    env = sim.env
    needles = phi_needles(sim.doc, sim.first, sim.last)
    kinds = {n.kind for n in needles}
    # Never vacuous: the scenario has people, and each kind of their data is searched.
    assert {"name", "name part", "email", "date of birth", "diagnosis"} <= kinds, kinds
    raw = scenario.read_text()
    assert all(n.pattern.search(raw) for n in needles if n.kind in {"name", "diagnosis"})

    haystack = dict(sim.cli_output)
    assert sim.report["bills"], "the simulation made no bills"
    explained: dict[str, str] = {}
    for client in sim.doc["clients"]:
        done = cli_in_process(env, "explain", client["id"], "--date", sim.last.isoformat())
        assert done.returncode == 0, done.stderr[-2000:]
        haystack[f"explain {client['id']} (stderr)"] = done.stderr
        explained[f"explain {client['id']} (stdout)"] = done.stdout
    stored = dagster_and_files(env)
    haystack.update(stored)

    # The scan reads what it should: the runs are there, with each practice's figures.
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        jobs = {r.job_name for r in instance.get_runs()}
    assert {"nightly_chain_job", "deliver_documents_job"} <= jobs, jobs
    events = "\n".join(v for k, v in stored.items() if k.startswith("run "))
    materializations = "\n".join(v for k, v in stored.items() if k.startswith("materializations"))
    for account in sim.doc["accounts"]:
        assert account["id"] in events and account["id"] in materializations, account["id"]
    assert any(k.startswith("file ") and k.endswith(".db") for k in stored), sorted(stored)

    assert hits(needles, haystack) == []
    # explain's stdout names people as "First L." for staff; nothing else personal.
    not_for_staff = [n for n in needles if n.kind not in {"name part"}]
    assert hits(not_for_staff, explained) == []


@pytest.mark.slow
def test_the_scan_finds_phi_planted_in_an_instance(tmp_path: Path) -> None:
    """The scan is not blind: PHI written by a run (a log line, materialisation metadata,
    a tag, a step failure) is found in the instance and in DAGSTER_HOME's files, non-ASCII
    names included (serialised events escape them as \\uXXXX)."""
    doc = {
        "clients": [
            {
                "name": "José Núñez",
                "email": "jose@example.com",
                "date_of_birth": "1979-03-14",
                "diagnoses": ["F43.23"],
            }
        ]
    }
    needles = phi_needles(doc, date(2026, 11, 1), date(2026, 11, 2))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    @dg.asset
    def leaky(context):  # type: ignore[no-untyped-def]  # (a string annotation: refused)
        context.log.info("billing José Núñez")
        who = dg.MetadataValue.json({"e": "jose@example.com"})
        return dg.MaterializeResult(metadata={"who": who})

    @dg.asset(deps=[leaky])
    def failing() -> None:
        raise ValueError("Invalid isoformat string: '03/14/1979' (F43.23)")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        dg.materialize([leaky, failing], instance=instance, raise_on_error=False)
    found = hits(
        needles,
        dagster_and_files({"DAGSTER_HOME": str(home), "BILLING_DATA_DIR": str(tmp_path / "data")}),
    )
    where = {line.split(": ", 1)[0].split(" ", 1)[0] for line in found}
    kinds = {n.kind for n in needles if any(f" {n.kind} {n.text!r} " in line for line in found)}
    assert where == {"run", "materializations", "file"}, found
    assert kinds == {"name", "name part", "email", "date of birth", "diagnosis"}, found


# --- a practice whose night fails ------------------------------------------------------------

BROKEN_SCENARIO = SCENARIOS / "autopay_gates.json"


def break_a_practice(database_url: str, doc: dict[str, Any]) -> str:
    """Corrupt one practice's data the way an old import could; returns its account id.

    Its timezone is not a zone, so its nights fail in every step (as in
    test_practice_isolation). On SQLite one of its clients also gets a date of birth in US
    format: SQLite keeps dates as text and SQLAlchemy cannot parse it back (`ValueError:
    Invalid isoformat string: '05/25/1975'`, a message that quotes the date of birth). The
    nightly rules never read that column; `explain` does, and must not print the message.
    PostgreSQL cannot hold such a date.
    """
    account = doc["accounts"][-1]["id"]
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE accounts SET timezone = 'Mars/Olympus_Mons' WHERE id = :id"),
                {"id": account},
            )
            if database_url.startswith("sqlite"):
                client = next(
                    c for c in doc["clients"] if c["account_id"] == account and c["date_of_birth"]
                )
                born = date.fromisoformat(client["date_of_birth"])
                conn.execute(
                    text("UPDATE clients SET date_of_birth = :dob WHERE id = :id"),
                    {"dob": born.strftime("%m/%d/%Y"), "id": client["id"]},
                )
        return str(account)
    finally:
        engine.dispose()


def failed_checks(home: Path) -> dict[str, dict[str, str]]:
    """{asset: failed_practices} of the `every_practice_done` evaluations that did not pass."""
    out: dict[str, dict[str, str]] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            for entry in instance.all_logs(
                run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            ):
                data = entry.dagster_event.event_specific_data  # type: ignore[union-attr]  # a check evaluation's log entry always has its event
                if data.check_name == "every_practice_done" and not data.passed:
                    failed = data.metadata["failed_practices"].value
                    out[data.asset_key.to_user_string()] = failed
    return out


@pytest.mark.slow
def test_a_failing_practice_night_leaves_no_phi_in_dagster(
    cli_env: dict[str, str], database_url: str
) -> None:
    doc = json.loads(BROKEN_SCENARIO.read_text())
    first, last = how(json.loads(BROKEN_SCENARIO.with_suffix(".expected.json").read_text()))
    loaded = cli(cli_env, "scenario", "load", str(BROKEN_SCENARIO))
    assert loaded.returncode == 0, output_of(loaded)
    broken = break_a_practice(database_url, doc)
    simulated = debug_cli(cli_env, "simulate", "--from", first, "--to", last)
    # The other practice went on; the steps' checks name the broken one. Its AutoPay could
    # not run either, so the run fails once the others are done, and simulate says which.
    assert simulated.returncode == 1, output_of(simulated)[-3000:]
    assert f"failed check autopay_attempts.every_practice_done: failed: {broken} (" in (
        simulated.stderr
    )
    failed = failed_checks(Path(cli_env["DAGSTER_HOME"]))
    assert "bills" in failed and set(failed["bills"]) == {broken}, failed
    assert set(failed["autopay_attempts"]) == {broken}, failed
    assert f"practice {broken} night" in simulated.stderr

    needles = phi_needles(doc, date.fromisoformat(first), date.fromisoformat(last))
    haystack = {
        "scenario load": output_of(loaded),
        "simulate (DEBUG)": output_of(simulated),
        **dagster_and_files(cli_env),
    }
    assert hits(needles, haystack) == []


@pytest.mark.slow
def test_the_cli_does_not_quote_a_row_it_cannot_read(
    cli_env: dict[str, str], database_url: str
) -> None:
    """`report` and `explain` on the broken practice: whatever they print on stderr must not
    quote the row (the CLI reports an unexpected error by its type and place only, and the
    nightly rules never read a client's personal columns)."""
    doc = json.loads(BROKEN_SCENARIO.read_text())
    first, last = how(json.loads(BROKEN_SCENARIO.with_suffix(".expected.json").read_text()))
    loaded = cli(cli_env, "scenario", "load", str(BROKEN_SCENARIO))
    assert loaded.returncode == 0, output_of(loaded)
    broken = break_a_practice(database_url, doc)

    report = cli(cli_env, "report", "--json")
    assert report.returncode == 0, report.stderr  # the report reads no personal column
    haystack = {"report --json": output_of(report)}
    for client in doc["clients"]:
        if client["account_id"] == broken:
            done = cli(cli_env, "explain", client["id"], "--date", last)
            # It either answers or names the error's type and place, without its message.
            assert done.returncode == 0 or "the message is withheld" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
            haystack[f"explain {client['id']} (stderr)"] = done.stderr
    needles = phi_needles(doc, date.fromisoformat(first), date.fromisoformat(last))
    assert hits(needles, haystack) == []
