"""Where the flow store's files live: the one module that knows ``<data_dir>/flows/...``.

::

    <general.data_dir>/                                   0700
      flows/                                              0700   flow_dir(data_dir)
        raw/<YYYYMMDDHH>/<first_ms>-<writer>-<seq>.parquet       raw_dir(), hour_dir()
        rollup/<res>/<table>/<hour or day>/<name>.parquet        rollup_dir(), part_path()
        rollup/manifest.json                                     manifest_path()
        rollup/.maintainer.lock                                  maintainer_lock_path()
        templates/worker-<n>.bin                                 templates_dir(), template_file()
        spool/worker-<n>/<seq>-<batch id>.arrow                  spool_dir() (ClickHouse backend)
        exporters.json                                           exporters_path()
        interfaces.json                                          interfaces_path()

:func:`flow_dir` turns the general data directory into the flow directory; every other
function takes the flow directory, as the rollup maintainer, the reports and the SNMP poller
do. Directories are created 0700 and files 0600 (:mod:`lanalyze.datadir`): flows say who
talks to whom.

Trust: the names are our own (hour names, table names, writer ids); nothing here comes from
a peer.
"""

from __future__ import annotations

from pathlib import Path

from lanalyze.datadir import make_private_dirs

FLOWS = "flows"
RAW = "raw"
ROLLUP = "rollup"
TEMPLATES = "templates"
SPOOL = "spool"
EXPORTERS_FILE = "exporters.json"
INTERFACES_FILE = "interfaces.json"
MANIFEST_FILE = "manifest.json"


def flow_dir(data_dir: Path) -> Path:
    """The flow directory of a general data directory (``general.data_dir``)."""
    return data_dir / FLOWS


def make_flow_dir(data_dir: Path) -> Path:
    """Create the data directory and its flow directory (0700 where they are new)."""
    path = flow_dir(data_dir)
    make_private_dirs(path)
    return path


def raw_dir(flows: Path) -> Path:
    return flows / RAW


def hour_dir(flows: Path, hour: str) -> Path:
    return flows / RAW / hour


def rollup_dir(flows: Path) -> Path:
    return flows / ROLLUP


def manifest_path(flows: Path) -> Path:
    return flows / ROLLUP / MANIFEST_FILE


def maintainer_lock_path(flows: Path) -> Path:
    return flows / ROLLUP / ".maintainer.lock"


def part_path(flows: Path, resolution: str, table: str, key: str, name: str) -> Path:
    return flows / ROLLUP / resolution / table / key / name


def templates_dir(flows: Path) -> Path:
    return flows / TEMPLATES


def template_file(flows: Path, worker: int) -> Path:
    return flows / TEMPLATES / f"worker-{worker}.bin"


def exporters_path(flows: Path) -> Path:
    return flows / EXPORTERS_FILE


def interfaces_path(flows: Path) -> Path:
    return flows / INTERFACES_FILE


def spool_dir(flows: Path, worker: int) -> Path:
    """Batches one worker could not insert into ClickHouse yet (flows.store.spool_max_bytes)."""
    return flows / SPOOL / f"worker-{worker}"
