"""The official RFC 7208 test suite (pyspf's ``rfc7208-tests.yml``) through :func:`check_spf`.

The YAML is not in the repository (BSD-style licence, ``rfc7208-tests.LICENSE`` in pyspf's
sdist): ``make test`` fetches it into ``.cache/spf-suite/`` (``make spf-suite``). Without it the
test fails under CI (``CI`` set) and is skipped locally.

Each scenario's ``zonedata`` is served by a real Knot server as one root zone ``"."`` (so every
name the scenario does not list is NXDOMAIN, as in the suite's own DNS stub), and every test
case goes through the same ``check_spf`` the mail server uses, over our asynchronous resolver.
How the suite's DNS stub maps onto real DNS:

* ``TIMEOUT`` at a name: the suite's stub answers the types listed before it and times out every
  other type. A name listing no record we query (``SPF`` is never queried: RFC 7208 §3.1, §4.4)
  becomes its own zone configured broken, so Knot answers SERVFAIL for it — our resolver's DNS
  error, as a timeout is. Names with records below such a name get zones of their own; a name
  that lists records before ``TIMEOUT`` just answers them (the other types then say NODATA,
  which none of the suite's cases queries).
* A type ``SPF`` record without a ``TXT`` one is also served as ``TXT``, as the stub does.
* A TXT record with no strings at all cannot be written in a zone file; it is served as one
  empty string, which is the same to SPF (neither starts with ``v=spf1``).
* Names with a label over 63 octets cannot exist in DNS; pyspf never queries them (§4.3), so
  they are left out of the zone. The cases that rely on them expect exactly that.

Every case must give one of its acceptable results, and a ``fail`` the explanation the case
names (the domain's ``exp=`` text, macros expanded); :data:`NOT_EXPRESSIBLE` lists the cases
that cannot be reproduced with a real DNS server, each with its reason (none so far).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lanalyze.mail.auth.dns import Resolver
from lanalyze.mail.auth.spf import check_spf
from tests.mail.dnsserver import KnotServer

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
SUITE = Path(os.environ.get("LANALYZE_SPF_SUITE", ROOT / ".cache/spf-suite/rfc7208-tests.yml"))

# (scenario description, test id) -> why a real DNS server cannot reproduce the case.
NOT_EXPRESSIBLE: dict[tuple[str, str], str] = {}

QUERIED_TYPES = {"A", "AAAA", "MX", "PTR", "TXT", "CNAME"}


def load_scenarios() -> list[dict[str, Any]]:
    with SUITE.open("rb") as stream:
        return [s for s in yaml.safe_load_all(stream) if s]


def _label(label: str) -> str:
    """A label in zone-file text: anything but letters, digits, '-', '_' as \\DDD."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "-_") else f"\\{ord(c):03d}" for c in label
    )


def owner(name: str) -> str:
    return ".".join(_label(label) for label in name.rstrip(".").split(".")) + "."


def _text(value: str) -> str:
    """One TXT string: UTF-8 bytes (as the suite's stub encodes them), escaped, in quotes."""
    data = value.encode("utf-8")
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return " ".join(
        '"'
        + "".join(
            chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:03d}" for b in chunk
        )
        + '"'
        for chunk in chunks
    )


def _rdata(rtype: str, value: Any) -> str:
    if rtype in ("TXT", "SPF"):
        strings = [value] if isinstance(value, str) else list(value)
        # No strings at all cannot be written; one empty string is the same to SPF.
        return " ".join(_text(s) for s in strings) if strings else '""'
    if rtype == "MX":
        preference, host = value
        return f"{int(preference)} {owner(host) if host else '.'}"
    if rtype in ("PTR", "CNAME"):
        return owner(value)
    return str(value)


