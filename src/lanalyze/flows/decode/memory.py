"""Let glibc keep freed memory for reuse instead of returning it to the kernel.

Each decoded batch allocates a few MiB of fresh column arrays that live until the store has
written them. With glibc's defaults, arrays above the (dynamic) mmap threshold, and freed heap
tops above the trim threshold, go back to the kernel, so the next batch page-faults all of its
memory in again; in the VMs this project runs on that costs more than the decoding itself
(v5: 7.5 ms a 30 000-flow batch with the defaults, 2.5 ms with this; see docs/performance.md).
Fixing the thresholds keeps the process's peak working set (bounded by the batch size) mapped.

Applied once per process by the first :class:`~lanalyze.flows.decode.FlowDecoder`; a no-op
where the C library has no ``mallopt`` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
"""glibc's maximum on 64-bit systems."""
TRIM_THRESHOLD = 256 * 2**20


@functools.cache
def keep_freed_memory() -> bool:
    """Tunes malloc once for this process; True if it was applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
