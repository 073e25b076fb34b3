"""The Dagster UI behind a login: a small authenticating reverse proxy (aiohttp).

Open-source Dagster has no login (dagster-io/dagster issue 2219): whoever reaches the
webserver's port may read every run and launch backfills. The webservers therefore listen on
loopback only, and this proxy is the one way in. Every request needs a session; a browser
without one is sent to `/login` (303), anything else gets 401. A session is a cookie signed
with HMAC-SHA256 (`BILLING_UI_SESSION_SECRET`), HttpOnly and SameSite=Strict, valid for
`BILLING_UI_SESSION_HOURS` (default 8). Users and their PBKDF2-SHA256 password hashes are in
a file (`billing-pipeline ui user-add`), each with a role:

- `analyst`: proxied to the writable webserver (backfills, re-executions);
- `finance`: proxied to the read-only one (`dagster-webserver --read-only`), which refuses
  every mutation (launchPartitionBackfill answers UnauthorizedError).

Every request is logged (user, role, method, path, GraphQL operation, status) to the
`billing_pipeline.ui_access` logger: with Dagster OSS recording no user on a run, this log
is the record of who launched what. In production put this (or nginx with `auth_request` to the
practice's identity provider, deploy/README.md) behind TLS and set `--secure-cookies`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

log = logging.getLogger("billing_pipeline.ui_access")

ROLES = ("analyst", "finance")
COOKIE = "billing_ui_session"
PBKDF2_ITERATIONS = 310_000
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=300, connect=10)
# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
    "cookie",
}


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    role: str


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    again = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    return hmac.compare_digest(again.hex(), digest)


def read_users(path: Path) -> dict[str, User]:
    """`name:hash:role` per line; blank lines and `#` comments ignored."""
    users: dict[str, User] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or parts[2] not in ROLES:
            raise ValueError(f"{path}:{number}: expected name:hash:role with role in {ROLES}")
        users[parts[0]] = User(*parts)
    return users


def add_user(path: Path, name: str, password: str, role: str) -> None:
    """Add or replace `name` in the users file (made readable by its owner only)."""
    if role not in ROLES or not name or ":" in name:
        raise ValueError(f"a user needs a name without ':' and a role in {ROLES}")
    users = read_users(path) if path.exists() else {}
    users[name] = User(name, hash_password(password), role)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("".join(f"{u.name}:{u.password_hash}:{u.role}\n" for u in users.values()))


def _sign(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def make_session(secret: bytes, user: User, hours: float) -> str:
    payload = base64.urlsafe_b64encode(
        json.dumps({"u": user.name, "exp": int(time.time() + hours * 3600)}).encode()
    ).decode()
    return f"{payload}.{_sign(secret, payload)}"


def session_user(secret: bytes, cookie: str | None, users: dict[str, User]) -> User | None:
    if not cookie or "." not in cookie:
        return None
    payload, signature = cookie.rsplit(".", 1)
    if not hmac.compare_digest(_sign(secret, payload), signature):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return None
    if not isinstance(data, dict) or int(data.get("exp", 0)) < time.time():
        return None
    return users.get(str(data.get("u")))


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Sign in</title></head>
<body><h1>Billing pipeline: sign in</h1>{error}
<form method="post" action="/login"><input type="hidden" name="next" value="{next}">
<label>User <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
required></label><button type="submit">Sign in</button></form></body></html>"""


@dataclass(frozen=True)
class ProxyConfig:
    users_file: Path
    secret: bytes
    upstreams: dict[str, str]  # role -> base URL of its webserver
    session_hours: float = 8.0
    secure_cookies: bool = False


def _safe_next(value: str) -> str:
    # Only a path on this site: never an absolute URL (an open redirect).
    return value if value.startswith("/") and not value.startswith("//") else "/"


