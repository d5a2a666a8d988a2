"""`lanalyze flows import`: captures decoded through one template cache, stored like live."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import lanalyze_cmd
from tests.flows.test_collect import (
    ipfix_data_set,
    ipfix_message,
    ipfix_template_set,
    stored,
    v5_datagram,
)

CAPTURE_START_S = 1_700_000_000  # 2023-11-14 22:13:20 UTC


def write_udp_capture(path: Path, payloads: list[bytes], first_second: int) -> None:
    """A classic pcap (Ethernet) of UDP datagrams from 192.0.2.9:5000 to port 2055."""
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for number, payload in enumerate(payloads):
        udp = struct.pack(">HHHH", 5000, 2055, 8 + len(payload), 0) + payload
        ip = struct.pack(
            ">BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            number,
            0,
            64,
            17,
            0,
            bytes([192, 0, 2, 9]),
            bytes([198, 51, 100, 1]),
        )
        frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp
        records.append(
            struct.pack("<IIII", first_second + number, 0, len(frame), len(frame)) + frame
        )
    path.write_bytes(b"".join(records))


def run_import(data_dir: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lanalyze_cmd(), "flows", "import", "--data", str(data_dir), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_import_stores_v5_and_ipfix_across_files(tmp_path: Path, data_dir: Path) -> None:
    v5_capture = tmp_path / "v5.pcap"
    write_udp_capture(v5_capture, [v5_datagram(i * 30, i * 30) for i in range(4)], CAPTURE_START_S)
    templates = tmp_path / "templates.pcap"
    data = tmp_path / "data.pcap"
    # The template in one capture, its data in the next: one template cache for both.
    write_udp_capture(templates, [ipfix_message([ipfix_template_set()], 0)], CAPTURE_START_S)
    write_udp_capture(data, [ipfix_message([ipfix_data_set(0, 12)], 0)], CAPTURE_START_S + 10)

    result = run_import(data_dir, v5_capture, templates, data)
    assert result.returncode == 0, result.stderr
    assert "6 export packets, 132 flows stored" in result.stdout
    assert stored(data_dir) == 132
    # The capture time is the receive time, and decides the hour directory.
    files = sorted((data_dir / "flows" / "raw").glob("*/*.parquet"))
    assert {path.parent.name for path in files} == {"2023111422"}
    received = {
        ms for path in files for ms in pq.read_table(path).column("time_received").to_pylist()
    }
    assert min(received) == CAPTURE_START_S * 1000
    assert stored(data_dir, "count(distinct exporter)") == 1
    assert all(path.name.split("-")[1].startswith("imp") for path in files)


def test_import_of_a_broken_capture_names_it(tmp_path: Path, data_dir: Path) -> None:
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(b"\xd4\xc3\xb2\xa1 not a capture")
    result = run_import(data_dir, broken)
    assert result.returncode == 1
    assert "broken.pcap" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_of_an_ordinary_capture_says_so(tmp_path: Path, data_dir: Path) -> None:
    """20 000 UDP datagrams that are not NetFlow: one summary line, a hint, exit 1."""
    from tests.flows.test_softflowd import write_capture

    capture = tmp_path / "traffic.pcap"
    write_capture(capture, flows_v4=4000, flows_v6=0)
    result = run_import(data_dir, capture)
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert " 0 flows stored" in lines[0]
    assert "decode problems (unknown export version N (N bytes)" in lines[0]
    assert "no NetFlow v5/v7/v9 or IPFIX export in" in result.stderr
    assert "softflowd -r FILE.pcap" in result.stderr
    # The log names a few bad datagrams' exporters, not every one, with peer and reason.
    logged = [line for line in result.stderr.splitlines() if "flows.bad_datagram" in line]
    assert 1 <= len(logged) <= 10, result.stderr
    assert all("exporter=" in line and "reason=" in line for line in logged), logged
