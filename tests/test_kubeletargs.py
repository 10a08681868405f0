"""The kubelet extra-args file: labels and the startup taint merged in, everything else kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.config import Config, KubeConfig
from nodeagent.errors import InputError
from nodeagent.host.paths import HostRoot
from nodeagent.host.writer import Writer
from nodeagent.kube import kubeletargs as ka
from nodeagent.kube.node import Taint

TAINT = Taint("readiness.k8s.io/nvidia-gpu-not-ready", "", "NoSchedule")
LABELS = {"gpu": "true", "gpu-type": "H100", "nvidia.com/gpu.count": "8"}


def plan_and_write(tmp_path: Path, labels=LABELS, taint=TAINT) -> list[str]:
    root = HostRoot(tmp_path)
    change = ka.plan(root, ka.DEBIAN_PATH, labels, taint)
    if not change.changed:
        return []
    cfg = Config()
    with Writer(root, cfg.lock_file, cfg.backup_dir, cfg.backup_keep).session() as session:
        session.apply(change)
    return [change.host_path]


def kubelet_file(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "default" / "kubelet"


def systemd_words(text: str) -> list[str]:
    """How systemd would expand $KUBELET_EXTRA_ARGS: read the EnvironmentFile the way a
    shell does (bash sources it: the same quoting rules for this subset), split on spaces."""
    out = subprocess.run(
        ["bash", "-c", 'set -a; . "$0"; printf "%s\\n" $KUBELET_EXTRA_ARGS', "/dev/stdin"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_new_file_gets_labels_and_taint(tmp_path: Path) -> None:
    assert plan_and_write(tmp_path) == [ka.DEBIAN_PATH]
    text = kubelet_file(tmp_path).read_text()
    assert systemd_words(text) == [
        "--node-labels=gpu=true,gpu-type=H100,nvidia.com/gpu.count=8",
        "--register-with-taints=readiness.k8s.io/nvidia-gpu-not-ready:NoSchedule",
    ]
    assert oct(kubelet_file(tmp_path).stat().st_mode & 0o777) == "0o644"


def test_other_flags_lines_and_operator_labels_are_kept(tmp_path: Path) -> None:
    f = kubelet_file(tmp_path)
    f.parent.mkdir(parents=True)
    f.write_text(
        "# managed by hand\n"
        "OTHER=1\n"
        'KUBELET_EXTRA_ARGS="--max-pods=64 --node-labels=team=ml,gpu=false '
        '--register-with-taints=dedicated=gpu:NoSchedule"\n'
        "TRAILER=yes\n"
    )
    plan_and_write(tmp_path)
    text = f.read_text()
    assert text.startswith("# managed by hand\nOTHER=1\n")
    assert text.endswith("TRAILER=yes\n")
    words = systemd_words(text)
    assert words[0] == "--max-pods=64"
    assert "--node-labels=gpu=true,gpu-type=H100,nvidia.com/gpu.count=8,team=ml" in words
    assert (
        "--register-with-taints=dedicated=gpu:NoSchedule,"
        "readiness.k8s.io/nvidia-gpu-not-ready:NoSchedule"
    ) in words


def test_second_run_writes_nothing(tmp_path: Path) -> None:
    plan_and_write(tmp_path)
    st1 = kubelet_file(tmp_path).stat()
    assert plan_and_write(tmp_path) == []
    st2 = kubelet_file(tmp_path).stat()
    assert (st1.st_ino, st1.st_mtime_ns) == (st2.st_ino, st2.st_mtime_ns)


def test_stale_owned_label_removed_operator_label_kept(tmp_path: Path) -> None:
    f = kubelet_file(tmp_path)
    f.parent.mkdir(parents=True)
    f.write_text('KUBELET_EXTRA_ARGS="--node-labels=team=ml"\n')
    plan_and_write(tmp_path, labels={"gpu": "true", "gpu-type": "T4"})
    plan_and_write(tmp_path, labels={"gpu": "true"})  # gpu-type no longer wanted
    words = systemd_words(f.read_text())
    assert "--node-labels=gpu=true,team=ml" in words


def test_backup_kept_before_change(tmp_path: Path) -> None:
    f = kubelet_file(tmp_path)
    f.parent.mkdir(parents=True)
    f.write_text("KUBELET_EXTRA_ARGS=--v=2\n")
    plan_and_write(tmp_path)
    backups = list((tmp_path / "var/lib/nodeagent/backups").glob("kubelet.*.bak"))
    assert [b.read_text() for b in backups] == ["KUBELET_EXTRA_ARGS=--v=2\n"]


def test_unsafe_label_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unsafe kubelet argument"):
        plan_and_write(tmp_path, labels={"a": "$(reboot)"})
    assert not kubelet_file(tmp_path).exists()


def test_unparseable_file_names_the_line(tmp_path: Path) -> None:
    f = kubelet_file(tmp_path)
    f.parent.mkdir(parents=True)
    f.write_text('A=1\nKUBELET_EXTRA_ARGS="--v=2\n')
    before = f.read_bytes()
    with pytest.raises(InputError, match=r"^/etc/default/kubelet:2: cannot parse"):
        plan_and_write(tmp_path)
    assert f.read_bytes() == before


@pytest.mark.parametrize(
    ("os_release", "path"),
    [
        ('ID=debian\nVERSION_ID="12"\n', ka.DEBIAN_PATH),
        ("ID=ubuntu\nID_LIKE=debian\n", ka.DEBIAN_PATH),
        ('ID="centos"\nID_LIKE="rhel fedora"\n', ka.RHEL_PATH),
        ('ID="alinux"\nID_LIKE="rhel fedora centos anolis"\n', ka.RHEL_PATH),
        ('ID="rocky"\n', ka.RHEL_PATH),
        (None, ka.DEBIAN_PATH),
    ],
)
def test_detect_path(os_release: str | None, path: str) -> None:
    assert ka.detect_path(os_release) == path
    assert ka.find_path(KubeConfig(), os_release) == path
    assert ka.find_path(KubeConfig(kubelet_args_file="/etc/x"), os_release) == "/etc/x"


def test_the_startup_taint_is_built_from_the_config() -> None:
    assert ka.startup_taint(KubeConfig()) == TAINT
    assert ka.startup_taint(KubeConfig(startup_taint=False)) is None


label_values = st.from_regex(r"\A([A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?)?\Z")
label_keys = st.from_regex(r"\A([a-z0-9]{1,8}\.)?[a-z0-9]{1,8}/[A-Za-z0-9]{1,10}\Z")


@given(
    existing=st.dictionaries(label_keys, label_values, max_size=5),
    ours=st.dictionaries(label_keys, label_values, max_size=5),
)
@settings(max_examples=100, deadline=None)
def test_merge_round_trips_through_systemd_parsing(existing, ours) -> None:
    start = ka.KubeletArgs(
        args=("--v=2", "--node-labels=" + ",".join(f"{k}={v}" for k, v in existing.items())),
        owned_labels=frozenset(),
    )
    merged = ka.merge(start, ours, TAINT)
    text = ka.render(None, merged)
    again = ka.parse(text, "kubelet")
    assert again == merged
    words = systemd_words(text)
    labels = dict(
        item.split("=", 1)
        for w in words
        if w.startswith("--node-labels=")
        for item in w[len("--node-labels=") :].split(",")
    )
    assert labels == {**existing, **ours}
    assert "--v=2" in words
