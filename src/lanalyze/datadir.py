"""Private files under ``general.data_dir``: directories 0700, files 0600, whatever the umask.

What lanalyze stores is nobody else's business on a shared machine: flows say who talks to
whom, ``exporters.json`` names the routers, the mail side keeps messages and addresses. A
process started under the usual umask 022 would create everything world-readable, so every
directory and file under the data directory is created through these helpers with an
explicit mode (docs/security.md, "Files"). Directories that already exist keep their mode (an
administrator may have opened one to a group on purpose); files written by write-then-rename
get the private mode on the temporary, which the rename keeps.

Nothing here reads input from a peer: paths come from our own code and the configuration.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dirs(path: Path) -> None:
    """``mkdir -p`` creating each missing directory 0700 (Path.mkdir(parents=True) gives the
    parents the umask's default mode). Several processes may race to create the same one."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_private_dirs(path.parent)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not path.is_dir():
                raise
            return
    # The umask may have taken more than group and other bits; 0700 is what we mean.
    os.chmod(path, DIR_MODE)


def open_private(path: Path) -> int:
    """A file descriptor of ``path`` created or truncated for writing, mode 0600.

    ``fchmod`` too: ``O_CREAT``'s mode applies only when the file is new, and a leftover
    temporary of a crash (or a file of an older version) may carry another one.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: Path) -> None:
    """Create (or empty) ``path`` with mode 0600 for a library that opens it by name.

    pyarrow opens its output with ``O_TRUNC`` and no mode of ours: an existing file keeps
    its mode, so creating it first makes the Parquet file private from its first byte.
    """
    os.close(open_private(path))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, suffix: str = ".tmp") -> None:
    """Replace ``path`` with ``data`` (mode 0600) so a reader (or a crash) sees the old or the
    new file; missing directories are created 0700."""
    make_private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}{suffix}")
    fd = open_private(tmp)
    with open(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def tighten(path: Path, mode: int) -> None:
    """Drop group and other bits an older version (or an umask) left on ``path``."""
    try:
        current = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)
        if current & 0o077:
            os.chmod(path, mode, follow_symlinks=False)
    except FileNotFoundError:
        pass


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """``(inode, mtime_ns, size)`` of ``path``, None when it is absent: what a reader of a file
    other processes rewrite (write-then-rename) compares to notice a change without reading
    it (the console's revoked sessions and API tokens)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