def make_app(config: ProxyConfig) -> web.Application:
    """The proxy: `/login`, `/logout`, and everything else proxied for a signed-in user."""
    app = web.Application(client_max_size=64 * 1024**2)
    client_key = web.AppKey("client", aiohttp.ClientSession)

    async def start(app: web.Application) -> None:
        app[client_key] = aiohttp.ClientSession(
            timeout=UPSTREAM_TIMEOUT, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )

    async def stop(app: web.Application) -> None:
        await app[client_key].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

    def users() -> dict[str, User]:
        return read_users(config.users_file)  # read each time: an edit takes effect at once

    async def login_form(request: web.Request) -> web.Response:
        page = LOGIN_PAGE.format(error="", next=_html(_safe_next(request.query.get("next", "/"))))
        return web.Response(text=page, content_type="text/html")

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        name, password = str(form.get("username", "")), str(form.get("password", ""))
        user = users().get(name)
        if user is None or not check_password(password, user.password_hash):
            log.warning("login refused user=%s from=%s", name[:64], request.remote)
            page = LOGIN_PAGE.format(error="<p>Wrong user or password.</p>", next="/")
            return web.Response(status=401, text=page, content_type="text/html")
        log.info("login user=%s role=%s from=%s", user.name, user.role, request.remote)
        response = web.HTTPSeeOther(_safe_next(str(form.get("next", "/"))))
        response.set_cookie(
            COOKIE,
            make_session(config.secret, user, config.session_hours),
            max_age=int(config.session_hours * 3600),
            httponly=True,
            samesite="Strict",
            secure=config.secure_cookies,
            path="/",
        )
        raise response

    async def logout(request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def proxy(request: web.Request) -> web.StreamResponse:
        user = session_user(config.secret, request.cookies.get(COOKIE), users())
        if user is None:
            log.info(
                "refused no-session %s %s from=%s", request.method, request.path, request.remote
            )
            if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                raise web.HTTPSeeOther(f"/login?next={request.path_qs}")
            raise web.HTTPUnauthorized(text="sign in at /login\n")
        upstream = config.upstreams[user.role].rstrip("/") + request.path_qs
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["X-Forwarded-User"] = user.name
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _websocket(request, app[client_key], upstream, headers, user)
        body = await request.read()
        operation = _operation(body) if request.path.startswith("/graphql") else ""
        async with app[client_key].request(
            request.method, upstream, headers=headers, data=body, allow_redirects=False
        ) as answer:
            log.info(
                "user=%s role=%s %s %s%s -> %s",
                user.name,
                user.role,
                request.method,
                request.path,
                f" operation={operation}" if operation else "",
                answer.status,
            )
            response = web.StreamResponse(
                status=answer.status,
                headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP},
            )
            if "Content-Encoding" in answer.headers:
                response.headers["Content-Encoding"] = answer.headers["Content-Encoding"]
            await response.prepare(request)
            async for chunk in answer.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response

    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/logout", logout)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def _websocket(
    request: web.Request,
    client: aiohttp.ClientSession,
    upstream: str,
    headers: dict[str, str],
    user: User,
) -> web.WebSocketResponse:
    """GraphQL subscriptions (live run logs) over a websocket, relayed both ways."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    protocols = [p for p in protocols if p]
    ours = web.WebSocketResponse(protocols=protocols)
    await ours.prepare(request)
    log.info("user=%s role=%s websocket %s", user.name, user.role, request.path)
    keep = {k: v for k, v in headers.items() if not k.lower().startswith("sec-websocket")}
    async with client.ws_connect(
        upstream.replace("http", "ws", 1), headers=keep, protocols=protocols
    ) as theirs:
        tasks = [
            asyncio.ensure_future(_relay(ours, theirs)),
            asyncio.ensure_future(_relay(theirs, ours)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
    await ours.close()
    return ours


_Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _relay(source: _Socket, sink: _Socket) -> None:
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:
            break


def _operation(body: bytes) -> str:
    """The GraphQL operation named in a request body (for the access log), else ''."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if isinstance(data, dict):
        name = data.get("operationName")
        return str(name)[:80] if name else ""
    return ""


def _html(value: str) -> str:
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def serve(config: ProxyConfig, host: str, port: int) -> None:
    web.run_app(make_app(config), host=host, port=port, print=None, access_log=None)
