"""Real exporters' captures (../shared/corpus/netflow): decode cleanly, match pmacct's output.

Skips when the corpus folder is absent (the ``corpus`` fixture).
"""

from __future__ import annotations

import collections
import ipaddress
import json
import re
import socket
import subprocess
from pathlib import Path

import numpy as np

from lanalyze.flows.decode import DecodedBatch, FlowDecoder, Packet
from lanalyze.flows.pcap import read_udp
from tests.conftest import lanalyze_cmd
from tests.flows.test_decode_v5 import as_rows, same_batches

# Akvorado captures, in the order its README asks: templates before data, one decoder per group.
AKVORADO_GROUPS = {
    "nfv5": ["nfv5"],
    "v9": ["options-template", "options-data", "template", "data"],
    "v9-mixed": ["data+templates"],
    "samplingrate": ["samplingrate-template", "samplingrate-data"],
    "multiplesamplingrates": [
        "multiplesamplingrates-options-template",
        "multiplesamplingrates-options-data",
        "multiplesamplingrates-template",
        "multiplesamplingrates-data",
    ],
    "ipfixprobe": ["ipfixprobe-templates", "ipfixprobe-data"],
    "juniper-cpid": ["juniper-cpid-template", "juniper-cpid-data"],
    "icmp": ["icmp-template", "icmp-data"],
    "mpls": ["mpls"],
    "nat": ["nat"],
    "physicalinterfaces": ["physicalinterfaces"],
    "srv6": ["ipfix-srv6-template", "ipfix-srv6-data"],
    "datalink": ["datalink-template", "datalink-data"],
    "eompls": [
        "ethernet-over-mpls-with-control-word-template",
        "ethernet-over-mpls-with-control-word-data",
    ],
}
# data+templates.pcap carries a data set *before* its template in the same datagram
# (akvorado's own test only checks that the templates are accepted); pmacct's 112 capture starts
# with data sets whose (options) templates come later. Those sets are counted, not errors.
EXPECTED_UNKNOWN = {"v9-mixed": 1, "112-IPFIXv10-CISCO-options-map-reassignment": 4}


def decode_files(paths: list[Path]) -> list[DecodedBatch]:
    decoder = FlowDecoder()
    return [
        decoder.decode([Packet(d.payload, d.source, d.time_ms) for d in read_udp(path)])
        for path in paths
    ]


def addresses(column: np.ndarray) -> list[str]:
    out = []
    for row in np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16):
        address = ipaddress.IPv6Address(row.tobytes())
        out.append(str(address.ipv4_mapped or address))
    return out


def rows(batches: list[DecodedBatch]) -> list[dict[str, object]]:
    result: list[dict[str, object]] = []
    for batch in batches:
        c = batch.columns
        src, dst = addresses(c["src_addr"]), addresses(c["dst_addr"])
        for i in range(batch.rows):
            row: dict[str, object] = {
                name: values[i].item() for name, values in c.items() if values.dtype.kind == "u"
            }
            row["src"], row["dst"] = src[i], dst[i]
            row["extra"] = json.loads(batch.extra[i] or "{}") if batch.extra else {}
            result.append(row)
    return result


def test_every_akvorado_capture_decodes_without_error(corpus: Path) -> None:
    seen = set()
    for group, names in AKVORADO_GROUPS.items():
        paths = [corpus / "akvorado" / f"{name}.pcap" for name in names]
        seen.update(paths)
        batches = decode_files(paths)
        stats = [s for b in batches for s in b.stats]
        assert sum(s.decode_errors for s in stats) == 0, (group, [b.problems for b in batches])
        unknown = sum(s.unknown_template_records for s in stats)
        assert unknown == EXPECTED_UNKNOWN.get(group, 0), group
        assert sum(b.rows for b in batches) > 0, group
    assert set((corpus / "akvorado").glob("*.pcap")) == seen, "a capture is not covered"


def akvorado(corpus: Path, group: str) -> list[dict[str, object]]:
    names = AKVORADO_GROUPS[group]
    return rows(decode_files([corpus / "akvorado" / f"{name}.pcap" for name in names]))


