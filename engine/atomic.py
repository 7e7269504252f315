"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash or a kill at any moment leaves either the old file or the new one, never a torn one; the
temporary file a killed writer leaves is deleted by the next write of the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, named ``.<name>.<pid>.<random>.tmp``, after removing the
    ones of earlier writers of ``path`` that were killed (their process is gone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file 0600; the file it becomes gets the mode of any new file (0644 under umask 022)
    with contextlib.suppress(OSError, AttributeError, NotImplementedError):
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def _umask() -> int:
    """The process's umask, read without changing it where /proc tells it (Linux), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def sweep_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers of ``path`` left beside it (a kill -9 between the
    write and the rename); the files of writers still running are kept. Returns what was deleted."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            name = p.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            pid = name[len(prefix):].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", durable: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on clean exit it replaces ``path`` atomically. ``durable=False``
    skips the fsyncs: still never half-written, but a power cut may lose it (for caches that are rebuilt)."""
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (``durable``: as :func:`atomic_open`)."""
    with atomic_open(path, "wb", durable=durable) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Atomically produce ``path`` with a library writer that insists on a file name.

    ``writer(tmp_path)`` writes the whole file to ``tmp_path`` (e.g. ``torch.save``, nmslib's
    ``saveIndex``); it is then fsynced and renamed over ``path``.
    """
    path = Path(path)
    fd, tmp = _temporary(path)
    os.close(fd)
    try:
        writer(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to disk."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (renames, new files) to disk, where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
