"""Reading a scenario file and checking it against the JSON Schema.

A scenario (../shared/contract/README.md) is refused as a whole when any part of it is wrong:
its shape first (size, nesting depth, integers beyond the INTEGER columns, duplicate keys, NUL
characters: see `strict_json`), then the JSON Schema. The message names the JSON path of the
first bad field in document order, and never echoes personal data or a card number.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from billing_pipeline.scenario import strict_json

PERSONAL_FIELDS = frozenset(
    {"name", "email", "date_of_birth", "diagnoses", "address", "insurance_member_id", "phone"}
)
# Fields whose values are secrets.
SECRET_FIELDS = frozenset({"card"})
PERSONAL = "(value withheld: personal data)"
SECRET = "(value withheld)"

PathPart = str | int
CHUNK = 500

# Limits on the shape of a file, checked before anything else.
MAX_BYTES = 50 * 1024 * 1024  # a larger file is refused before it is read
MAX_BYTES_VARIABLE = "BILLING_SCENARIO_MAX_BYTES"  # overrides MAX_BYTES (tests use it)
MAX_DEPTH = 64  # arrays and objects nested deeper (a scenario needs 5 levels)
# Every integer of a scenario goes into an INTEGER column (db/models.py: units, fee_cents,
# delays, card expiry, ...): 32 bits on PostgreSQL. Anything beyond is refused while parsing,
# never by the database.
INT32_MAX = 2**31 - 1
INTEGER_RANGE = (-(2**31), INT32_MAX)


# --- Errors ----------------------------------------------------------------------------------


class ScenarioError(ValueError):
    """A scenario file that cannot be loaded. `str()` is one line: the JSON path of the first
    bad field and what is wrong with it (values of personal fields and cards withheld)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = " ".join(problem.split())
        super().__init__(f"{path}: {self.problem}" if path else self.problem)


class CardRegistrationError(ScenarioError):
    """Stripe refused a card or did not answer; nothing of the scenario was written."""


