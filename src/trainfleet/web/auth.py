"""The dashboard's token: where it lives, and the Bearer check on every state-changing endpoint.

The token is 32 random bytes (URL-safe base64) in ``$TRAINFLEET_HOME/token``, created with mode 0600 and
never rewritten while it exists. A request that changes state must carry ``Authorization: Bearer <token>``:
without the header (or with another scheme) it gets 401, with a wrong token 403. The comparison is
constant-time.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from fastapi import HTTPException, Request, status

from trainfleet.errors import InputError

TOKEN_FILE = "token"
_TOKEN_BYTES = 32


def load_or_create_token(home: Path) -> str:
    """The token in ``home/token``; a new one is written (0600, exclusively) when the file is missing.

    Raises ``InputError`` naming the file when it is empty, unreadable, or readable by other users.
    """
    path = Path(home) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _read_token(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(f"cannot read the dashboard token: {exc.strerror}", path=str(path)) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError("the dashboard token is readable by other users; chmod 600 it", path=str(path))
    if not text:
        raise InputError("the dashboard token file is empty; delete it to get a new token", path=str(path))
    return text


def check_bearer(request: Request, token: str) -> None:
    """Raise 401 when ``request`` carries no Bearer token, 403 when it carries a wrong one."""
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "this action needs Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong token")


def require_token(request: Request) -> None:
    """FastAPI dependency: the app's token (``app.state.token``) must be presented as a Bearer token."""
    check_bearer(request, request.app.state.token)
