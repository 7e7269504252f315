"""engine.images.scan_images: folder symlinks are followed with loop protection, and every file or
folder left out for a problem is reported with its reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from engine.images import scan_images


def _jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path, "JPEG")
    return path


def _rel(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_symlinked_class_folder_is_read_under_the_root(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    _jpeg(root / "cats" / "1.jpg")
    _jpeg(elsewhere / "dogs" / "2.jpg")
    _jpeg(elsewhere / "dogs" / "sub" / "3.png")
    os.symlink(elsewhere / "dogs", root / "dogs")
    skipped: list[tuple[str, str]] = []
    found = scan_images(root, skipped=skipped)
    # the files keep their path inside the root (not resolved to elsewhere/)
    assert _rel(found, root) == ["cats/1.jpg", "dogs/2.jpg", "dogs/sub/3.png"]
    assert all(str(p).startswith(str(root)) for p in found)
    assert skipped == []
    assert scan_images(root) == found  # without the report: the same list


def test_symlink_loop_terminates_and_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _jpeg(root / "a" / "1.jpg")
    os.symlink(root, root / "a" / "back")  # a -> back -> root -> a ...
    os.symlink("self", root / "self")  # a link to itself: ELOOP
    skipped: list[tuple[str, str]] = []
    found = scan_images(root, skipped=skipped)
    assert _rel(found, root) == ["a/1.jpg"]
    reasons = dict(skipped)
    assert "symbolic link loop" in reasons[str(root / "a" / "back")]
    assert "symbolic link loop" in reasons[str(root / "self")]


def test_the_same_folder_twice_is_read_once_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _jpeg(root / "a" / "1.jpg")
    os.symlink(root / "a", root / "b")
    skipped: list[tuple[str, str]] = []
    assert _rel(scan_images(root, skipped=skipped), root) == ["a/1.jpg"]
    assert skipped == [(str(root / "b"), f"the same folder as {root / 'a'}, already read")]


def test_dangling_links_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _jpeg(root / "ok.jpg")
    os.symlink(tmp_path / "gone.jpg", root / "dangling.jpg")
    os.symlink(tmp_path / "gone-folder", root / "class-link")
    skipped: list[tuple[str, str]] = []
    assert _rel(scan_images(root, skipped=skipped), root) == ["ok.jpg"]
    reasons = dict(skipped)
    assert "broken symbolic link" in reasons[str(root / "dangling.jpg")]
    assert "broken symbolic link" in reasons[str(root / "class-link")]
    flat: list[tuple[str, str]] = []
    assert _rel(scan_images(root, recursive=False, skipped=flat), root) == ["ok.jpg"]
    assert [p for p, _ in flat] == [str(root / "dangling.jpg")]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads every folder: an unreadable folder cannot be made")
def test_unreadable_subfolder_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _jpeg(root / "ok" / "1.jpg")
    _jpeg(root / "locked" / "2.jpg")
    (root / "locked").chmod(0)
    try:
        skipped: list[tuple[str, str]] = []
        assert _rel(scan_images(root, skipped=skipped), root) == ["ok/1.jpg"]
        assert len(skipped) == 1 and skipped[0][0] == str(root / "locked")
        assert "permission denied" in skipped[0][1]
    finally:
        (root / "locked").chmod(0o755)


def test_unreadable_subfolder_is_reported_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same path for root, who can read a mode-000 folder: scandir refuses that folder
    root = tmp_path / "data"
    _jpeg(root / "ok" / "1.jpg")
    _jpeg(root / "locked" / "2.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == root / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped: list[tuple[str, str]] = []
    assert _rel(scan_images(root, skipped=skipped), root) == ["ok/1.jpg"]
    assert skipped == [(str(root / "locked"), "folder cannot be read (permission denied)")]
