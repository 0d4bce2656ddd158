"""File primitives for the log: flock, consistent snapshots, tail reads, durable writes.

Writers hold an exclusive ``flock`` on the log file from reading the last
entry to the fsync of the new line; readers take a shared lock just long
enough to learn how many bytes are complete. ``flock`` locks belong to an
open file description, so two threads of one process exclude each other too
as long as each opens the file itself (every function here does).
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from snapstore.errors import LogError

_TAIL_CHUNK = 64 * 1024


@contextmanager
def locked(path: Path, *, exclusive: bool, create: bool = False) -> Iterator[int | None]:
    """Open ``path`` and hold a flock on it; yields None if it does not exist and ``create`` is false.

    With ``create`` the file is opened ``O_RDWR | O_APPEND | O_CREAT`` so
    every write lands at the end, whatever another writer did.
    """
    flags = (os.O_RDWR | os.O_APPEND | os.O_CREAT) if create else os.O_RDONLY
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        if create:
            raise
        yield None
        return
    except OSError as exc:
        raise LogError(f"cannot open log {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)  # closing the description releases the lock


def read_all(fd: int) -> bytes:
    """Every byte of an open file, read from offset 0."""
    size = os.fstat(fd).st_size
    parts: list[bytes] = []
    offset = 0
    while offset < size:
        block = os.pread(fd, min(size - offset, 1 << 24), offset)
        if not block:
            break
        parts.append(block)
        offset += len(block)
    return b"".join(parts)


def read_last_line(fd: int) -> tuple[bytes | None, bool]:
    """The last non-blank line of an open file and whether it is torn (no final newline).

    Reads backwards from the end in 64 KiB chunks: cost follows the length of
    the last line, not of the file. A torn tail is returned as the last line.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return None, False
    torn = os.pread(fd, 1, size - 1) != b"\n"
    buffer = b""
    position = size
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        buffer = os.pread(fd, position - start, start) + buffer
        position = start
        text = buffer.rstrip()
        cut = text.rfind(b"\n")
        if cut >= 0:
            return text[cut + 1 :], torn
    text = buffer.rstrip()
    return (text or None), torn


def count_lines(fd: int) -> int:
    """Number of lines in an open file, counting a torn tail (used only to name a line in errors)."""
    data = read_all(fd)
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def append_line(fd: int, line: bytes, size_before: int) -> None:
    """Append one full line with a single ``write()`` and fsync it.

    A short write (full disk) is rolled back by truncating to ``size_before``
    so no torn line is left behind; the caller holds the exclusive lock, so
    nobody else wrote after ``size_before``.
    """
    try:
        written = os.write(fd, line)
        if written != len(line):
            # Writing the rest names the reason (usually ENOSPC: the disk is full).
            os.write(fd, line[written:])
            raise OSError(f"short write: {written} of {len(line)} bytes")
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, size_before)
        except OSError:
            pass
        raise LogError(f"cannot append to log: {exc}") from exc


def new_file_mode() -> int:
    """The mode an ordinary new file gets: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_file(path: Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` whole and durably once the block ends.

    The content goes to a temporary file beside ``path``, which is fsynced,
    renamed over ``path`` and followed by an fsync of the folder: a crash
    leaves the old file or the new one, never a mix. If the block raises,
    the temporary file is removed and ``path`` is untouched. ``mode``: the
    new file's permission bits; by default those of the file it replaces,
    else those of any new file (0666 less the umask).
    """
    folder = path.parent if str(path.parent) else Path(".")
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else new_file_mode()
        except OSError:
            mode = new_file_mode()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` whole and durably (see :func:`atomic_file`)."""
    with atomic_file(path, mode) as handle:
        handle.write(data)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a new or renamed entry in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and any missing parents, each durably: its parent is fsynced after it is made.

    ``mkdir(parents=True)`` alone leaves new folders that a power loss can
    take away, and with them whatever was fsynced inside them. Returns the
    folders this call made, outermost first.
    """
    missing = []
    for folder in (directory, *directory.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
            made.append(folder)
        except FileExistsError:
            if not folder.is_dir():
                raise
            # Made by another process a moment ago: its parent is fsynced below all the same.
        fsync_dir(folder.parent)
    return made


@contextmanager
def folders_for(path: Path) -> Iterator[None]:
    """Make the missing folders above ``path`` (see :func:`make_dirs`) for a file the block writes there.

    If the block raises, the folders made here are removed again, innermost
    first, as long as they are empty: an export that fails leaves no trace
    of itself, not even an empty folder. One that is not empty (something
    else wrote there meanwhile) is left, and so are those above it.
    """
    made = make_dirs(path.parent)
    try:
        yield
    except BaseException:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                break
        raise