def test_akvorado_values(corpus: Path) -> None:
    # Expected values as akvorado's own decoder tests state them for these captures.
    v5 = akvorado(corpus, "nfv5")
    assert len(v5) == 29
    first = v5[0]
    assert (first["src"], first["dst"], first["src_port"], first["dst_port"]) == (
        "161.202.212.212",
        "202.152.70.24",
        30104,
        11963,
    )
    assert (first["bytes"], first["packets"], first["tcp_flags"]) == (133, 1, 0x18)
    assert (first["src_as"], first["dst_as"], first["in_if"], first["out_if"]) == (
        36351,
        10101,
        117,
        86,
    )
    assert (first["src_mask"], first["dst_mask"], first["sampling_rate"]) == (19, 24, 1)

    v9 = akvorado(corpus, "v9")
    assert [r["sampling_rate"] for r in v9] == [30000] * 4  # from the options data
    assert [r["dst_port"] for r in v9] == [19624, 2444, 53697, 52300]
    assert v9[0]["src"] == "198.38.121.178" and v9[0]["in_if"] == 335 and v9[0]["out_if"] == 450
    assert v9[0]["extra"]["0:234"] == 1610612738  # ingressVRFID, kept in extra

    sampled = akvorado(corpus, "samplingrate")
    assert sampled[0]["sampling_rate"] == 2048 and sampled[0]["src_vlan"] == 701
    assert (sampled[0]["src"], sampled[0]["bytes"]) == ("232.131.215.65", 160)

    multiple = akvorado(corpus, "multiplesamplingrates")
    assert [(r["sampling_rate"], r["packets"], r["bytes"]) for r in multiple[:2]] == [
        (4000, 18, 1348),
        (2000, 4, 579),
    ]
    assert multiple[0]["src"] == "ffff::68" and multiple[0]["ip_version"] == 6

    icmp = akvorado(corpus, "icmp")
    assert [(r["protocol"], r["icmp_type"], r["icmp_code"]) for r in icmp] == [
        (58, 128, 0),
        (58, 129, 0),
        (1, 8, 0),
        (1, 0, 0),
    ]

    mpls = akvorado(corpus, "mpls")
    assert [(r["sampling_rate"], r["out_if"], r["direction"]) for r in mpls] == [
        (10, 16, 1),
        (10, 17, 1),
    ]

    probe = akvorado(corpus, "ipfixprobe")
    assert probe[0]["end_reason"] == 4 and probe[0]["src_mac"] != 0
    assert any(key.startswith("29305:") for key in probe[0]["extra"])  # CESNET enterprise

    juniper = akvorado(corpus, "juniper-cpid")
    assert "2636:137" in juniper[0]["extra"]  # Juniper enterprise element kept

    datalink = akvorado(corpus, "datalink")
    assert datalink[0]["in_if"] == 582 and "0:315" in datalink[0]["extra"]
    # Filled from the frame section (IE 315), as akvorado reads it.
    frame = datalink[0]
    assert (frame["src"], frame["dst"], frame["src_port"], frame["dst_port"]) == (
        "51.51.51.51",
        "52.52.52.52",
        55501,
        11777,
    )
    assert (frame["protocol"], frame["src_vlan"], frame["bytes"], frame["packets"]) == (
        17,
        231,
        96,
        1,
    )
    assert (frame["src_mac"], frame["dst_mac"]) == (0xB402165592F4, 0x182AD36E503F)

    physical = akvorado(corpus, "physicalinterfaces")
    assert physical[0]["sampling_rate"] == 1000


PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58}


def protocol_number(name: str | int) -> int:
    if isinstance(name, int):
        return name
    return PROTOCOLS.get(name) or socket.getprotobyname(name)


def pmacct_folders(corpus: Path) -> list[Path]:
    return sorted(p for p in (corpus / "pmacct").iterdir() if p.is_dir())


def renormalized(folder: Path) -> bool:
    config = (folder / "nfacctd-00.conf").read_text()
    return re.search(r"^nfacctd_renormalize:\s*true", config, re.M) is not None


