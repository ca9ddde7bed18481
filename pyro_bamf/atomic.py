"""Atomic file replacement: nothing half-written is ever left at the destination."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TRIES = 100


def _new_file_beside(path: Path) -> Path:
    """Create an empty file under a fresh random name beside ``path`` and return its path.

    The file is created with mode 0o666, so the kernel applies the umask (0o644 under the usual
    0o022), unlike ``tempfile.mkstemp`` whose files are always 0o600.
    """
    for _ in range(_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path} after {_TRIES} tries")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; publish it with ``os.replace`` on success.

    The caller writes (and may validate) the temporary file inside the ``with`` block. If the
    block raises, the temporary file is deleted and ``path`` is left untouched; otherwise the
    temporary file atomically replaces ``path``. The parent folder is created if needed. The
    file gets the permissions the umask gives new files (0o666 & ~umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
