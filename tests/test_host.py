"""The one reader and the one writer of host files (nodeagent/host), on real files.

The cases that need root (tmpfs, read-only bind mounts, ``chattr +i``, device nodes,
another user) skip on a laptop and never under CI (tests/realparts.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.errors import InputError, NodeagentError, StepFailed
from nodeagent.host.change import FileChange
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import FileMeta, Layout, expect, read_optional, read_text
from nodeagent.host.writer import Backups, HostLock, Writer, sweep_temps, write_file
from tests.realparts import skip_or_fail

HOST = "/etc/docker/daemon.json"


def needs_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail("root", "needs root")


def junk(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*nodeagent-tmp*"))


@pytest.fixture
def root(tmp_path: Path) -> HostRoot:
    (tmp_path / "etc/docker").mkdir(parents=True)
    return HostRoot(tmp_path)


def writer(root: HostRoot, keep: int = 10) -> Writer:
    return Writer(root, "/run/nodeagent/nodeagent.lock", "/var/lib/nodeagent/backups", keep)


def change(root: HostRoot, new: str | None, host_path: str = HOST, **kw: object) -> FileChange:
    current = read_text(root.path(host_path), host_path)
    return FileChange.of(root.path(host_path), host_path, current, new, **kw)  # type: ignore[arg-type]


# --- the reader ---------------------------------------------------------------------------------


def test_absent_is_none_and_text_is_read(root: HostRoot) -> None:
    assert read_text(root.path(HOST), HOST) is None
    root.path(HOST).write_text('{"a": 1}\n')
    found = read_text(root.path(HOST), HOST)
    assert found is not None
    assert (found.text, found.layout, found.shown) == ('{"a": 1}\n', Layout("\n", True), HOST)


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: p.mkdir(), "a directory, not a regular file"),
        (lambda p: os.mkfifo(p), "not a regular file"),  # no writer: ENXIO-free O_NONBLOCK open
    ],
)
def test_not_a_regular_file_is_one_line_and_never_a_wait(root: HostRoot, make, what) -> None:
    make(root.path(HOST))
    with pytest.raises(InputError) as e:
        read_text(root.path(HOST), HOST)
    assert str(e.value).startswith(f"{HOST}: ")
    assert what in str(e.value)


def test_a_device_is_refused(root: HostRoot) -> None:
    needs_root()
    os.mknod(root.path(HOST), 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null
    with pytest.raises(InputError, match="a device, not a regular file"):
        read_text(root.path(HOST), HOST)


def test_a_fifo_with_a_writer_is_refused_too(root: HostRoot) -> None:
    fifo = root.path(HOST)
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer is attached
    try:
        with pytest.raises(InputError, match="a FIFO, not a regular file"):
            read_text(fifo, HOST)
    finally:
        os.close(holder)


def test_size_is_capped_before_reading(root: HostRoot) -> None:
    root.path(HOST).write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(InputError, match="larger than the 1024 KiB"):
        read_text(root.path(HOST), HOST)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            '{"a": "é"}'.encode("utf-16"),
            f"{HOST}:1:1: UTF-16 text (byte-order mark); save it as UTF-8",
        ),
        (b'{"a": 1}\n{"b": "\xff"}', f"{HOST}:2:8: not UTF-8 text (byte 0xff)"),
        (b"\xef\xbb", f"{HOST}:1:1: not UTF-8 text (byte 0xef)"),
    ],
)
def test_undecodable_bytes_are_named(root: HostRoot, data: bytes, message: str) -> None:
    root.path(HOST).write_bytes(data)
    with pytest.raises(InputError) as e:
        read_text(root.path(HOST), HOST)
    assert str(e.value).startswith(message)


def test_unreadable_is_a_failed_step_not_bad_input(root: HostRoot, tmp_path: Path) -> None:
    needs_root()
    root.path(HOST).write_text("{}")
    root.path(HOST).chmod(0o600)
    code = (
        "import sys; from nodeagent.host.reader import read_text; from pathlib import Path\n"
        "from nodeagent.errors import NodeagentError\n"
        "try:\n    read_text(Path(sys.argv[1]), 'daemon.json')\n"
        "except NodeagentError as e:\n    print(type(e).__name__, e)\n"
    )
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", code, str(root.path(HOST))],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=30,
    )  # fmt: skip
    assert r.stdout.startswith("StepFailed daemon.json: cannot read: Permission denied"), r.stderr


def test_crlf_is_handed_over_as_lf_and_mixed_endings_as_they_are() -> None:
    assert Layout.of("a\r\nb\r\n") == Layout("\r\n", True)
    assert Layout.of("a\r\nb\n") == Layout("\n", True)  # mixed: left alone
    assert Layout.of('{"a": 1}') == Layout("\n", False)
    crlf = Layout("\r\n", False)
    assert crlf.render(crlf.normalize("a\r\nb")) == "a\r\nb"
    assert crlf.render("a\nb\nc\n") == "a\r\nb\r\nc"


def test_read_optional_never_raises(root: HostRoot) -> None:
    os.mkfifo(root.path("/etc/os-release"))
    assert read_optional(root.path("/etc/os-release")) is None
    assert read_optional(root.path("/etc/absent")) is None
    root.path("/etc/hostname").write_bytes(b"gpu-\xff1\n")
    assert read_optional(root.path("/etc/hostname")) == "gpu-\ufffd1\n"


def test_shape_check_names_the_key_path() -> None:
    expect({}, dict, HOST, "runtimes")
    with pytest.raises(InputError) as e:
        expect(None, dict, HOST, "runtimes")
    assert str(e.value) == f"{HOST}: 'runtimes' must be an object, not null"
    with pytest.raises(InputError, match="'plugins' must be a table, not a number"):
        expect(5, dict, "config.toml", "plugins", "a table")
    with pytest.raises(InputError, match="must be an integer, not a boolean"):
        expect(True, int, "config.toml", "version")


# --- root containment --------------------------------------------------------------------------


def test_root_refuses_relative_dotdot_and_empty(root: HostRoot) -> None:
    with pytest.raises(InputError, match="must be absolute"):
        root.path("etc/x")
    with pytest.raises(InputError, match=r"may not contain '\.\.'"):
        root.path("/var/lib/../../../tmp/x")
    with pytest.raises(InputError, match="--root: empty"):
        HostRoot.of("")


def test_symlinks_resolve_inside_the_root(root: HostRoot) -> None:
    real = root.path("/srv/docker/daemon.json")
    real.parent.mkdir(parents=True)
    root.path(HOST).symlink_to("/srv/docker/daemon.json")  # absolute: the host's /srv
    assert root.resolve(HOST) == (real, "/srv/docker/daemon.json")
    os.symlink("../../../../../../srv/x", root.path("/etc/up"))  # never above the root
    assert root.resolve("/etc/up") == (root.path("/srv/x"), "/srv/x")
    os.symlink("/etc/loop", root.path("/etc/loop"))
    with pytest.raises(InputError, match="too many levels of symbolic links"):
        root.resolve("/etc/loop")


# --- the writer --------------------------------------------------------------------------------


def test_write_keeps_owner_mode_crlf_and_final_newline(root: HostRoot) -> None:
    path = root.path(HOST)
    path.write_bytes(b'{\r\n  "a": 1\r\n}')
    path.chmod(0o640)
    c = change(root, '{\n  "a": 1,\n  "b": 2\n}\n')
    with writer(root).session() as s:
        s.apply(c)
    assert path.read_bytes() == b'{\r\n  "a": 1,\r\n  "b": 2\r\n}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert junk(root.root) == []


def test_write_goes_through_a_symlink(root: HostRoot) -> None:
    real = root.path("/srv/daemon.json")
    real.parent.mkdir(parents=True)
    real.write_text("{}\n")
    real.chmod(0o600)
    root.path(HOST).symlink_to("/srv/daemon.json")
    with writer(root).session() as s:
        s.apply(change(root, '{"a": 1}\n'))
    assert root.path(HOST).is_symlink()
    assert os.readlink(root.path(HOST)) == "/srv/daemon.json"
    assert real.read_text() == '{"a": 1}\n'
    assert stat.S_IMODE(real.stat().st_mode) == 0o600


def test_a_derived_file_is_never_more_readable_than_its_source(root: HostRoot) -> None:
    drop_in = "/etc/containerd/conf.d/99-nvidia.toml"
    source = FileMeta(uid=os.geteuid(), gid=os.getegid(), mode=0o600)
    with writer(root).session() as s:
        s.apply(change(root, "version = 2\n", drop_in, limit=source))
    assert stat.S_IMODE(root.path(drop_in).stat().st_mode) == 0o600
    root.path(drop_in).chmod(0o644)  # written by an older agent: narrowed on the next write
    with writer(root).session() as s:
        s.apply(change(root, "version = 3\n", drop_in, limit=source))
    assert stat.S_IMODE(root.path(drop_in).stat().st_mode) == 0o600


def test_restore_and_backups_undo_exactly(root: HostRoot) -> None:
    path = root.path(HOST)
    path.write_bytes(b'{"a":1}\r\n')
    path.chmod(0o604)
    w = writer(root)
    with w.session() as s:
        restore = s.apply(change(root, '{"a": 2}\n'))
        created = s.apply(change(root, "x\n", "/etc/docker/new.json"))
    with w.session():
        restore.undo()
        created.undo()
    assert path.read_bytes() == b'{"a":1}\r\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o604
    assert not root.path("/etc/docker/new.json").exists()
    newest = w.backups.newest(root.path("/etc/docker/new.json"))
    assert newest is not None and newest.absent  # the file did not exist before


def test_undone_copies_are_kept_but_never_offered(root: HostRoot) -> None:
    b = Backups(root.path("/var/lib/nodeagent/backups"), keep=2)
    path = root.path(HOST)
    first = b.save(path, b"1", FileMeta(0, 0, 0o644))
    b.save(path, b"2", FileMeta(0, 0, 0o644), suffix="undone")
    newest = b.newest(path)
    assert newest is not None and newest.path == first
    b.save(path, b"3", FileMeta(0, 0, 0o644))
    third = b.save(path, None, FileMeta(0, 0, 0o644))
    assert [x.path for x in b.list(path)] == [b.list(path)[0].path, third]
    assert len(b.list(path)) == 2  # keep=2 pruned the oldest


def test_backup_keep_zero_still_keeps_one(root: HostRoot) -> None:
    w = writer(root, keep=0)
    root.path(HOST).write_text("{}\n")
    with w.session() as s:
        s.apply(change(root, '{"a": 1}\n'))
    assert len(w.backups.list(root.path(HOST))) == 1


def test_raced_sees_another_writer(root: HostRoot) -> None:
    root.path(HOST).write_text("{}\n")
    c = change(root, '{"a": 1}\n')
    with writer(root).session() as s:
        assert not s.raced([c])
        root.path(HOST).write_text('{"b": 1}\n')
        assert s.raced([c])


def test_apply_all_undoes_the_earlier_writes_when_a_later_one_fails(root: HostRoot) -> None:
    root.path(HOST).write_text("{}\n")
    root.path("/etc/blocked").mkdir()  # a directory where the second file should go
    first = change(root, '{"a": 1}\n')
    second = FileChange(root.path("/etc/blocked"), "/etc/blocked", None, "x\n")
    with writer(root).session() as s, pytest.raises(NodeagentError):
        s.apply_all([first, second])
    assert root.path(HOST).read_text() == "{}\n"


def test_stale_temps_of_dead_writers_are_swept(root: HostRoot) -> None:
    d = root.path("/etc/docker")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (d / f".daemon.json.nodeagent-tmp-{dead}-0000").write_text("half")
    (d / f".daemon.json.nodeagent-tmp-{os.getppid()}-0000").write_text("a live writer's")
    assert sweep_temps(d) == 1
    assert junk(d) == [f".daemon.json.nodeagent-tmp-{os.getppid()}-0000"]


def test_lock_problems_are_one_line(root: HostRoot) -> None:
    root.path("/run/nodeagent/nodeagent.lock").mkdir(parents=True)
    with pytest.raises(InputError, match="the lock file is a directory"), writer(root).session():
        pass
    lock = root.path("/run/x.lock")
    with HostLock(lock), pytest.raises(StepFailed, match="another nodeagent holds the lock"):  # noqa: SIM117
        with HostLock(lock, timeout_s=0.1):
            pass


# --- errno at write time (root: real mounts and attributes) -------------------------------------


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[None]:
    subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def _assert_untouched(root: HostRoot, before: bytes) -> None:
    assert root.path(HOST).read_bytes() == before
    assert junk(root.root) == []


def test_full_filesystem_is_one_line_and_changes_nothing(root: HostRoot) -> None:
    needs_root()
    etc = root.path("/etc/docker")
    with mounted(etc, "-t", "tmpfs", "-o", "size=64k", "tmpfs"):
        before = b'{"a": 1}\n'
        root.path(HOST).write_bytes(before)
        with contextlib.suppress(OSError), open(etc / "filler", "wb") as f:
            f.write(b"\0" * 128 * 1024)
        with pytest.raises(StepFailed) as e, writer(root).session() as s:
            s.apply(change(root, '{"a": 1, "b": "' + "x" * 8192 + '"}\n'))
        assert str(e.value) == f"{HOST}: cannot write: the filesystem is full; nothing changed"
        _assert_untouched(root, before)


def test_read_only_filesystem_is_one_line(root: HostRoot) -> None:
    needs_root()
    before = b"{}\n"
    root.path(HOST).write_bytes(before)
    etc = root.path("/etc/docker")
    with mounted(etc, "--bind", str(etc)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(etc)], check=True)
        with (
            pytest.raises(StepFailed, match="mounted read-only; nothing changed"),
            writer(root).session() as s,
        ):
            s.apply(change(root, '{"a": 1}\n'))
        _assert_untouched(root, before)


def test_immutable_file_is_one_line(root: HostRoot) -> None:
    needs_root()
    if shutil.which("chattr") is None:
        skip_or_fail("chattr", "e2fsprogs not installed")
    before = b"{}\n"
    root.path(HOST).write_bytes(before)
    if subprocess.run(["chattr", "+i", str(root.path(HOST))], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable attribute")  # tmpfs/overlay
    try:
        with (
            pytest.raises(StepFailed, match=r"not permitted \(immutable"),
            writer(root).session() as s,
        ):
            s.apply(change(root, '{"a": 1}\n'))
        _assert_untouched(root, before)
    finally:
        subprocess.run(["chattr", "-i", str(root.path(HOST))], check=False)


def test_write_file_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()  # rename of a file over a directory fails
    with pytest.raises(StepFailed, match="cannot write"):
        write_file(tmp_path / "target", b"x", FileMeta(os.geteuid(), os.getegid(), 0o644))
    assert junk(tmp_path) == []
