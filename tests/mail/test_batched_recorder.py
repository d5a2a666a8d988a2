"""The index writer gathers rows: one write call per interval, and nothing lost at stop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from lanalyze.mail.cleanup import BatchedRecorder


def test_rows_of_many_batches_are_written_together_and_flushed_at_close() -> None:
    calls: list[list[int]] = []

    def write(items: list[int]) -> None:
        if items == [99]:
            raise RuntimeError("a broken index must not stop the recorder")
        calls.append(list(items))

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            recorder: BatchedRecorder[int] = BatchedRecorder(write, executor, delay=0.05)
            for batch in ([1, 2], [3], [4, 5]):
                recorder.add(batch)
            for _ in range(100):
                if calls:
                    break
                await asyncio.sleep(0.01)
            recorder.add([99])
            for _ in range(100):
                if recorder._running is None and recorder._timer is None:
                    break
                await asyncio.sleep(0.01)
            recorder.add([6])
            await recorder.close()

    asyncio.run(scenario())
    assert calls == [[1, 2, 3, 4, 5], [6]]
