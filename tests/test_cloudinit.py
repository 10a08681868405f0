"""The cloud-init user data in cloud-init/: what a cloud user pastes must work as pasted.

Each example must pass cloud-init's own schema check, write a nodeagent config that
nodeagent accepts, call nodeagent only with valid command lines, bootstrap before the
kubelet joins and start the daemon after, and never make cloud-final.service wait on a
unit that waits on the boot (docs/install.md, /work/shared/notes/e2e-boot.md).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from nodeagent.cli.main import build_parser
from nodeagent.config import DEFAULT_CONFIG_PATH, Config, parse
from tests.realparts import skip_or_fail
from tests.test_units import DAEMON, is_writable, load, writable_dirs

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = REPO / "cloud-init"
EXAMPLES = sorted(EXAMPLE_DIR.glob("*.yaml"))
PREBAKED = EXAMPLE_DIR / "prebaked-image.yaml"
INSTALLERS = [p for p in EXAMPLES if p.name.startswith("install-")]

SHELL_OPERATORS = {";", "&&", "||", "|", "&", "(", ")"}


def ids(p: Path) -> str:
    return p.name


def user_data(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def commands(path: Path) -> list[list[str]]:
    """Every simple command runcmd runs, in order: a list item is one argv; a string is a
    line of sh, split at ; && || | into its commands."""
    out: list[list[str]] = []
    for item in user_data(path).get("runcmd", []):
        if isinstance(item, list):
            out.append([str(w) for w in item])
            continue
        lex = shlex.shlex(str(item), posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        current: list[str] = []
        for token in lex:
            if token in SHELL_OPERATORS:
                if current:
                    out.append(current)
                current = []
            else:
                current.append(token)
        if current:
            out.append(current)
    return out


def program(argv: list[str]) -> tuple[str, list[str]]:
    """The program's base name and its arguments, past VAR=value assignments."""
    i = 0
    while i < len(argv) and "=" in argv[i] and not argv[i].startswith("-"):
        i += 1
    return PurePosixPath(argv[i]).name, argv[i + 1 :]


def index_of(cmds: list[list[str]], pred: Any, what: str) -> int:
    for i, argv in enumerate(cmds):
        if pred(*program(argv)):
            return i
    raise AssertionError(f"no runcmd command {what}")


def is_bootstrap(prog: str, args: list[str]) -> bool:
    if prog == "nodeagent":
        a = build_parser().parse_args(args)
        return bool(a.command == "apply" and a.phase == "bootstrap" and not a.dry_run)
    return prog == "systemctl" and "start" in args and "nodeagent-bootstrap.service" in args


def is_join(prog: str, args: list[str]) -> bool:
    return prog == "kubeadm" and args[:1] == ["join"]


def starts_daemon(prog: str, args: list[str]) -> bool:
    return (
        prog == "systemctl"
        and "nodeagent.service" in args
        and bool({"start", "restart"} & set(args) or ("enable" in args and "--now" in args))
    )


def written_config(path: Path) -> tuple[dict[str, Any], Config]:
    entries = [
        f for f in user_data(path).get("write_files", []) if f.get("path") == DEFAULT_CONFIG_PATH
    ]
    assert len(entries) == 1, f"{path.name}: write {DEFAULT_CONFIG_PATH} exactly once"
    entry = entries[0]
    assert entry.get("encoding") in (None, "text/plain"), "keep the config readable"
    return entry, parse(entry["content"], f"{path.name}:{DEFAULT_CONFIG_PATH}")


# --- cloud-init's own check ---------------------------------------------------------------