def _expressible(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return all(0 < len(label.encode()) <= 63 for label in labels) and len(name) <= 253


def _is_under(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def zones_for(zonedata: dict[str, list[Any]]) -> dict[str, str | None]:
    """The scenario's names as Knot zones: the root, broken zones for timeouts, and zones of
    their own for names below a broken one."""
    records: dict[str, list[str]] = {}
    broken: set[str] = set()
    for raw_name, entries in zonedata.items():
        name = raw_name.rstrip(".").lower()
        if not _expressible(name):
            continue
        lines: list[str] = []
        spf: list[Any] = []
        has_txt = False
        for entry in entries:
            if entry == "TIMEOUT":
                if not any(line.split()[1] in QUERIED_TYPES for line in lines):
                    broken.add(name)
                break
            for rtype, value in entry.items():
                if rtype == "TXT":
                    has_txt = True
                if value == "NONE":
                    continue
                if rtype == "SPF":
                    spf.append(value)
                lines.append(f"{owner(name)} {rtype} {_rdata(rtype, value)}")
        if not has_txt:
            lines += [f"{owner(name)} TXT {_rdata('TXT', value)}" for value in spf]
        records[name] = lines
    own = {
        name
        for name, lines in records.items()
        if lines and name not in broken and any(_is_under(name, b) for b in broken)
    }
    zones: dict[str, list[str]] = {".": []}
    zones.update({name: [] for name in sorted(own)})
    for name, lines in records.items():
        if name in broken:
            continue
        home = max((z for z in zones if z == "." or _is_under(name, z)), key=len)
        zones[home] += lines
    result: dict[str, str | None] = {
        (owner(z).rstrip(".") if z != "." else "."): "\n".join(lines) for z, lines in zones.items()
    }
    result.update({owner(b).rstrip("."): None for b in sorted(broken)})
    return result


try:
    SCENARIOS = load_scenarios() if SUITE.is_file() else []
except OSError:
    SCENARIOS = []
CASES = [
    pytest.param(index, test_id, id=f"{index}-{test_id}")
    for index, scenario in enumerate(SCENARIOS)
    for test_id in scenario["tests"]
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, KnotServer]]:
    """One Knot server per scenario, started when its first case runs."""
    started: dict[int, KnotServer] = {}
    try:
        yield started
    finally:
        for server in started.values():
            server.stop()


def server_for(servers: dict[int, KnotServer], index: int, tmp: Path) -> KnotServer:
    if index not in servers:
        server = KnotServer(tmp / f"scenario-{index}", zones_for(SCENARIOS[index]["zonedata"]))
        server.start()
        servers[index] = server
    return servers[index]


def test_suite_is_present() -> None:
    if SCENARIOS:
        return
    message = f"RFC 7208 test suite not found at {SUITE}: run `make spf-suite`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.parametrize(("index", "test_id"), CASES)
def test_rfc7208_case(
    servers: dict[int, KnotServer],
    tmp_path_factory: pytest.TempPathFactory,
    index: int,
    test_id: str,
) -> None:
    scenario = SCENARIOS[index]
    case = scenario["tests"][test_id]
    reason = NOT_EXPRESSIBLE.get((scenario["description"], test_id))
    if reason:
        pytest.skip(reason)
    server = server_for(servers, index, tmp_path_factory.getbasetemp())
    resolver = Resolver(server.address, timeout=5.0)
    result = asyncio.run(
        check_spf(resolver, client_ip=case["host"], mail_from=case["mailfrom"], helo=case["helo"])
    )
    expected = case["result"]
    acceptable = [expected] if isinstance(expected, str) else list(expected)
    assert result.result in acceptable, (
        f"{test_id} ({case.get('spec')}): {result} not in {acceptable}; "
        f"{case.get('description', '')}"
    )
    explanation = case.get("explanation")
    if explanation not in (None, "DEFAULT") and result.result == "fail":
        # "DEFAULT" stands for the checker's own default text; any other is the domain's exp=.
        assert result.explanation == explanation, f"{test_id}: {result}"
