"""A batch whose flush fails gets no 250 and leaves nothing in queue/active/ to deliver.

The failing flush is simulated (a disk error cannot be made on demand here): the Syncer's
``batch`` raises EIO, as syncfs(2) does when write-back of the batch failed.
"""

from __future__ import annotations

import asyncio
import errno
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lanalyze.mail.cleanup import Committer, new_queue_id
from lanalyze.mail.queuefile import Envelope, Layout, Syncer


class FailingSyncer(Syncer):
    def batch(self, anchor: Path) -> None:
        raise OSError(errno.EIO, "write-back failed")


def envelope(queue_id: str) -> Envelope:
    return Envelope(
        queue_id=queue_id,
        mail_from="a@example.org",
        recipients=["postmaster@localhost"],
        local={"postmaster@localhost": ["postmaster@localhost"]},
        relay=[],
        received_at=time.time(),
        client_ip="127.0.0.1",
        helo="client.example",
        listener="mta",
    )


@pytest.mark.parametrize("mode", ["syncfs", "fsync"])
def test_failed_flush_is_not_acknowledged_and_not_queued(tmp_path: Path, mode: str) -> None:
    layout = Layout(tmp_path)
    layout.create()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            committer = Committer(layout, executor, syncer=FailingSyncer(mode))
            await committer.start()
            try:
                spool = committer.spool(new_queue_id(), 65536)
                spool.append(b"Subject: x\r\n\r\nbody\r\n")
                with pytest.raises(OSError):
                    await committer.commit(spool, envelope(Path(spool.path).name))
            finally:
                await committer.stop()

    asyncio.run(scenario())
    assert list(layout.q("active").iterdir()) == []
