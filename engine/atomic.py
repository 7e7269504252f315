"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash or a kill at any moment leaves either the old file or the new one, never a torn one; the
temporary file a killed writer leaves is deleted by the next write of the same file.

Also the two rules every reader and writer of the program's own files share: :func:`read_regular` (a
file the program owns is read only when it is a regular file: a FIFO, socket or device put in its
place is refused without blocking) and :func:`disk_full` (the one mapping of "the disk is full",
whichever library hit it, to one message naming the folder and the fix; :func:`atomic_open` and
:func:`atomic_write_with` apply it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


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
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = disk_full(exc, path)
        if full is not None:
            raise full from exc
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
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = disk_full(exc, path)
        if full is not None:
            raise full from exc
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


# --- the disk is full -------------------------------------------------------------------------------
class DiskFullError(OSError):
    """A write failed because the disk (or the user's quota) is full; the message names the folder and
    the fix (``folder``, ``cause``: the folder and the words of what failed)."""

    def __init__(self, folder: Path, cause: str, fix: str) -> None:
        said = f" ({cause})" if cause else ""
        super().__init__(f"the disk is full: cannot write in {folder}{said}; free some space there, then "
                         f"{fix or 'run the command again'}")
        self.errno = errno.ENOSPC
        self.folder, self.cause = folder, cause


#: what libraries that do not raise OSError(ENOSPC) say when a write ran out of room: C++ streams
#: (nmslib's saveIndex: "basic_ios::clear: iostream error"), numpy's short writes ("12800 requested and
#: 6080 written"), and C's strerror text
_FULL_TEXTS = re.compile(r"no space left on device|disk quota exceeded|basic_ios::clear|iostream error|"
                         r"\d+ requested and \d+ written", re.IGNORECASE)


def disk_full(exc: BaseException, target: str | os.PathLike, fix: str = "") -> DiskFullError | None:
    """``exc`` as a :class:`DiskFullError` saying "the disk is full" with the folder of ``target`` and
    ``fix`` (the command to run once there is room; default: run the command again), or None when
    ``exc`` is not a full disk (ENOSPC, EDQUOT, or a library's words for a short write). An exception
    already mapped keeps its folder and cause and takes the new ``fix`` when one is given."""
    if isinstance(exc, DiskFullError):
        return DiskFullError(exc.folder, exc.cause, fix) if fix else exc
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    if not full and isinstance(exc, (OSError, RuntimeError, ValueError)) and (
            not isinstance(exc, OSError) or exc.errno is None):
        full = _FULL_TEXTS.search(str(exc)) is not None
    if not full:
        return None
    folder = Path(target) if Path(target).is_dir() else Path(target).parent
    # the system's words (ENOSPC, EDQUOT) are said; a library's own ("basic_ios::clear") are not
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else ""
    return DiskFullError(folder, cause, fix)


# --- reading the program's own files ------------------------------------------------------------------
class NotRegularFileError(OSError):
    """A path where the program expects a regular file it wrote holds something else (FIFO, socket,
    device, folder, symbolic link)."""


def _open_regular(path: str | os.PathLike, limit: int | None) -> IO[bytes]:
    """``path`` opened for reading (binary, blocking) without following a final link and without blocking
    on a FIFO, when it is a regular file of at most ``limit`` bytes; raises as :func:`read_regular`."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a link, a socket, a folder
            raise NotRegularFileError(exc.errno, f"{path} is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(errno.EINVAL, f"{path} is not a regular file (a pipe, socket, device "
                                      "or folder)")
        if limit is not None and st.st_size > limit:
            raise NotRegularFileError(errno.EFBIG, f"{path} is {st.st_size:,} bytes, more than the "
                                      f"{limit:,} it may hold")
        if hasattr(os, "O_NONBLOCK"):  # a regular file: blocking reads from here on
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of ``path``, opened without following a final symbolic link and without blocking (a FIFO
    never hangs the caller), read only when it is a regular file of at most ``limit`` bytes.
    Raises NotRegularFileError (not a regular file, or too large), FileNotFoundError, OSError."""
    with _open_regular(path, limit) as fh:
        data = fh.read() if limit is None else fh.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise NotRegularFileError(errno.EFBIG, f"{path} grew past the {limit:,} bytes it may hold")
    return data


def read_regular_into(path: str | os.PathLike, size: int, out: Any) -> bytes:
    """A file of exactly ``size`` bytes read with the checks of :func:`read_regular`, its last
    ``len(out)`` bytes straight into the writable buffer ``out`` (no copy of a large body, no second
    allocation), the bytes before them returned. Raises NotRegularFileError (not a regular file, or
    larger than ``size``), EOFError (shorter), FileNotFoundError, OSError."""
    body = memoryview(out).cast("B")
    with _open_regular(path, size) as fh:
        head = fh.read(size - body.nbytes)
        got = 0
        while got < body.nbytes and (n := fh.readinto(body[got:])):
            got += n
        if len(head) != size - body.nbytes or got != body.nbytes:
            raise EOFError(f"{path} is shorter than the {size:,} bytes it should hold")
        if fh.read(1):
            raise NotRegularFileError(errno.EFBIG, f"{path} grew past the {size:,} bytes it may hold")
    return head


def read_regular_chunks(path: str | os.PathLike, limit: int, chunk: int = 1 << 22) -> Iterator[bytes]:
    """The bytes of ``path`` in pieces of ``chunk`` bytes (a digest of a large file without holding it in
    memory), with the checks of :func:`read_regular`; never more than ``limit`` bytes: a file that grew
    past it raises NotRegularFileError after its first ``limit`` bytes."""
    with _open_regular(path, limit) as fh:
        got = 0
        while piece := fh.read(min(chunk, limit + 1 - got)):
            got += len(piece)
            if got > limit:
                raise NotRegularFileError(errno.EFBIG, f"{path} grew past the {limit:,} bytes it may hold")
            yield piece


# --- outputs the user names (--csv, -o, the window's exports) ---------------------------------------------
class TargetError(ValueError):
    """An output path that cannot be written safely (a folder, a disk, a FIFO nobody reads...): the message
    names the path and the fix."""


#: names that mean one of this process's open files: written to that file, never opened by name
_STD_NAMES = {"-": 1, "/dev/stdout": 1, "/dev/stderr": 2}
_FD_PREFIXES = ("/dev/fd/", "/proc/self/fd/")


def _std_fd(path: str) -> int | None:
    if path in _STD_NAMES:
        return _STD_NAMES[path]
    for prefix in _FD_PREFIXES:
        if path.startswith(prefix) and path[len(prefix):].isdigit():
            return int(path[len(prefix):])
    return None


def _write_fd(fd: int, data: bytes, shown: str) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except BrokenPipeError:
        raise TargetError(f"the reader of {shown} went away before everything was written") from None
    except OSError as exc:
        raise TargetError(f"cannot write to {shown}: {exc.strerror or exc}") from None


def _shared_folder_link(path: Path, st_link: os.stat_result) -> bool:
    """A symbolic link in a sticky, world-writable folder (/tmp) owned by someone else: the kernel's
    protected_symlinks rule, kept here too because a rename would bypass it."""
    try:
        parent = os.stat(path.parent)
    except OSError:
        return False
    sticky_shared = parent.st_mode & stat.S_ISVTX and parent.st_mode & stat.S_IWOTH
    euid = os.geteuid() if hasattr(os, "geteuid") else st_link.st_uid
    return bool(sticky_shared) and st_link.st_uid not in (euid, parent.st_uid)


def target_kind(path: str | os.PathLike) -> str:
    """What writing an output to ``path`` would do: "fd" ('-', /dev/stdout, /dev/fd/N: this process's file),
    "file" (a regular file or a new name: replaced atomically), "fifo" or "device" (a character device:
    written through, never replaced); TargetError naming the fix for anything else. Never blocks."""
    text = os.fspath(path)
    if _std_fd(text) is not None:
        return "fd"
    p = Path(text)
    try:
        lst = os.lstat(p)
    except FileNotFoundError:
        return "file"  # a new name (its folder is made when missing, as atomic_open does)
    except NotADirectoryError:
        raise TargetError(f"cannot write {text}: a part of its folder is a file, not a folder; give another "
                          "path") from None
    except OSError as exc:
        raise TargetError(f"cannot write {text}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(lst.st_mode):
        if _shared_folder_link(p, lst):
            raise TargetError(f"{text} is a symbolic link in a shared folder, owned by someone else: refused "
                              "(it could point anywhere); give another path")
        try:
            st = os.stat(p)
        except OSError:
            raise TargetError(f"{text} is a symbolic link to {os.readlink(p)!s}, which does not exist: remove "
                              "the link or give the file itself") from None
    else:
        st = lst
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "device"
    if stat.S_ISDIR(mode):
        raise TargetError(f"{text} is a folder: give a file name inside it, e.g. {p / 'out.csv'}")
    if stat.S_ISBLK(mode):
        raise TargetError(f"{text} is a block device (a disk): writing would overwrite it; give a file name")
    if stat.S_ISSOCK(mode):
        raise TargetError(f"{text} is a socket: give a file name")
    raise TargetError(f"{text} is not a regular file: give a file name")


def write_target(path: str | os.PathLike, data: bytes | str, *, durable: bool = True) -> str:
    """Write ``data`` (str: UTF-8) to an output the user named (--csv, -o, the window's exports).

    A regular file or a new name is written atomically (:func:`atomic_open`; through a symbolic link, its
    target is replaced and the link kept). '-', /dev/stdout, /dev/stderr and /dev/fd/N go to this
    process's open file. A FIFO or a character device (/dev/null, a terminal) is written through: opened
    without creating or truncating anything, never replaced by a regular file; a FIFO that nobody reads is
    refused at once instead of waiting. A folder, a disk, a socket or a broken link: TargetError naming the
    fix. Returns the kind (see :func:`target_kind`)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    text = os.fspath(path)
    kind = target_kind(text)
    if kind == "fd":
        fd = _std_fd(text)
        assert fd is not None
        stream = {1: sys.stdout, 2: sys.stderr}.get(fd)
        if stream is None:
            _write_fd(fd, data, text)
        elif hasattr(stream, "buffer"):  # through Python's stream: whatever it holds goes first
            stream.flush()
            stream.buffer.write(data)
            stream.buffer.flush()
        else:
            stream.write(data.decode("utf-8", "surrogateescape"))
            stream.flush()
        return kind
    if kind == "file":
        real = Path(os.path.realpath(text)) if os.path.islink(text) else Path(text)
        try:
            with atomic_open(real, "wb", durable=durable) as fh:
                fh.write(data)
        except PermissionError:  # the temporary file beside it could not be made: say so without its name
            raise TargetError(f"cannot write {text}: no permission to write in the folder {real.parent}; give "
                              "a path in a folder of yours") from None
        return kind
    flags = os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(text, flags)  # neither O_CREAT nor O_TRUNC: the special file stays what it is
    except OSError as exc:
        if kind == "fifo" and exc.errno == errno.ENXIO:
            raise TargetError(f"nobody reads the FIFO {text}: start its reader first (e.g. `cat {text}`), "
                              "or give a file name") from None
        raise TargetError(f"cannot write to {text}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            raise TargetError(f"{text} changed while it was opened: give it again")
        with contextlib.suppress(OSError, AttributeError):
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        _write_fd(fd, data, text)
    finally:
        os.close(fd)
    return kind
