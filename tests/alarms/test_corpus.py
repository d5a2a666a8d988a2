"""The shared corpus of real exporters' captures raises no alarm with the default settings."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq

from lanalyze.alarms.config import AlarmsConfig
from lanalyze.alarms.detect import COLUMNS, Detector
from lanalyze.flows.config import FlowsConfig
from lanalyze.flows.importer import import_files
from tests.flows.test_decode_corpus import AKVORADO_GROUPS, pmacct_folders


def test_corpus_raises_no_alarm(corpus: Path, data_dir: Path) -> None:
    stored = 0
    for group in AKVORADO_GROUPS.values():
        files = [corpus / "akvorado" / f"{name}.pcap" for name in group]
        stored += import_files(files, data_dir, FlowsConfig()).flows
    for folder in pmacct_folders(corpus):
        stored += import_files(sorted(folder.glob("*.pcap")), data_dir, FlowsConfig()).flows
    # The captures are years old, spread over many hours: the detector is given every stored
    # segment (the engine itself looks only at the newest hours), as if they arrived now.
    detector = Detector(AlarmsConfig())
    now = int(time.time() * 1000)
    findings = []
    segments = sorted((data_dir / "flows" / "raw").glob("*/*.parquet"))
    for path in segments:
        findings += detector.process(now, pq.read_table(path, columns=list(COLUMNS)))
    findings += detector.tick(now)
    assert stored > 300 and len(segments) > 10
    assert findings == []
    assert len(detector.exporters) > 5
