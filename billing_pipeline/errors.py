"""Errors whose message may be shown anywhere: CLI output, Dagster logs, asset checks.

Every other exception is reported by its type only (a database or validation error can quote
a row: a name, a birth date). A `SafeMessageError` is built by our own code from what is never
PHI (a setting's name and value, a table name, a timeout, a host and port), so its message is
shown as it is.
"""

from __future__ import annotations


class SafeMessageError(Exception):
    """An error whose message carries no PHI. `exit_code` is the CLI's exit code for it."""

    exit_code = 1


class SettingError(SafeMessageError):
    """A setting (an environment variable) has a value we cannot use: bad input, exit 2."""

    exit_code = 2
