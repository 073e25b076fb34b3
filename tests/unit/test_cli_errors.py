"""The CLI reports an unexpected error by its type and where it arose, never by its message
(a database error can quote a row), and exits 1."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from billing_pipeline.cli import main


@pytest.fixture
def failing_command() -> Iterator[str]:
    @click.command("explode")
    def explode() -> None:
        raise ValueError("Invalid isoformat string: '01/01/1981' for Ada Lin")

    main.add_command(explode)
    yield "explode"
    main.commands.pop("explode")


def test_an_unexpected_error_names_its_type_and_place_not_its_message(
    failing_command: str,
) -> None:
    result = CliRunner().invoke(main, [failing_command])
    assert result.exit_code == 1
    assert "error: ValueError at" in result.output
    assert "tests" not in result.output.split("error: ValueError at", 1)[1].split()[0]
    assert "1981" not in result.output and "Ada" not in result.output
    assert "the message is withheld" in result.output


def test_bad_input_still_says_the_field_and_value() -> None:
    result = CliRunner().invoke(main, ["simulate", "--from", "2026-13-01", "--to", "2026-12-01"])
    assert result.exit_code == 2
    assert "--from: '2026-13-01' is not a date (YYYY-MM-DD)" in result.output
