"""Money is held in whole cents; this is its one way to text (integers only, never a float)."""

from __future__ import annotations


def dollars(cents: int) -> str:
    """`1234567` -> `"$12,345.67"`, `-5` -> `"-$0.05"`."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}${whole:,}.{part:02d}"
