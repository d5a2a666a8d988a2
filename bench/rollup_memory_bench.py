"""Peak memory of one rollup maintainer round over a backlog (the whole store at once).

    .venv/bin/python bench/rollup_memory_bench.py [--flows 2000000] [--days 7] [--out DIR]

Generates the console benchmark's store (``bench/console_bench.py``: one zstd segment per
hour, 65,536 clients, 4 exporters; ``--flows`` over ``--days``) once into ``--out``, then, in
a fresh process, one ``RollupMaintainer.run_once`` over a copy with no rollups yet: the
round a maintainer does when it first meets a big store. Printed: the child's peak RSS
(``ru_maxrss``), its wall time, and the maintainer's own count of the bytes it held
(``peak_held_bytes``) against ``flows.rollup.max_memory``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

ROLL = """
import json, sys, time
from pathlib import Path
from lanalyze.flows.config import RollupConfig
from lanalyze.flows.store.rollup import RollupMaintainer
m = RollupMaintainer(RollupConfig(raw_max_age=0), Path(sys.argv[1]))
t = time.perf_counter()
done = m.run_once()
m.release()
print(json.dumps({"done": done, "seconds": time.perf_counter() - t,
                  "peak_held_bytes": getattr(m, "peak_held_bytes", None)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    from bench.console_bench import generate
    from lanalyze.flows.store.paths import flow_dir

    pristine = args.out / f"rollmem-{args.flows}-{args.days}"
    if not (pristine / "generated.json").exists():
        shutil.rmtree(pristine, ignore_errors=True)
        pristine.mkdir(parents=True)
        now_ms = time.time_ns() // 1_000_000
        generate(pristine, args.flows, args.days, now_ms)
        (pristine / "generated.json").write_text(json.dumps({"now_ms": now_ms}))
    work = args.out / f"rollmem-{args.flows}-{args.days}-run"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    shutil.rmtree(flow_dir(work) / "rollup", ignore_errors=True)
    raw = sum(p.stat().st_size for p in (flow_dir(work) / "raw").rglob("*.parquet"))
    result = subprocess.run(
        [sys.executable, "-c", ROLL, str(flow_dir(work))],
        check=True,
        capture_output=True,
        text=True,
    )
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"{args.flows:,} flows over {args.days} days ({raw / 2**20:.0f} MiB raw): "
        f"peak RSS {peak_kib / 2**20:.2f} GiB, {report['seconds']:.0f} s, "
        f"held {report['peak_held_bytes']}, {report['done']}"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
