"""packaging/debroot.py's build-once step, which the image, e2e and arm64 roots share: built
once, never used half-built, and an interrupted build is redone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import packagingscripts

debroot = packagingscripts.load("debroot")


def test_a_tree_is_built_once_and_marked_complete(tmp_path: Path) -> None:
    calls: list[Path] = []

    def fill(tmp: Path) -> str:
        calls.append(tmp)
        tmp.mkdir()
        (tmp / "etc").mkdir()
        return "built in 0 s"

    first = debroot.cached_root(tmp_path, "root-a", fill)
    again = debroot.cached_root(tmp_path, "root-a", fill)
    assert first == again == tmp_path / "root-a"
    assert len(calls) == 1 and not calls[0].exists()  # built aside, renamed into place
    assert (first / "etc").is_dir()
    assert (first / ".complete").read_text() == "built in 0 s\n"


def test_a_failed_build_leaves_nothing_and_a_half_built_tree_is_redone(tmp_path: Path) -> None:
    def broken(tmp: Path) -> str:
        tmp.mkdir()
        (tmp / "partial").touch()
        raise RuntimeError("debootstrap failed")

    with pytest.raises(RuntimeError, match="debootstrap failed"):
        debroot.cached_root(tmp_path, "root-b", broken)
    assert not (tmp_path / "root-b").exists()

    (tmp_path / "root-b").mkdir()  # a tree left by a build killed before `.complete`
    (tmp_path / "root-b" / "stale").touch()

    def fill(tmp: Path) -> str:
        tmp.mkdir()
        return "ok"

    built = debroot.cached_root(tmp_path, "root-b", fill)
    assert not (built / "stale").exists() and (built / ".complete").exists()


def test_mirror_is_an_http_url() -> None:
    assert debroot.mirror().startswith("http")
