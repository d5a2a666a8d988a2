"""Queue files are recycled: a delivered file moves to queue/free/ and becomes the next
message's queue file, overwritten and truncated; stale contents are never delivered.

Why recycling exists: see :mod:`lanalyze.mail.queuefile` (ext4 without a journal scans
recently deleted inodes on every file creation).
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lanalyze.mail.cleanup import Committer, new_queue_id
from lanalyze.mail.delivery.maildir import MaildirDelivery
from lanalyze.mail.queuefile import Envelope, Layout, Recycler, Syncer, footer, read_envelope


def envelope(queue_id: str) -> Envelope:
    return Envelope(
        queue_id=queue_id,
        mail_from="a@example.org",
        recipients=["alice@example.test"],
        local={"alice@example.test": ["alice@example.test"]},
        relay=[],
        received_at=time.time(),
        client_ip="127.0.0.1",
        helo="client.example",
        listener="mta",
    )


def commit(layout: Layout, messages: list[bytes]) -> list[str]:
    async def scenario() -> list[str]:
        with ThreadPoolExecutor(1) as executor:
            committer = Committer(layout, executor, syncer=Syncer("syncfs"))
            await committer.start()
            try:
                ids = []
                for message in messages:
                    queue_id = new_queue_id()
                    spool = committer.spool(queue_id, 65536)
                    spool.append(message)
                    await committer.commit(spool, envelope(queue_id))
                    ids.append(queue_id)
                return ids
            finally:
                await committer.stop()

    return asyncio.run(scenario())


def mailbox(layout: Layout) -> list[bytes]:
    new = layout.maildirs / "alice@example.test" / "new"
    return sorted(path.read_bytes() for path in new.iterdir())


def test_delivered_file_is_reused_and_truncated(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.create()
    long = b"Subject: long\r\n\r\n" + b"x" * 20000 + b"\r\n"
    (first,) = commit(layout, [long])
    inode = os.stat(layout.q("active") / first).st_ino
    delivery = MaildirDelivery(layout, Syncer("syncfs"))
    assert [o.status for o in delivery.deliver_batch([str(layout.q("active") / first)])] == [
        "delivered"
    ]
    assert list(layout.q("active").iterdir()) == []
    assert [p.name for p in layout.q("free").iterdir()] == [first]

    short = b"Subject: short\r\n\r\nhi\r\n"
    (second,) = commit(layout, [short])
    path = layout.q("active") / second
    assert os.stat(path).st_ino == inode  # the same file, not a new inode
    assert list(layout.q("free").iterdir()) == []
    env, length = read_envelope(path)
    assert (env.queue_id, length, env.crc32) == (second, len(short), zlib.crc32(short))
    assert path.stat().st_size == length + len(footer(length, env.trailer()))
    assert delivery.deliver_batch([str(path)])[0].status == "delivered"
    delivered = mailbox(layout)
    assert len(delivered) == 2
    assert sum(m.endswith(b"\n\nhi\n") for m in delivered) == 1


def test_stale_recycled_contents_are_not_delivered(tmp_path: Path) -> None:
    """A power cut after the rename but before the new data reached the disk leaves the
    previous message under the new name: its trailer names another queue ID."""
    layout = Layout(tmp_path)
    layout.create()
    (old,) = commit(layout, [b"Subject: old\r\n\r\nold\r\n"])
    stale = layout.q("active") / "NEWID1"
    os.rename(layout.q("active") / old, stale)
    outcomes = MaildirDelivery(layout).deliver_batch([str(stale)])
    assert [o.status for o in outcomes] == ["corrupt"]
    assert (layout.q("corrupt") / "NEWID1").exists()
    assert not (layout.maildirs / "alice@example.test" / "new").exists() or mailbox(layout) == []


def test_free_files_are_bounded(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.create()
    ids = commit(layout, [b"Subject: n\r\n\r\nn\r\n"] * 3)
    delivery = MaildirDelivery(layout)
    delivery.recycler.limit = 1
    delivery.deliver_batch([str(layout.q("active") / q) for q in ids])
    assert len(list(layout.q("free").iterdir())) == 1
    assert list(layout.q("active").iterdir()) == []


def test_mail_root_is_a_top_directory_where_supported(tmp_path: Path) -> None:
    """ext4's Orlov allocator then spreads queue/ and maildirs/ into block groups of
    their own (best effort: other filesystems keep their behaviour)."""
    import array
    import fcntl

    from lanalyze.mail.queuefile import FS_IOC_GETFLAGS, FS_TOPDIR_FL, mark_top_directory

    layout = Layout(tmp_path)
    layout.create()
    if mark_top_directory(layout.root):
        fd = os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = array.array("i", [0])
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        finally:
            os.close(fd)
        assert flags[0] & FS_TOPDIR_FL
    layout.create()  # idempotent


def test_large_queue_files_are_not_kept(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.create()
    ids = commit(
        layout, [b"Subject: big\r\n\r\n" + b"y" * 5000 + b"\r\n", b"Subject: s\r\n\r\ns\r\n"]
    )
    delivery = MaildirDelivery(layout)
    delivery.recycler.max_size = 1000
    delivery.deliver_batch([str(layout.q("active") / q) for q in ids])
    assert [p.name for p in layout.q("free").iterdir()] == [ids[1]]


class _TakenMeanwhile(list[str]):
    """A stock that looked non-empty, but whose last name another thread popped first."""

    def pop(self, index: int = -1) -> str:
        self.clear()
        raise IndexError("pop from empty list")


def test_a_name_taken_by_another_thread_is_not_an_error(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.create()
    (layout.q("free") / "spare").write_bytes(b"old")
    recycler = Recycler(layout)
    recycler._stock = _TakenMeanwhile(["gone"])
    target = str(layout.q("incoming") / "new-file")
    fd, recycled = recycler.open(target)
    os.close(fd)
    # It listed free/ again and reused the file still there.
    assert recycled
    assert os.path.exists(target)
    assert not (layout.q("free") / "spare").exists()