def format_path(parts: Sequence[PathPart]) -> str:
    """`["sessions", 3, "services", 0, "cpt"]` -> `sessions[3].services[0].cpt`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part[:40])}]"
    return out or "(document)"


def show(parts: Sequence[PathPart], value: object) -> str:
    """A value as a message may show it: personal data and card numbers are withheld."""
    names = {p for p in parts if isinstance(p, str)}
    if names & PERSONAL_FIELDS:
        return PERSONAL
    if names & SECRET_FIELDS:
        return SECRET
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    return json.dumps(value)


@dataclass(frozen=True)
class Problem:
    parts: tuple[PathPart, ...]
    message: str
    rank: int = 0  # among problems at the same place, the lower rank is reported

    def error(self) -> ScenarioError:
        return ScenarioError(format_path(self.parts), self.message)


def _position(doc: object, parts: Sequence[PathPart]) -> tuple[int, ...]:
    """Where a path is in the document as written: keys in file order, then array indexes.
    A field that is missing sorts after the fields its object has."""
    key: list[int] = []
    node: object = doc
    for part in parts:
        if isinstance(node, dict) and part in node:
            key.append(list(node).index(part))
            node = node[part]
        elif isinstance(node, dict):
            key.append(len(node))
            node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            key.append(part)
            node = node[part]
        else:
            key.append(0)
            node = None
    return tuple(key)


def first_problem(doc: object, problems: Iterable[Problem]) -> Problem | None:
    ordered = sorted(
        enumerate(problems), key=lambda ip: (_position(doc, ip[1].parts), ip[1].rank, ip[0])
    )
    return ordered[0][1] if ordered else None


# --- Reading the file ------------------------------------------------------------------------


def max_bytes() -> int:
    """The largest scenario file read: BILLING_SCENARIO_MAX_BYTES, else MAX_BYTES."""
    raw = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not raw:
        return MAX_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ScenarioError(
            "", f"{MAX_BYTES_VARIABLE}={raw[:40]!r} is not a positive whole number of bytes"
        )
    return limit


def _too_big(size: int | None, limit: int) -> ScenarioError:
    measured = f"is {size:,} bytes, over" if size is not None else "is over"
    return ScenarioError(
        "", f"{measured} the limit of {limit:,} bytes (set {MAX_BYTES_VARIABLE} to change it)"
    )


def read_scenario(path: Path) -> object:
    """The parsed JSON of a scenario file; ScenarioError when it cannot be read or parsed, or
    has a shape a scenario must not have (see `strict_json`): too big, nested too deep,
    integers out of the database's range, duplicate keys, NUL characters."""
    limit = max_bytes()
    try:
        with Path(path).open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > limit:  # refused before reading it
                raise _too_big(size, limit)
            data = file.read(limit + 1)  # the size may be unknown (a pipe) or may have grown
    except FileNotFoundError:
        raise ScenarioError("", "no such file") from None
    except IsADirectoryError:
        raise ScenarioError("", "is a directory, not a scenario file") from None
    except OSError as err:
        raise ScenarioError("", f"cannot be read ({err.strerror or type(err).__name__})") from None
    if len(data) > limit:
        raise _too_big(None, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError("", "is not UTF-8 text") from None
    try:
        return strict_json.loads(text, max_depth=MAX_DEPTH, int_range=INTEGER_RANGE)
    except json.JSONDecodeError as err:
        # err.msg describes the syntax only; the document's text is not repeated.
        raise ScenarioError(
            "", f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    except strict_json.StrictJSONError as err:
        raise ScenarioError(format_path(err.parts), err.problem) from None


# --- The schema ------------------------------------------------------------------------------

_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


def _is_email(instance: object) -> bool:
    """Stricter than jsonschema's default (which only wants an '@'): a local part, one '@',
    and a domain with a dot; no spaces. Documents are delivered to this address."""
    if not isinstance(instance, str):
        return True
    return _EMAIL.fullmatch(instance) is not None


@cache
def scenario_schema() -> dict[str, Any]:
    """The contract's scenario schema, shipped with the package."""
    text = resources.files("billing_pipeline").joinpath("scenario/schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def changes_schema() -> dict[str, Any]:
    """A file of further changes (`billing-pipeline changes apply`): `{"changes": [...]}`,
    each change as the scenario schema has it."""
    scenario = scenario_schema()
    return {
        "$schema": scenario["$schema"],
        "title": "Billing automation changes",
        "type": "object",
        "required": ["changes"],
        "additionalProperties": False,
        "properties": {
            "description": {"type": "string"},
            "changes": scenario["properties"]["changes"],
        },
        "$defs": scenario["$defs"],
    }


@cache
def _validator(kind: str = "scenario") -> Draft202012Validator:
    checker = FormatChecker(["date-time", "date", "email"])
    checker.checks("email")(_is_email)
    schema = scenario_schema() if kind == "scenario" else changes_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=checker)


_RANK = {
    "type": 0,
    "required": 1,
    "additionalProperties": 2,
    "enum": 3,
    "const": 3,
    "pattern": 4,
    "format": 5,
}


def _instant_problem(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return "is not an ISO 8601 date-time with a UTC offset"
    if parsed.tzinfo is None:
        return "has no UTC offset"
    return "is not an ISO 8601 date-time with a UTC offset"


# What a broken JSON Schema rule means, in words (`shown` is the value as quoted back).
RULE_MESSAGES: dict[str, Callable[[str, Any], str]] = {
    "enum": lambda shown, rule: f"{shown} is not one of {', '.join(json.dumps(v) for v in rule)}",
    "const": lambda shown, rule: f"{shown} is not {json.dumps(rule)}",
    "pattern": lambda shown, rule: f"{shown} does not match {rule}",
    "minimum": lambda shown, rule: f"{shown} is less than the minimum of {rule}",
    "maximum": lambda shown, rule: f"{shown} is greater than the maximum of {rule}",
    "exclusiveMinimum": lambda shown, rule: f"{shown} is not greater than {rule}",
    "exclusiveMaximum": lambda shown, rule: f"{shown} is not less than {rule}",
    "minLength": lambda _s, rule: (
        "must not be empty" if rule == 1 else f"is shorter than {rule} characters"
    ),
    "maxLength": lambda _s, rule: f"is longer than {rule} characters",
    "minItems": lambda _s, rule: f"has fewer than {rule} items",
    "maxItems": lambda _s, rule: f"has more than {rule} items",
    "uniqueItems": lambda _s, _rule: "has duplicate items",
    "minProperties": lambda _s, rule: f"has fewer than {rule} fields",
}


def _format_problem(rule: str, value: object) -> str:
    if rule == "date-time" and isinstance(value, str):
        return _instant_problem(value)
    return {
        "date": "is not a date (YYYY-MM-DD)",
        "email": "is not an email address",
    }.get(rule, f"is not a valid {rule}")


def _describe(err: ValidationError) -> list[Problem]:
    """Our own words for a schema error: jsonschema's messages repeat whole values."""
    parts = tuple(err.absolute_path)
    value = err.instance
    shown = show(parts, value)
    # Any, not Any | Unset: every error iter_errors yields has its rule's value set.
    rule: Any = err.validator_value
    rank = _RANK.get(str(err.validator), 9)
    kind = err.validator
    if kind == "required" and isinstance(value, dict):
        return [
            Problem((*parts, name), "required field is missing", rank)
            for name in rule
            if name not in value
        ]
    if kind == "additionalProperties" and isinstance(value, dict):
        # An additionalProperties error comes from an object schema, a mapping.
        allowed = set(cast(Mapping[str, Any], err.schema).get("properties", {}))
        return [
            Problem((*parts, name), "unknown field (not in the scenario schema)", rank)
            for name in value
            if name not in allowed
        ]
    if kind in ("anyOf", "oneOf") and err.context and isinstance(value, dict):
        branch = _branch_of_kind(rule, value)
        if branch is not None:  # a change: judged by the form its `kind` names
            return [
                p
                for sub in err.context
                if sub.relative_schema_path and sub.relative_schema_path[0] == branch
                for p in _describe(sub)
            ]
        kinds = _kinds(rule)
        if kinds:
            if "kind" not in value:
                return [Problem((*parts, "kind"), "required field is missing", 1)]
            listed = ", ".join(json.dumps(k) for k in kinds)
            return [Problem((*parts, "kind"), f"{show((), value['kind'])} is not one of {listed}")]
    if kind == "oneOf" and not err.context and isinstance(value, dict):
        alone = [
            b["required"][0] for b in rule if list(b) == ["required"] and len(b["required"]) == 1
        ]
        if len(alone) == len(rule):
            named = [name for name in alone if name in value]
            return [Problem(parts, f"names {' and '.join(named)}: give exactly one of them", rank)]
    if kind in ("anyOf", "oneOf") and err.context:
        if all(sub.validator == "type" for sub in err.context):
            types = " or ".join(str(sub.validator_value) for sub in err.context)
            return [Problem(parts, f"{shown} is not of type {types}", rank)]
        deepest = [sub for sub in err.context if sub.validator != "type"]
        return _describe(deepest[0])
    if kind == "type":
        types = " or ".join(rule) if isinstance(rule, list) else str(rule)
        message = f"{shown} is not of type {types}"
    elif kind == "format":
        message = f"{shown} {_format_problem(rule, value)}"
    elif kind in RULE_MESSAGES:
        message = RULE_MESSAGES[kind](shown, rule)
    else:
        message = f"{shown} breaks the schema rule {kind!r}"
    return [Problem(parts, message, rank)]


def _kinds(branches: Any) -> list[str]:
    """The `kind` constants of a oneOf's branches (the forms of a change), if it has them."""
    if not isinstance(branches, list):
        return []
    found = []
    for branch in branches:
        const = (branch.get("properties") or {}).get("kind", {}).get("const")
        if isinstance(const, str):
            found.append(const)
    return found if len(found) == len(branches) else []


def _branch_of_kind(branches: Any, value: Mapping[str, Any]) -> int | None:
    kinds = _kinds(branches)
    if kinds and value.get("kind") in kinds:
        return kinds.index(value["kind"])
    return None


def schema_problem(doc: object, kind: str = "scenario") -> Problem | None:
    """The first schema error in document order, if any (`kind`: "scenario" or "changes")."""
    problems = [p for err in _validator(kind).iter_errors(doc) for p in _describe(err)]
    return first_problem(doc, problems)


def check_schema(doc: object, kind: str = "scenario") -> None:
    """Raise ScenarioError for the first place, in document order, that breaks the schema."""
    problem = schema_problem(doc, kind)
    if problem is not None:
        raise problem.error()
