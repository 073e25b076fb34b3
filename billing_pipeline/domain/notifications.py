"""The notification email of a shared document, and when a failed one is tried again.

The email says that a document is waiting in the client portal, names the practice, and links
to the portal: never the client's name, date of birth, diagnosis or an amount, and never the
document itself (an email is not a safe place for health information).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

KIND_WORDS = {"bill": "a bill", "superbill": "a superbill", "statement": "a statement"}
DEFAULT_MAX_EMAIL_ATTEMPTS = 5
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)


@dataclass(frozen=True)
class Notification:
    subject: str
    body: str


def notification(practice_name: str, document_type: str, portal_link: str) -> Notification:
    """The message for one shared document (the practice's name and a portal link only)."""
    what = KIND_WORDS[document_type]
    practice = " ".join(practice_name.split())  # one line: a header cannot be split
    return Notification(
        subject=f"{practice}: a new document in your client portal",
        body=(
            f"Hello,\n\n{practice} has shared {what} with you in the client portal.\n\n"
            f"Sign in to view it: {portal_link}\n\n"
            "For your privacy this email holds no details; they are in the portal.\n"
        ),
    )


def retry_delay(
    failed_attempts: int, first: timedelta = FIRST_RETRY, longest: timedelta = LONGEST_RETRY
) -> timedelta:
    """How long after its `failed_attempts`-th failure an email is tried again: `first` (one
    minute), doubling, at most `longest` (an hour)."""
    if failed_attempts < 1:
        return timedelta(0)
    delay: timedelta = first * 2 ** (failed_attempts - 1)
    return min(delay, longest)


def gives_up(failed_attempts: int, max_attempts: int = DEFAULT_MAX_EMAIL_ATTEMPTS) -> bool:
    """After `max_attempts` failures the email is marked failed and shown to staff."""
    return failed_attempts >= max_attempts
