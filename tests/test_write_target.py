"""engine.atomic.write_target: the outputs a user names (--csv, -o, the window's exports) never replace a FIFO,
a device or a socket with a regular file; a regular file is still replaced atomically (issue 26, item 5)."""

from __future__ import annotations

import os
import select
import socket
import stat
import threading
import time

import pytest

from engine.atomic import TargetError, target_kind, write_target


def test_a_regular_file_or_a_new_name_is_written_atomically(tmp_path):
    target = tmp_path / "out.csv"
    assert write_target(target, "a,b\n") == "file"
    assert target.read_text() == "a,b\n"
    assert write_target(target, b"c\n") == "file" and target.read_bytes() == b"c\n"
    assert write_target(tmp_path / "new" / "deeper.csv", "x") == "file"  # its folder made, as before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_symbolic_link_keeps_pointing_at_its_file(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    write_target(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    broken = tmp_path / "broken.csv"
    broken.symlink_to(tmp_path / "nowhere" / "x.csv")
    with pytest.raises(TargetError, match="does not exist: remove the link"):
        write_target(broken, "x")
    assert broken.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_fifo_without_a_reader_is_refused_at_once_and_kept(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(TargetError, match="nobody reads the FIFO"):
        write_target(fifo, "x")
    assert target_kind(fifo) == "fifo"  # still a FIFO


def test_a_fifo_with_a_reader_is_written_through(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    got: list[bytes] = []
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the reader is there before the writer

    def read() -> None:
        # a FIFO read before any writer has opened it says end of file: read until the end that follows data
        chunks: list[bytes] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            select.select([fd], [], [], 0.1)
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if chunk:
                chunks.append(chunk)
            elif chunks:
                break
            else:
                time.sleep(0.005)  # no writer yet
        got.append(b"".join(chunks))

    t = threading.Thread(target=read)
    t.start()
    payload = b"row\n" * 50_000  # more than a pipe holds: the writer waits for the reader
    assert write_target(fifo, payload) == "fifo"
    t.join(10)
    os.close(fd)
    assert got == [payload] and target_kind(fifo) == "fifo"


def _device(tmp_path, minor: int):
    """/dev/null (minor 3) or /dev/full (7): as root a private node of that kind (a broken write_target would
    replace only the copy: an unfixed program run as root once replaced this machine's /dev/null), else
    the real one, which a user cannot replace."""
    if os.geteuid() != 0:
        return "/dev/null" if minor == 3 else "/dev/full"
    node = tmp_path / f"dev-{minor}"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except OSError:
        pytest.skip("root without the right to make device nodes")
    return str(node)


def test_character_devices_are_written_through_never_replaced(tmp_path):
    null = _device(tmp_path, 3)
    assert write_target(null, "x" * 1000) == "device"
    assert target_kind(null) == "device" and stat.S_ISCHR(os.lstat(null).st_mode)
    full = _device(tmp_path, 7)
    if os.path.exists(full):
        with pytest.raises(TargetError, match="cannot write to"):
            write_target(full, "x")
        assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_stdout_names_go_to_this_process_stdout(capsys):
    for name in ("-", "/dev/stdout"):
        assert write_target(name, f"via {name}\n") == "fd"
    assert capsys.readouterr().out == "via -\nvia /dev/stdout\n"


def test_folders_sockets_and_file_parents_are_refused_naming_the_fix(tmp_path):
    with pytest.raises(TargetError, match="is a folder: give a file name inside it"):
        write_target(tmp_path, "x")
    sock_path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(sock_path))
        with pytest.raises(TargetError, match="is a socket"):
            write_target(sock_path, "x")
    finally:
        s.close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(TargetError, match="part of its folder is a file"):
        write_target(tmp_path / "file" / "out.csv", "x")


def test_a_folder_without_write_permission_is_named_not_the_temporary_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(TargetError, match="no permission to write in the folder"):
            write_target(locked / "out.csv", "x")
    finally:
        locked.chmod(0o700)
