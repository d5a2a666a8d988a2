"""API tokens: credentials for scripts, sent as ``Authorization: Bearer <token>`` (RFC 6750 §2.1).

A token is ``lzt_<id>_<secret>``: a public id of 12 hex digits (what ``token list`` shows and
``token revoke`` takes) and 32 random bytes. Only its SHA-256 is stored, in
``<data_dir>/web/api-tokens.json`` (mode 0600, rewritten atomically under ``flock`` on a lock
file beside it), with the user it acts as, a label and its creation time. A plain hash, not
argon2: the token has 256 random bits, so there is nothing to guess offline and checking one
costs a microsecond, which is why no attempt limit applies to them.

Trust: the header is the client's. It is bounded (:data:`MAX_TOKEN_LENGTH`) before anything is
hashed; the id only selects the entry, and the whole token's hash is compared with
``hmac.compare_digest`` (an unknown id is compared against a dummy, so the answer takes the
same path). The file is ours, written by ``lanalyze web token`` and read by every console
process: each stats it on a bearer request and reloads it when it was replaced, so a new or
revoked token counts at once, without a restart. A file that cannot be read is logged and
treated as empty: every token fails until it is fixed (fail closed).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from lanalyze.datadir import atomic_write_bytes, file_signature, make_private_dirs
from lanalyze.log import RateLimiter, get_logger

log = get_logger(__name__)
_unreadable_log = RateLimiter(interval=60, burst=1)

PREFIX = "lzt_"
ID_HEX = 12
MAX_TOKEN_LENGTH = 256
"""Longer bearer values are refused unhashed (ours are 60 characters)."""
_ID_RE = re.compile(rf"^[0-9a-f]{{{ID_HEX}}}$")
_DUMMY = hashlib.sha256(b"no such token").hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    id: str
    user: str
    name: str
    created: float
    sha256: str


def token_path(data_dir: Path) -> Path:
    return data_dir / "web" / "api-tokens.json"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """The token file: create, list, revoke (the CLI) and authenticate (the console)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._by_id: dict[str, TokenEntry] = {}
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------

    def _load(self) -> dict[str, TokenEntry] | None:
        """The file's tokens; empty when absent, None when unreadable."""
        try:
            data = json.loads(self.path.read_bytes())
            entries = [TokenEntry(**dict(item)) for item in data.get("tokens", [])]
            return {entry.id: entry for entry in entries}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            if _unreadable_log.allow(str(self.path)) is not None:
                log.error(
                    "web.tokens_unreadable", extra={"path": str(self.path), "error": str(exc)}
                )
            return None

    def _refresh(self) -> None:
        seen = file_signature(self.path)
        if seen == self._seen:
            return
        loaded = self._load()
        # Unreadable: no token is valid (fail closed); retried at the next request.
        self._by_id = loaded if loaded is not None else {}
        self._seen = seen if loaded is not None else None

    def tokens(self) -> list[TokenEntry]:
        with self._lock:
            self._refresh()
            return sorted(self._by_id.values(), key=lambda e: (e.created, e.id))

    def authenticate(self, presented: str) -> TokenEntry | None:
        """The entry of a presented token, or None (unknown, revoked or malformed)."""
        if len(presented) > MAX_TOKEN_LENGTH or not presented.startswith(PREFIX):
            return None
        token_id = presented[len(PREFIX) : len(PREFIX) + ID_HEX]
        with self._lock:
            self._refresh()
            entry = self._by_id.get(token_id)
        matches = hmac.compare_digest(_digest(presented), entry.sha256 if entry else _DUMMY)
        return entry if matches and entry is not None else None

    # -- writing (the CLI; blocking) -------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, TokenEntry]]:
        make_private_dirs(self.path.parent)
        lock_fd = os.open(
            self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            loaded = self._load()
            if loaded is None:
                raise ValueError(f"{self.path} is unreadable: fix or remove it first")
            yield loaded
        finally:
            os.close(lock_fd)

    def _write(self, entries: dict[str, TokenEntry]) -> None:
        data = {"tokens": [asdict(entry) for entry in entries.values()]}
        atomic_write_bytes(self.path, json.dumps(data, indent=1).encode() + b"\n")
        with self._lock:
            self._seen = None  # reload from the file just written

    def create(self, user: str, name: str = "", now: float | None = None) -> tuple[str, TokenEntry]:
        """A new token for ``user``: the token itself (shown once, never stored) and its entry."""
        with self._locked() as entries:
            token_id = secrets.token_hex(ID_HEX // 2)
            while token_id in entries:
                token_id = secrets.token_hex(ID_HEX // 2)
            token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
            entry = TokenEntry(
                id=token_id,
                user=user,
                name=name,
                created=round(time.time() if now is None else now, 3),
                sha256=_digest(token),
            )
            entries[token_id] = entry
            self._write(entries)
        return token, entry

    def revoke(self, token_ids: list[str]) -> list[str]:
        """Deletes the given tokens; returns the ids that were not there."""
        with self._locked() as entries:
            missing = [token_id for token_id in token_ids if token_id not in entries]
            if len(missing) < len(token_ids):
                self._write({k: v for k, v in entries.items() if k not in token_ids})
        return missing


def valid_id(text: str) -> bool:
    return bool(_ID_RE.match(text))
