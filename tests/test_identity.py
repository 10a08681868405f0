from __future__ import annotations

from pathlib import Path

from nodeagent.config import Config
from nodeagent.kube.identity import node_name
from nodeagent.paths import HostRoot


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
