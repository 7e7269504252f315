"""Authentication of what the program writes into its caches: an HMAC-SHA256 keyed by this installation.

Why an HMAC and not a checksum: the CRC-32s a collection's manifest carries catch a disk error, but anyone
who can copy or edit a cache (another user's collection copied in, a synced folder, an attacker) can
recompute them, and a tampered HNSW graph that passes its CRC crashes nmslib or silently returns wrong
results. An HMAC cannot be recomputed without its key, and the key is not in the cache: it is a random
secret of 32 bytes kept in the user's config folder (:func:`engine.vocabulary.config_root`), created on
first use (mode 0600, atomically: two processes starting at once end up with the same key). So a cache
file is trusted only when this installation wrote it.

What it costs: nothing is hashed twice. A collection (engine.collection) MACs its manifest, which names
every file with its size and digest, so one MAC check covers the whole commit and each file is then
checked against its own digest as it is read: SHA-256 for the small files a parser or nmslib reads
(segment metadata, graph, graph ids), the CRC-32 the vectors already had (their one pass stays the one
pass of before; a changed vector row can only change scores, and rows are checked finite and normalised).

Functions: :func:`key` (the installation's secret), :func:`sign` / :func:`verify` (of bytes or of a JSON
value in canonical form), :func:`canonical`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from engine.atomic import NotRegularFileError, fsync_dir, read_regular
from engine.vocabulary import config_root

KEY_FILE = "cache-key"
KEY_BYTES = 32

_lock = threading.Lock()
_keys: dict[str, bytes] = {}


class InstallationKeyError(OSError):
    """The installation's key cannot be read or made; the message names the file and the fix."""


def key_path() -> Path:
    """Where this installation's secret lives: ``<config_root>/cache-key``."""
    return config_root() / KEY_FILE


def key() -> bytes:
    """This installation's secret (32 random bytes), made on first use: written to a private temporary
    file (0600) and linked into place, so a second process racing the first reads the first one's key."""
    path = key_path()
    with _lock:
        got = _keys.get(str(path))
        if got is not None:
            return got
        got = _read_key(path)
        if got is None:
            got = _make_key(path)
        _keys[str(path)] = got
        return got


def _read_key(path: Path) -> bytes | None:
    try:
        data = read_regular(path, limit=4096)
    except FileNotFoundError:
        return None
    except (NotRegularFileError, OSError) as exc:
        raise InstallationKeyError(f"cannot read this installation's cache key {path} ({exc}); delete it (the "
                        "collections it signed are then indexed again: `retrieval-explorer index DIR "
                        "--rebuild`) or set RETRIEVAL_EXPLORER_CONFIG to another folder") from None
    text = data.decode("ascii", "replace").strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise InstallationKeyError(f"this installation's cache key {path} is damaged; delete it (the collections it "
                        "signed are then indexed again: `retrieval-explorer index DIR --rebuild`)")
    return raw


def _make_key(path: Path) -> bytes:
    raw = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.parent / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(raw.hex() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # fails if another process made it first: theirs wins
            except FileExistsError:
                pass
            fsync_dir(path.parent)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except OSError as exc:
        raise InstallationKeyError(f"cannot create this installation's cache key in {path.parent} ({exc.strerror or exc});"
                        " make that folder writable or set RETRIEVAL_EXPLORER_CONFIG to a writable folder") \
            from None
    got = _read_key(path)
    if got is None:  # pragma: no cover - linked a moment ago
        raise InstallationKeyError(f"cannot create this installation's cache key {path}")
    return got


def canonical(value: Any) -> bytes:
    """A JSON value as the bytes a MAC covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8",
                                                                                              "surrogatepass")


def sign(data: bytes | Any) -> str:
    """The hex HMAC-SHA256 of ``data`` (bytes, or a JSON value in :func:`canonical` form) under :func:`key`."""
    raw = data if isinstance(data, (bytes, bytearray, memoryview)) else canonical(data)
    return hmac.new(key(), raw, hashlib.sha256).hexdigest()


def verify(data: bytes | Any, mac: Any) -> bool:
    """True when ``mac`` is :func:`sign` of ``data`` (compared in constant time); False for anything
    else, a missing or malformed ``mac`` included."""
    if not isinstance(mac, str) or len(mac) != 64:
        return False
    return hmac.compare_digest(sign(data), mac)


def sha256_bytes(data: bytes | memoryview) -> str:
    """The hex SHA-256 of bytes already read (a file's digest, as a signed manifest names it)."""
    return hashlib.sha256(data).hexdigest()
