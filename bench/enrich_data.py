"""Enrichment inputs for the ingest benchmarks (issue 16): GeoIP/AS databases and settings.

The benchmark's flows come from 10.0.0.0/16 and go to 192.168.0.0/16. The country database
holds 60 000 /17 networks over the whole IPv4 space (half of the benchmark's addresses fall
in one: hits and misses), the AS database 20 000 /18 networks with distinct names; sizes of
the order of GeoLite2's IPv4 part, so the range search has a real depth. Written once with
``mmdb_writer`` (about a minute) into ``$TMPDIR/lanalyze-bench-enrich`` and reused.

``toml()`` gives the ``[flows.enrich]`` and ``[flows.networks]`` sections with every kind of
enrichment on: both databases, 12 networks, an exporter rule, two interface rules and an
application name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

COUNTRIES = ("NL", "DE", "US", "FR", "GB", "JP", "CN", "BR")


def databases() -> tuple[Path, Path]:
    base = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "lanalyze-bench-enrich"
    base.mkdir(exist_ok=True)
    country, asn = base / "country.mmdb", base / "asn.mmdb"
    if not country.exists() or not asn.exists():
        from mmdb_writer import MMDBWriter
        from netaddr import IPNetwork, IPSet

        writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
        for i in range(60_000):
            network = IPNetwork(f"{(i >> 8) + 1}.{i & 255}.0.0/17")
            writer.insert_network(IPSet([network]), {"country": {"iso_code": COUNTRIES[i % 8]}})
        writer.to_db_file(str(country) + ".tmp")
        os.replace(str(country) + ".tmp", country)
        writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
        for i in range(20_000):
            network = IPNetwork(f"{(i >> 7) + 1}.{(i & 127) * 2}.0.0/18")
            record = {
                "autonomous_system_number": 64_512 + i,
                "autonomous_system_organization": f"Bench Net {i}",
            }
            writer.insert_network(IPSet([network]), record)
        writer.to_db_file(str(asn) + ".tmp")
        os.replace(str(asn) + ".tmp", asn)
    return country, asn


def toml() -> str:
    country, asn = databases()
    networks = "\n".join(
        f'"10.0.{16 * i}.0/20" = {{ name = "office-{i}", role = "inside" }}' for i in range(10)
    )
    return f"""
[flows.enrich]
geoip_country = "{country}"
geoip_asn = "{asn}"
applications = {{ "13:453" = "webex" }}
[[flows.enrich.exporters]]
match = ["127.0.0.0/8"]
name = "bench"
[[flows.enrich.interfaces]]
if_index = [1, 2, 3]
boundary = "external"
provider = "transit-a"
[[flows.enrich.interfaces]]
if_index = [4, 5, 6, 7]
boundary = "internal"
[flows.networks]
"10.0.0.0/8" = {{ name = "corp", role = "inside" }}
"192.168.0.0/16" = {{ name = "lan", role = "inside" }}
{networks}
"""
