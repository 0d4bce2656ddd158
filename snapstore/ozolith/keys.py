"""The signing key: given explicitly, or kept in ``.ozolith_key`` beside the log.

As in the client, the key file holds a hex string (``secrets.token_hex(32)``,
no newline, mode 0600), read back with surrounding whitespace stripped; the
HMAC key bytes are that string encoded, not its hex decoding.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from snapstore.errors import LogError

from .entry import key_bytes
from .files import fsync_dir, make_dirs

KEY_FILE_NAME = ".ozolith_key"


class KeyFileError(LogError):
    """The key file is missing, empty or unreadable."""


def default_key_file(log_path: Path) -> Path:
    """Where the client keeps the key of ``log_path``."""
    return log_path.parent / KEY_FILE_NAME


def read_key_file(path: Path) -> bytes:
    """Read a key file; raise KeyFileError if it is missing or empty."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise KeyFileError(f"no key file at {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
    if not text:
        raise KeyFileError(f"key file {path} is empty")
    return key_bytes(text)


def create_key_file(path: Path) -> bytes:
    """Create a new key file atomically (mode 0600); if another process won the race, use theirs.

    The key is written to a private temporary file, fsynced, then hard-linked
    into place, so no reader ever sees a half-written key and two creators
    cannot end up with different keys. The folder is fsynced once the
    temporary name is gone: a power loss keeps the key's name, and no stray
    copy of the key beside it.
    """
    key = secrets.token_hex(32)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=KEY_FILE_NAME + ".")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_key_file(path)
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return key_bytes(key)


def resolve_key(
    log_path: Path,
    key: str | bytes | None = None,
    key_file: str | os.PathLike[str] | None = None,
    *,
    create: bool,
) -> bytes:
    """The key bytes for a log: ``key`` if given, else the key file (created if ``create``)."""
    if key is not None:
        if not key:
            raise KeyFileError("the key must not be empty")
        return key_bytes(key)
    path = Path(key_file) if key_file is not None else default_key_file(log_path)
    try:
        return read_key_file(path)
    except KeyFileError:
        if not create or path.exists():
            raise
    return create_key_file(path)

