"""Strict JSON for files from outside: what `json.loads` lets through or trips over, refused
with the path of the place.

`json.loads` keeps the last of duplicate keys without a word, accepts NaN and Infinity, makes
integers of any length (and fails with a bare ValueError past 4300 digits), keeps NUL
characters in strings (PostgreSQL's text columns refuse them), and raises RecursionError on
deep nesting. `loads` refuses each of these with StrictJSONError: the path of the first bad
place, as parts (object keys and array indexes), and a message that never quotes the value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

PathPart = str | int


class StrictJSONError(ValueError):
    """A document `loads` refuses: `parts` is the path of the bad place (empty for the
    document itself), `problem` says what is wrong without quoting the value."""

    def __init__(self, parts: Sequence[PathPart], problem: str) -> None:
        self.parts = tuple(parts)
        self.problem = problem
        super().__init__(problem)


@dataclass(frozen=True)
class _Refused:
    """Put in the parsed document where a number cannot be taken; the walk reports it."""

    problem: str


class _DuplicateKeys(dict[str, object]):
    """An object that names a key twice; the walk reports it."""

    def __init__(self, pairs: list[tuple[str, object]], duplicate: str) -> None:
        super().__init__(pairs)
        self.duplicate = duplicate


def loads(text: str, *, max_depth: int, int_range: tuple[int, int]) -> object:
    """Parse `text` as JSON, refusing: nesting of arrays and objects deeper than `max_depth`,
    integers outside `int_range` (inclusive), numbers that are not finite, duplicate keys in
    an object, and NUL characters in strings or keys. Raises json.JSONDecodeError for text
    that is not JSON, StrictJSONError for the rest."""
    low, high = int_range
    digits = max(len(str(low).lstrip("-")), len(str(high)))

    def parse_int(literal: str) -> object:
        # Count the digits before converting: int() of a long literal is slow, and past
        # 4300 digits Python refuses it with a bare ValueError.
        length = len(literal.lstrip("-"))
        if length > digits or not low <= int(literal) <= high:
            return _Refused(f"integer with {length} digits is outside the range {low:,}..{high:,}")
        return int(literal)

    def parse_float(literal: str) -> object:
        value = float(literal)
        return value if math.isfinite(value) else _Refused("number is too large to represent")

    def parse_constant(name: str) -> object:
        return _Refused(f"{name} is not a JSON number")

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                return _DuplicateKeys(pairs, key)
            seen.add(key)
        raise AssertionError("unreachable: fewer keys than pairs means a duplicate")

    try:
        doc = json.loads(
            text,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=parse_constant,
            object_pairs_hook=pairs_hook,
        )
    except RecursionError:
        raise StrictJSONError(too_deep_at(text, max_depth), _too_deep(max_depth)) from None
    _walk(doc, max_depth)
    return doc


def _too_deep(max_depth: int) -> str:
    return f"arrays and objects nested more than {max_depth} levels deep"


def _walk(doc: object, max_depth: int) -> None:
    """Raise for the first refused place, in document order (an object's duplicate key before
    what the object holds)."""
    _check((), doc, max_depth)
    if not isinstance(doc, dict | list):
        return
    # An iterator over each open container's children, with the container's path.
    stack: list[tuple[tuple[PathPart, ...], Iterator[tuple[PathPart, object]]]] = [
        ((), _children(doc))
    ]
    while stack:
        parts, children = stack[-1]
        for key, value in children:
            if isinstance(value, dict | list | str | _Refused):
                _check((*parts, key), value, max_depth)
                if isinstance(value, dict | list):
                    stack.append(((*parts, key), _children(value)))
                    break
        else:
            stack.pop()


def _children(node: dict[str, object] | list[object]) -> Iterator[tuple[PathPart, object]]:
    return iter(node.items()) if isinstance(node, dict) else enumerate(node)


def _check(parts: tuple[PathPart, ...], node: object, max_depth: int) -> None:
    if isinstance(node, str):
        if "\x00" in node:
            raise StrictJSONError(parts, "contains a NUL character (\\u0000)")
    elif isinstance(node, _Refused):
        raise StrictJSONError(parts, node.problem)
    elif isinstance(node, dict | list):
        if len(parts) >= max_depth:
            raise StrictJSONError(parts, _too_deep(max_depth))
        if isinstance(node, _DuplicateKeys):
            raise StrictJSONError(
                (*parts, node.duplicate),
                f"duplicate key {json.dumps(node.duplicate[:40])} in an object "
                "(JSON would keep only the last)",
            )
        if isinstance(node, dict):
            for key in node:
                if "\x00" in key:
                    raise StrictJSONError((*parts, key), "key contains a NUL character")


# A string (escapes and all) or a bracket, colon or comma; other values are skipped.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.DOTALL)


def too_deep_at(text: str, max_depth: int) -> tuple[PathPart, ...]:
    """The path of the first array or object nested deeper than `max_depth`, found by
    scanning the text without building it (json.loads recursed too deeply on it)."""
    kinds: list[str] = []  # "[" or "{" for each open container, outermost first
    parts: list[PathPart] = []  # where in each open container the scan is: index or key
    expecting_key = False
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            if len(kinds) >= max_depth:
                return tuple(parts)
            kinds.append(token)
            parts.append(0 if token == "[" else "?")
            expecting_key = token == "{"
        elif token in ("]", "}"):
            if kinds:
                kinds.pop()
                parts.pop()
            expecting_key = False
        elif token == ",":
            last = parts[-1] if parts else None
            if isinstance(last, int):
                parts[-1] = last + 1
            expecting_key = bool(kinds) and kinds[-1] == "{"
        elif token == ":":
            expecting_key = False
        elif expecting_key:
            parts[-1] = _key(token)
            expecting_key = False
    return ()


def _key(token: str) -> str:
    try:
        key = json.loads(token)
    except ValueError:
        return token[1:-1]
    return key if isinstance(key, str) else token[1:-1]