def test_pmacct_records_match(corpus: Path) -> None:
    """Decoded flows, summed over pmacct's aggregation key, equal its records.

    The key compared is the NetFlow part of every folder's ``aggregate`` line (addresses,
    ports, protocol, ToS, input/output interface); the other members of that line (maps, BGP,
    MPLS, VRF, tcp flags, timestamps) refine pmacct's grouping but are constant per key in these
    captures, so summing over the compared key is exact. Where pmacct renormalises (104), its
    counters are ours times the sampling rate; in 102 its rate comes from a ``sampling_map``
    that is not in the capture and is 1 for these flows, so raw counters compare there too.
    """
    folders = pmacct_folders(corpus)
    assert len(folders) >= 9
    for folder in folders:
        captures = sorted(folder.glob("traffic-*.pcap"))
        batches = decode_files(captures)
        stats = [s for b in batches for s in b.stats]
        assert sum(s.decode_errors for s in stats) == 0, folder.name
        unknown = sum(s.unknown_template_records for s in stats)
        assert unknown == EXPECTED_UNKNOWN.get(folder.name, 0), folder.name
        scale = renormalized(folder)
        ours: dict[tuple[object, ...], list[int]] = collections.defaultdict(lambda: [0, 0])
        for r in rows(batches):
            key = (
                r["src"],
                r["dst"],
                r["src_port"],
                r["dst_port"],
                r["protocol"],
                r["tos"],
                r["in_if"],
                r["out_if"],
            )
            rate = int(r["sampling_rate"]) if scale else 1  # type: ignore[call-overload]
            ours[key][0] += int(r["packets"]) * rate  # type: ignore[call-overload]
            ours[key][1] += int(r["bytes"]) * rate  # type: ignore[call-overload]
        theirs: dict[tuple[object, ...], list[int]] = collections.defaultdict(lambda: [0, 0])
        for line in (folder / "output-flow-00.json").read_text().splitlines():
            record = json.loads(line)
            key = (
                record["ip_src"],
                record["ip_dst"],
                record["port_src"],
                record["port_dst"],
                protocol_number(record["ip_proto"]),
                record["tos"],
                record["iface_in"],
                record["iface_out"],
            )
            theirs[key][0] += record["packets"]
            theirs[key][1] += record["bytes"]
        assert dict(ours) == dict(theirs), folder.name


def test_decode_command_reads_files_in_order(corpus: Path) -> None:
    base = corpus / "akvorado"
    result = subprocess.run(
        [
            *lanalyze_cmd(),
            "flows",
            "decode",
            str(base / "icmp-template.pcap"),
            str(base / "icmp-data.pcap"),
            str(base / "data.pcap"),  # no template for it: a peer problem, not a failure
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 4
    assert records[0]["src_addr"] == "2001:db8::" and records[0]["icmp_type"] == 128
    assert records[2]["src_addr"] == "203.0.113.4"
    assert records[0]["time_start"].endswith("Z") and records[0]["extra"] == {}
    assert "data.pcap" in result.stderr and "before its template" in result.stderr
    assert "1 data sets before their template" in result.stderr


def test_rows_path_decodes_every_capture_as_packets(corpus: Path) -> None:
    """The collector's ``decode_rows`` (bulk path for one-data-set datagrams) against the
    exact walk of ``decode``, on every capture, in batches of 64 datagrams."""
    groups = [
        [corpus / "akvorado" / f"{name}.pcap" for name in names]
        for names in AKVORADO_GROUPS.values()
    ]
    groups += [[path] for path in sorted((corpus / "pmacct").rglob("*.pcap"))]
    for paths in groups:
        walked, bulk = FlowDecoder(), FlowDecoder()
        for path in paths:
            datagrams = [(d.payload, d.source) for d in read_udp(path)]
            for start in range(0, len(datagrams), 64):
                chunk = datagrams[start : start + 64]
                datas, exporters = [d for d, _ in chunk], [e for _, e in chunk]
                expected = walked.decode([Packet(d, e, 1_700_000_000_000) for d, e in chunk])
                table, lengths, codes, names = as_rows(datas, exporters)
                same_batches(
                    bulk.decode_rows(table, lengths, codes, names, 1_700_000_000_000), expected
                )
        assert walked.save_templates() == bulk.save_templates(), paths
