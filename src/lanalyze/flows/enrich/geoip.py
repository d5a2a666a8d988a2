"""Country and AS of addresses from MaxMind-format databases (``.mmdb``), per batch.

Any MaxMind DB file works: GeoLite2-Country/-City and DB-IP lite country (``country.iso_code``,
else ``registered_country.iso_code``), GeoLite2-ASN and DB-IP lite ASN
(``autonomous_system_number``, ``autonomous_system_organization``); one file holding both is
fine too. Read with the ``maxminddb`` reader (memory-mapped file, its C extension when built).

A batch is looked up by its *unique* addresses (``np.unique``), each answered from a bounded
LRU cache or the databases, then spread back over the flows with the inverse index: repeats
cost numpy, not Python. Files are checked for a new modification time every
``reload_interval`` seconds and reopened (the cache is emptied); a missing or unreadable file
is one warning (again only after it was readable once) and its columns stay empty.

Trust: the databases are the administrator's files, but their records are checked for type
and length (a country code is 2 letters, an AS name at most 256 characters) before they are
stored: a wrong file gives empty columns, not exceptions or huge strings.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lanalyze.log import get_logger

log = get_logger(__name__)

ENTRY_BYTES = 256
"""Estimated bytes of one cached address (key, tuple, strings, dict slot)."""
MAX_AS_NAME = 256


@dataclass(frozen=True)
class GeoAnswer:
    country: str | None
    asn: int
    as_name: str | None


_NONE = GeoAnswer(None, 0, None)


class MmdbFile:
    """One database file: opened lazily, reopened when its modification time changes."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.reader: Any = None
        self._stamp: tuple[int, int] | None = None
        self._warned = False
        self.reloads = 0
        self.failures = 0

    def refresh(self) -> bool:
        """Reopen when the file changed; True when the answers may have changed."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            return self._fail(f"cannot read the file: {exc.strerror}")
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp and self.reader is not None:
            return False
        import maxminddb

        try:
            reader = maxminddb.open_database(str(self.path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            self._stamp = stamp
            return self._fail(f"not a MaxMind database: {exc}")
        old, self.reader, self._stamp = self.reader, reader, stamp
        if old is not None:
            old.close()
            self.reloads += 1
            log.info("flows.enrich.reloaded", extra={"file": str(self.path), "what": self.what})
        self._warned = False
        return True

    def _fail(self, reason: str) -> bool:
        changed = self.reader is not None
        if changed:
            self.reader.close()
            self.reader = None
        self.failures += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "flows.enrich.database_unusable",
                extra={"file": str(self.path), "what": self.what, "reason": reason},
            )
        return changed

    def get(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
        if self.reader is None:
            return None
        try:
            return self.reader.get(address)
        except ValueError:
            return None  # an IPv6 address asked of an IPv4-only database

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def _country(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        part = record.get(key)
        if isinstance(part, dict):
            code = part.get("iso_code")
            if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
                return code.upper()
    return None


def _as(record: Any) -> tuple[int, str | None]:
    if not isinstance(record, dict):
        return 0, None
    number = record.get("autonomous_system_number")
    name = record.get("autonomous_system_organization")
    asn = number if isinstance(number, int) and 0 < number < 2**32 else 0
    text = name if isinstance(name, str) and name.isprintable() else None
    return asn, (text[:MAX_AS_NAME] if text else None)


def _address(key: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    packed = key.ljust(16, b"\x00")  # numpy drops an S16 value's trailing zero bytes
    if packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return ipaddress.IPv4Address(packed[12:])
    return ipaddress.IPv6Address(packed)


@dataclass
class GeoCounters:
    lookups: int = 0
    """Unique addresses looked up in a database (cache misses)."""
    cache_hits: int = 0
    reloads: int = 0
    failures: int = 0


class GeoIP:
    """Country and AS per address from up to two databases, with a bounded LRU cache."""

    def __init__(
        self,
        country: Path | None,
        asn: Path | None,
        reload_interval: float = 60.0,
        cache_memory: int = 16 * 2**20,
    ) -> None:
        self.country = MmdbFile(country, "country") if country is not None else None
        self.asn = MmdbFile(asn, "asn") if asn is not None else None
        self.reload_interval = reload_interval
        self.max_entries = cache_memory // ENTRY_BYTES
        self._cache: OrderedDict[bytes, GeoAnswer] = OrderedDict()
        self._next_check = 0.0
        self.counters = GeoCounters()

    @property
    def enabled(self) -> bool:
        return self.country is not None or self.asn is not None

    def refresh(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return
        self._next_check = now + self.reload_interval
        changed = False
        for database in (self.country, self.asn):
            if database is not None and database.refresh():
                changed = True
        if changed:
            self._cache.clear()
        self.counters.reloads = sum(d.reloads for d in (self.country, self.asn) if d)
        self.counters.failures = sum(d.failures for d in (self.country, self.asn) if d)

    def _answer(self, key: bytes) -> GeoAnswer:
        address = _address(key)
        country = _country(self.country.get(address)) if self.country is not None else None
        asn, name = _as(self.asn.get(address)) if self.asn is not None else (0, None)
        if country is None and asn == 0 and name is None:
            return _NONE
        return GeoAnswer(country, asn, name)

    def lookup_unique(self, unique: npt.NDArray[np.bytes_]) -> list[GeoAnswer]:
        """Answers for distinct addresses (Python per distinct address, cached); the caller
        calls :meth:`refresh` once a batch."""
        cache = self._cache
        answers: list[GeoAnswer] = []
        hits = 0
        for key in unique.tolist():
            found = cache.get(key)
            if found is not None:
                cache.move_to_end(key)
                hits += 1
            else:
                found = self._answer(key)
                if self.max_entries:
                    cache[key] = found
                    if len(cache) > self.max_entries:
                        cache.popitem(last=False)
            answers.append(found)
        self.counters.cache_hits += hits
        self.counters.lookups += len(answers) - hits
        return answers

    def close(self) -> None:
        for database in (self.country, self.asn):
            if database is not None:
                database.close()
