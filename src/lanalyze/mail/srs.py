"""SRS, the Sender Rewriting Scheme: forwarded mail keeps passing SPF, bounces find their way back.

When an alias forwards a message to another domain, we send it on with the original
envelope sender's domain, whose SPF does not list us (RFC 7208 §1.1.3 / RFC 5321 §3.9
mail forwarding). As postsrsd does (the scheme of libsrs2, Shevek's "Sender Rewriting
Scheme" paper), the envelope sender is rewritten into an address of ours that encodes the
original and can be reversed when a bounce comes back:

- ``SRS0=HHHH=TT=example.org=alice@srs.domain`` for ``alice@example.org``: ``TT`` is the day
  (base32, two characters, 1024-day cycle), ``HHHH`` the first four base64 characters of an
  HMAC-SHA1 with our key over the lower-cased ``TT``, domain and local part;
- ``SRS1=HHHH=fwd.example==HHHH=TT=example.org=alice@srs.domain`` for an address that was
  already SRS0 at another forwarder (the chain stays one hop long; reversal goes back to
  that forwarder's SRS0 address, which it reverses in turn).

Reversal (:meth:`SRS.reverse`) checks the hash (case-insensitively: some MTAs fold case) and,
for SRS0, that the timestamp is at most ``mail.srs.max_age_days`` old; anything else is
refused (:class:`InvalidSRS`), so nobody can use our SRS addresses as an open relay.

The key is 32 random bytes in ``<data_dir>/mail/srs.key``, 0600, created on first use
(atomically: written to a temporary file and linked into place, so two processes starting at
once agree on one key). Losing it makes outstanding SRS addresses invalid (their bounces are
refused), nothing worse.

Trust: addresses to reverse come from any peer (RCPT TO of a bounce); they are parsed without
raising anything but :class:`InvalidSRS` and never reversed without a valid hash.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lanalyze.datadir import FILE_MODE, fsync_dir
from lanalyze.mail.errors import InvalidSRS
from lanalyze.mail.metrics import SRS as SRS_COUNTER

if TYPE_CHECKING:
    from lanalyze.mail.config import MailConfig

BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
HASH_LENGTH = 4
DAY = 86400
TIME_SLOTS = 1024  # two base32 characters
KEY_BYTES = 32


def is_srs(local: str) -> bool:
    head = local[:5].upper()
    return head in ("SRS0=", "SRS1=")


def load_key(path: Path) -> bytes:
    """The key in ``path``, created (0600, atomically) if there is none."""
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.write(fd, base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made one meanwhile: then use that
        fsync_dir(path.parent)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    text = path.read_bytes().strip()
    key = base64.b64decode(text, validate=True) if text else b""
    if len(key) < 16:
        raise OSError(f"{path}: not an SRS key (expected base64 of 32 bytes)")
    return key


class SRS:
    """Forward (rewrite) and reverse SRS addresses for ``domain`` with a key: given, or
    read from ``key_path`` (created there) the first time one is needed."""

    def __init__(self, key: bytes | Path, domain: str, max_age_days: int = 21) -> None:
        self._key = key if isinstance(key, bytes) else None
        self.key_path = key if isinstance(key, Path) else None
        self.domain = domain.lower()
        self.max_age_days = max_age_days

    @property
    def key(self) -> bytes:
        if self._key is None:
            assert self.key_path is not None
            self._key = load_key(self.key_path)
        return self._key

    # ---------------------------------------------------------------- pieces

    def _hash(self, *parts: str) -> str:
        mac = hmac.new(self.key, digestmod=hashlib.sha1)
        for part in parts:
            mac.update(part.lower().encode("utf-8", "surrogateescape"))
        return base64.b64encode(mac.digest()).decode()[:HASH_LENGTH]

    def _check_hash(self, given: str, *parts: str) -> None:
        if not hmac.compare_digest(given.lower(), self._hash(*parts).lower()):
            raise InvalidSRS("bad SRS hash")

    @staticmethod
    def timestamp(now: float | None = None) -> str:
        day = int((time.time() if now is None else now) // DAY)
        return BASE32[(day >> 5) & 31] + BASE32[day & 31]

    def _check_age(self, stamp: str, now: float | None) -> None:
        upper = stamp.upper()
        if len(upper) != 2 or any(c not in BASE32 for c in upper):
            raise InvalidSRS("bad SRS timestamp")
        then = BASE32.index(upper[0]) << 5 | BASE32.index(upper[1])
        today = int((time.time() if now is None else now) // DAY) % TIME_SLOTS
        if (today - then) % TIME_SLOTS > self.max_age_days:
            raise InvalidSRS("SRS address expired")

    # ---------------------------------------------------------------- the scheme

    def forward(self, sender: str, now: float | None = None) -> str:
        """The SRS address to send forwarded mail of ``sender`` with (``sender`` itself when
        it is empty or already one of our SRS addresses)."""
        local, at, domain = sender.rpartition("@")
        if not at or not local or not domain:
            return sender
        if domain.lower() == self.domain and is_srs(local):
            return sender
        if local[:5].upper() == "SRS0=":
            opaque = local[5:]
            new = f"SRS1={self._hash(domain, opaque)}={domain}=={opaque}"
        elif local[:5].upper() == "SRS1=":
            # SRS1=HHHH=orighost==opaque: keep the first forwarder and the opaque part.
            try:
                _, orighost, opaque = _split_srs1(local)
            except InvalidSRS:
                return self._srs0(local, domain, now)
            new = f"SRS1={self._hash(orighost, opaque)}={orighost}=={opaque}"
        else:
            return self._srs0(local, domain, now)
        SRS_COUNTER.labels("rewritten").inc()
        return f"{new}@{self.domain}"

    def _srs0(self, local: str, domain: str, now: float | None) -> str:
        stamp = self.timestamp(now)
        SRS_COUNTER.labels("rewritten").inc()
        return f"SRS0={self._hash(stamp, domain, local)}={stamp}={domain}={local}@{self.domain}"

    def reverse(self, address: str, now: float | None = None) -> str:
        """The address an SRS address of ours stands for; :class:`InvalidSRS` otherwise.
        Not counted here: the recipient policy asks once per RCPT and cleanup once per
        accepted recipient (:class:`~lanalyze.mail.users.Directory` counts)."""
        local, at, domain = address.rpartition("@")
        if not at or domain.lower() != self.domain or not is_srs(local):
            raise InvalidSRS("not an SRS address of ours")
        if local[:5].upper() == "SRS0=":
            parts = local[5:].split("=", 3)
            if len(parts) != 4 or not all(parts):
                raise InvalidSRS("bad SRS0 address")
            given, stamp, orig_domain, orig_local = parts
            self._check_hash(given, stamp, orig_domain, orig_local)
            self._check_age(stamp, now)
            return f"{orig_local}@{orig_domain}"
        given, orighost, opaque = _split_srs1(local)
        self._check_hash(given, orighost, opaque)
        return f"SRS0={opaque}@{orighost}"


def _split_srs1(local: str) -> tuple[str, str, str]:
    """``SRS1=HHHH=orighost==opaque`` -> (HHHH, orighost, opaque)."""
    rest = local[5:]
    given, sep, tail = rest.partition("=")
    orighost, sep2, opaque = tail.partition("==")
    if not sep or not sep2 or not given or not orighost or not opaque:
        raise InvalidSRS("bad SRS1 address")
    return given, orighost, opaque


def from_config(config: MailConfig, mail_root: Path) -> SRS | None:
    """The server's SRS (key ``<mail_root>/srs.key``, read or made on first use), or None
    when ``mail.srs.enabled`` is false."""
    if not config.srs.enabled or not config.srs_domain:
        return None
    return SRS(mail_root / "srs.key", config.srs_domain, config.srs.max_age_days)