def schema(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cloud-init")
    if exe is None:
        skip_or_fail("cloud-init", "cloud-init not installed (apt-get install cloud-init)")
        raise AssertionError("unreachable")
    return subprocess.run(
        [exe, "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LANG": "C.UTF-8"},
    )


def test_the_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"install-from-repo.yaml", "install-from-url.yaml", "prebaked-image.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_cloud_init_schema_accepts_it(path: Path) -> None:
    assert path.read_text(encoding="utf-8").startswith("#cloud-config\n")
    proc = schema(path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"Valid cloud-config: {path}" in out
    assert "deprecat" not in out.lower(), out


def test_cloud_init_schema_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a runcmd that is not a list, a write_files entry whose
    permissions are not a string."""
    text = (EXAMPLE_DIR / "install-from-repo.yaml").read_text(encoding="utf-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.split("\nruncmd:")[0] + "\nruncmd: 5\n", encoding="utf-8")
    proc = schema(broken)
    assert proc.returncode != 0
    assert "runcmd" in proc.stdout + proc.stderr


# --- the nodeagent config each one writes -------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_the_config_it_writes_is_valid(path: Path) -> None:
    entry, cfg = written_config(path)
    assert entry.get("owner") == "root:root"
    assert entry.get("permissions") == "0644"
    assert cfg != Config(), "an example config should show the keys a user sets"
    assert cfg.kube.startup_taint is True
    assert cfg.runtime.engine in ("docker", "containerd")


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_its_textfile_is_writable_by_the_daemon(path: Path) -> None:
    _, cfg = written_config(path)
    textfile = cfg.daemon.metrics_textfile
    assert textfile, "the examples show daemon.metrics_textfile"
    parent = str(PurePosixPath(textfile).parent)
    assert is_writable(parent, writable_dirs(load(DAEMON))), (
        f"{path.name}: {parent} is read-only under nodeagent.service"
    )
    if cfg.kube.kubelet_args_file:
        parent = str(PurePosixPath(cfg.kube.kubelet_args_file).parent)
        assert is_writable(parent, writable_dirs(load(DAEMON)))


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_the_join_matches_the_runtime(path: Path) -> None:
    """docker behind the kubelet means cri-dockerd; containerd is kubeadm's default."""
    _, cfg = written_config(path)
    cmds = commands(path)
    join = cmds[index_of(cmds, is_join, "joining the cluster")]
    cri = " ".join(join[join.index("--cri-socket") + 1 :][:1]) if "--cri-socket" in join else ""
    if cfg.runtime.engine == "docker":
        assert "cri-dockerd" in cri
    else:
        assert cri == "" or "containerd" in cri
    assert any("REPLACE" in word for word in join), "the join's placeholders are marked"


# --- the commands -------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_every_nodeagent_command_is_valid(path: Path) -> None:
    calls = [args for prog, args in map(program, commands(path)) if prog == "nodeagent"]
    assert calls, f"{path.name} runs nodeagent"
    for args in calls:
        try:
            build_parser().parse_args(args)
        except SystemExit as e:  # argparse's error exit
            pytest.fail(f"{path.name}: `nodeagent {shlex.join(args)}` is not valid ({e})")


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_bootstrap_then_join_then_daemon(path: Path) -> None:
    cmds = commands(path)
    bootstrap = index_of(cmds, is_bootstrap, "bootstrapping")
    join = index_of(cmds, is_join, "joining the cluster")
    daemon = index_of(cmds, starts_daemon, "starting nodeagent.service")
    assert bootstrap < join < daemon


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_runcmd_never_waits_for_the_daemon(path: Path) -> None:
    """runcmd runs inside cloud-final.service: a blocking start of the Type=notify daemon,
    ordered after units of the boot, could make cloud-final wait for itself."""
    for argv in commands(path):
        prog, args = program(argv)
        if starts_daemon(prog, args):
            assert "--no-block" in args, f"{path.name}: {shlex.join(argv)}"


@pytest.mark.parametrize("path", INSTALLERS, ids=ids)
def test_installers_install_the_package_before_running_it(path: Path) -> None:
    data = user_data(path)
    cmds = commands(path)
    first_use = index_of(cmds, lambda prog, _: prog == "nodeagent", "running nodeagent")
    from_packages = "nodeagent" in data.get("packages", [])
    from_deb = any(
        prog == "apt-get" and "install" in args and any("nodeagent_" in a for a in args)
        for prog, args in map(program, cmds[:first_use])
    )
    assert from_packages or from_deb
    if from_packages:  # from a repository the example adds
        assert data.get("apt", {}).get("sources") or data.get("yum_repos")
    if from_deb:  # checked before it is installed
        assert any(program(argv)[0] == "sha256sum" for argv in cmds[:first_use])
        # write_files put config.yaml where the package's conffile goes: dpkg must keep it
        # without asking (cloud-init's own `packages:` install passes the same option).
        installs = [args for prog, args in map(program, cmds[:first_use]) if prog == "apt-get"]
        assert all("Dpkg::Options::=--force-confold" in args for args in installs)


def test_the_prebaked_image_installs_nothing() -> None:
    data = user_data(PREBAKED)
    assert not {"packages", "apt", "yum_repos", "package_update"} & set(data)
    assert not any(program(argv)[0] in ("apt-get", "yum", "dnf") for argv in commands(PREBAKED))
