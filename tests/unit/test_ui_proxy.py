"""The UI proxy's credentials and sessions (billing_pipeline/ui_proxy.py), without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing_pipeline.ui_proxy import (
    User,
    _safe_next,
    add_user,
    check_password,
    hash_password,
    make_session,
    read_users,
    session_user,
)

SECRET = b"s" * 40


def test_a_password_matches_its_hash_and_nothing_else() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("pbkdf2_sha256$")
    assert "correct horse" not in stored
    assert check_password("correct horse", stored)
    assert not check_password("correct hors", stored)
    assert not check_password("correct horse", "plain-text")


def test_a_session_names_its_user_until_it_expires_and_cannot_be_forged() -> None:
    ana = User("ana", hash_password("pw"), "analyst")
    users = {"ana": ana}
    cookie = make_session(SECRET, ana, hours=1)
    assert session_user(SECRET, cookie, users) == ana
    assert session_user(b"another secret" * 3, cookie, users) is None
    payload, signature = cookie.rsplit(".", 1)
    assert session_user(SECRET, f"{payload}x.{signature}", users) is None
    assert session_user(SECRET, make_session(SECRET, ana, hours=-1), users) is None
    assert session_user(SECRET, cookie, {}) is None  # a user removed from the file
    assert session_user(SECRET, None, users) is None


def test_the_users_file_is_private_and_refuses_unknown_roles(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "fin", "pw", "finance")
    add_user(path, "fin", "pw2", "finance")  # replaced, not duplicated
    assert path.stat().st_mode & 0o777 == 0o600
    users = read_users(path)
    assert list(users) == ["fin"]
    assert check_password("pw2", users["fin"].password_hash)
    with pytest.raises(ValueError, match="role"):
        add_user(path, "eve", "pw", "admin")
    path.write_text("eve:hash:admin\n")
    with pytest.raises(ValueError, match=r"users:1"):
        read_users(path)


@pytest.mark.parametrize(
    ("asked", "sent"),
    [("/runs", "/runs"), ("//evil.example", "/"), ("https://evil.example", "/"), ("", "/")],
)
def test_after_login_only_a_path_of_this_site_is_followed(asked: str, sent: str) -> None:
    assert _safe_next(asked) == sent
