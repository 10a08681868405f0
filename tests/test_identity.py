from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from nodeagent.config import Config
from nodeagent.errors import EXIT_BAD_INPUT, InputError
from nodeagent.host.paths import HostRoot
from nodeagent.kube.identity import node_name


def test_config_wins(tmp_path: Path) -> None:
    cfg = Config(node_name="gpu-7")
    assert node_name(cfg, HostRoot(tmp_path), gethostname=lambda: "Other") == "gpu-7"


def test_hostname_override_from_kubelet_args(tmp_path: Path) -> None:
    f = tmp_path / "etc/sysconfig/kubelet"
    f.parent.mkdir(parents=True)
    f.write_text('KUBELET_EXTRA_ARGS="--v=2 --hostname-override=CN-Hangzhou.i-bp1abc"\n')
    (tmp_path / "etc/os-release").write_text('ID="alinux"\nID_LIKE="rhel fedora centos"\n')
    assert node_name(Config(), HostRoot(tmp_path), gethostname=lambda: "x") == (
        "cn-hangzhou.i-bp1abc"
    )


def test_lower_cased_hostname_otherwise(tmp_path: Path) -> None:
    assert node_name(Config(), HostRoot(tmp_path), gethostname=lambda: "GPU-Node-1\n") == (
        "gpu-node-1"
    )


def test_os_release_that_is_not_a_file_falls_back_to_the_debian_path(tmp_path: Path) -> None:
    # /etc/os-release only picks the default args path: a FIFO there is no reason to fail
    # (nor to wait for a writer), and the Debian path is used.
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc/os-release")
    f = tmp_path / "etc/default/kubelet"
    f.parent.mkdir(parents=True)
    f.write_text('KUBELET_EXTRA_ARGS="--hostname-override=from-debian-path"\n')
    assert node_name(Config(), HostRoot(tmp_path), gethostname=lambda: "x") == "from-debian-path"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (os.mkfifo, "/etc/default/kubelet: a FIFO, not a regular file; refusing to read it"),
        (Path.mkdir, "/etc/default/kubelet: a directory, not a regular file; refusing to read it"),
        (
            lambda p: p.write_bytes(b'KUBELET_EXTRA_ARGS="--hostname-override=n\xff"\n'),
            "/etc/default/kubelet:1:42: not UTF-8 text (byte 0xff); refusing to read it",
        ),
        (
            lambda p: p.write_text('KUBELET_EXTRA_ARGS="--v=2\n'),
            "/etc/default/kubelet:1: cannot parse KUBELET_EXTRA_ARGS: No closing quotation",
        ),
    ],
    ids=["fifo", "directory", "not-utf8", "unbalanced-quote"],
)
def test_a_kubelet_args_file_that_cannot_be_read_is_one_line(
    tmp_path: Path, make: Callable[[Path], object], expected: str
) -> None:
    f = tmp_path / "etc/default/kubelet"
    f.parent.mkdir(parents=True)
    make(f)
    with pytest.raises(InputError) as e:
        node_name(Config(), HostRoot(tmp_path), gethostname=lambda: "x")
    assert str(e.value) == expected
    assert e.value.exit_code == EXIT_BAD_INPUT


def test_crlf_kubelet_args_file(tmp_path: Path) -> None:
    f = tmp_path / "etc/default/kubelet"
    f.parent.mkdir(parents=True)
    f.write_bytes(b'# set by cloud-init\r\nKUBELET_EXTRA_ARGS="--hostname-override=Win-Node"\r\n')
    assert node_name(Config(), HostRoot(tmp_path), gethostname=lambda: "x") == "win-node"
