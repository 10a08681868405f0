"""Crash consistency: ``kill -9`` at every step of every write sequence.

For each sequence (docker's daemon.json, containerd's config.toml + drop-in, the kubelet's
args, and the rollback of each), the real CLI first runs under tests/crashpoint.py with
``--trace`` to list every ``write``/``fsync``/``replace``/``unlink`` it makes. Then, on a
fresh copy of the host for each step and for each side of it (before and after the call),
the process is killed there (``SIGKILL``: no cleanup runs, as in a power cut), and:

* every file is either its old or its new self, byte for byte — never torn, never half;
* containerd accepts what is there (``containerd config dump``: the real binary, which
  refuses an ``imports`` entry naming a missing file);
* running the same command again converges to the new state, and leaves no temp file.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import yaml

from tests.hostfiles import CONTAINERD_TOML, CT, DI, DJ, KA, TEMP_MARK
from tests.realparts import skip_or_fail

REPO = Path(__file__).resolve().parents[1]

DAEMON_JSON = '{\r\n    "log-driver": "json-file",\r\n    "live-restore": true\r\n}\r\n'
STOCK_TOML = '#   containerd.io\'s stock config: all comments\n#root = "/var/lib/containerd"\n'
KUBELET = "# site\nKUBELET_EXTRA_ARGS=--v=2\n"

State = dict[str, Optional[bytes]]


@dataclasses.dataclass(frozen=True)
class Sequence:
    """One write sequence: the host before, the command, the files it may change."""

    id: str
    engine: str
    files: tuple[str, ...]
    command: tuple[str, ...]
    initial: dict[str, str]  # host path -> text, written before anything runs
    before: tuple[tuple[str, ...], ...] = ()  # commands that bring the host to "old"
    config: dict[str, Any] = dataclasses.field(default_factory=dict)


CONFIGURE = ("runtime", "configure")
SEQUENCES = [
    Sequence("docker-configure", "docker", (DJ,), CONFIGURE, {DJ: DAEMON_JSON}),
    Sequence("docker-configure-created", "docker", (DJ,), CONFIGURE, {}),
    Sequence("containerd-configure", "containerd", (CT, DI), CONFIGURE, {CT: CONTAINERD_TOML}),
    Sequence("containerd-configure-stock", "containerd", (CT, DI), CONFIGURE, {CT: STOCK_TOML}),
    Sequence(
        "containerd-configure-in-place",
        "containerd",
        (CT, DI),
        CONFIGURE,
        {CT: CONTAINERD_TOML},
        config={"runtime": {"containerd": {"use_drop_in": False}}},
    ),
    Sequence(
        "bootstrap-kubelet-args",
        "docker",
        (DJ, KA),
        ("apply", "--phase", "bootstrap"),
        {DJ: DAEMON_JSON, KA: KUBELET},
    ),
    Sequence(
        "bootstrap-kubelet-args-created", "none", (KA,), ("apply", "--phase", "bootstrap"), {}
    ),
    Sequence("docker-rollback", "docker", (DJ,), ("rollback",), {DJ: DAEMON_JSON}, (CONFIGURE,)),
    Sequence("docker-rollback-created", "docker", (DJ,), ("rollback",), {}, (CONFIGURE,)),
    Sequence(
        "containerd-rollback",
        "containerd",
        (CT, DI),
        ("rollback",),
        {CT: CONTAINERD_TOML},
        (CONFIGURE,),
    ),
    Sequence(
        "containerd-rollback-in-place",
        "containerd",
        (CT, DI),
        ("rollback",),
        {CT: CONTAINERD_TOML},
        (CONFIGURE,),
        config={"runtime": {"containerd": {"use_drop_in": False}}},
    ),
]


class Host:
    """A fresh scratch root for one run of a sequence."""

    def __init__(self, root: Path, seq: Sequence, env: dict[str, str]) -> None:
        self.root = root
        self.seq = seq
        self.env = env
        cfg: dict[str, Any] = {
            "node_name": "gpu-node-1",
            "runtime": {"engine": seq.engine, "verify_timeout_s": 1},
            "kube": {"api_deadline_s": 2},
            "daemon": {"metrics_listen": ""},
        }
        for k, v in seq.config.items():
            cfg[k] = {**cfg.get(k, {}), **v}
        self.file("/etc/nodeagent/config.yaml", yaml.safe_dump(cfg))
        for host_path, text in seq.initial.items():
            self.file(host_path, text)
        for cmd in seq.before:
            r = self.agent(*cmd)
            assert r.returncode == 0, r.stdout + r.stderr

    def p(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def file(self, host_path: str, text: str) -> None:
        path = self.p(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())

    def state(self) -> State:
        return {f: self.p(f).read_bytes() if self.p(f).exists() else None for f in self.seq.files}

    def agent(self, *args: str, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "tests.crashpoint", *wrap, "--"] if wrap else [
            sys.executable, "-m", "nodeagent"
        ]  # fmt: skip
        return subprocess.run(
            [*argv, "--root", str(self.root), *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def junk(self) -> list[str]:
        return [str(p) for p in self.root.rglob(f"*{TEMP_MARK}*")]

    def containerd_accepts(self) -> str:
        """'' when containerd loads the root's config.toml (and every file it imports)."""
        if not self.p(CT).exists():
            return ""
        p = subprocess.run(
            ["containerd", "--config", str(self.p(CT)), "config", "dump"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=self.root,
        )
        return "" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["?"])[-1]


@pytest.fixture
def hosts(tmp_path: Path, fake_nvml: Any) -> Iterator[Callable[[Sequence, str], Host]]:
    env = {**fake_nvml.env("h100x8"), "PYTHONPATH": str(REPO)}

    def make(seq: Sequence, name: str) -> Host:
        return Host(tmp_path / name / "root", seq, env)

    yield make


def trace(make: Callable[[Sequence, str], Host], seq: Sequence) -> list[tuple[str, str]]:
    """Every intercepted call of one undisturbed run: (op, path)."""
    h = make(seq, "trace")
    log = h.root.parent / "trace.log"
    r = h.agent(*seq.command, wrap=("--trace", str(log)))
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [tuple(line.split(" ", 1)) for line in log.read_text().splitlines()]
    return [(op, path) for op, path in calls]


@pytest.mark.parametrize("seq", SEQUENCES, ids=[s.id for s in SEQUENCES])
def test_kill_at_every_step(seq: Sequence, hosts: Callable[[Sequence, str], Host]) -> None:
    if seq.engine == "containerd" and shutil.which("containerd") is None:
        skip_or_fail("containerd", "the containerd binary is not installed")
    old = hosts(seq, "old").state()
    done = hosts(seq, "new")
    r = done.agent(*seq.command)
    assert r.returncode == 0, r.stdout + r.stderr
    new = done.state()
    assert new != old, "the sequence changes nothing: nothing to crash"
    calls = trace(hosts, seq)
    assert any(op == "replace" for op, _ in calls), calls
    seen: dict[str, int] = {}
    for i, (op, path) in enumerate(calls):
        seen[op] = seen.get(op, 0) + 1
        for when in ("before", "after"):
            where = f"step {i + 1}/{len(calls)}: kill {when} {op} {path}"
            h = hosts(seq, f"{i}-{when}")
            wrap = ("--op", op, "--nth", str(seen[op]), "--when", when, "--action", "kill")
            killed = h.agent(*seq.command, wrap=wrap)
            assert killed.returncode == -9, f"{where}: not reached ({killed.returncode})"
            now = h.state()
            for f in seq.files:
                assert now[f] in (old[f], new[f]), f"{where}: {f} is neither old nor new"
            if seq.engine == "containerd":
                problem = h.containerd_accepts()
                assert problem == "", f"{where}: containerd refuses the config: {problem}"
            again = h.agent(*seq.command)
            assert again.returncode == 0, f"{where}: the next run failed: {again.stdout}"
            assert "Traceback" not in again.stdout + again.stderr, again.stderr
            assert h.state() == new, f"{where}: the next run did not converge"
            assert h.junk() == [], f"{where}: temp files left: {h.junk()}"


def test_the_oracle_sees_a_missing_import(tmp_path: Path) -> None:
    """The containerd check above is not vacuous: the state a wrong rollback order leaves
    (config.toml still importing a drop-in that is gone) is refused by containerd."""
    if shutil.which("containerd") is None:
        skip_or_fail("containerd", "the containerd binary is not installed")
    seq = Sequence("oracle", "none", (CT, DI), ("rollback",), {})
    h = Host.__new__(Host)
    h.root, h.seq, h.env = tmp_path, seq, {}
    h.file(CT, 'version = 2\nimports = ["conf.d/99-nvidia.toml"]\n')
    assert "no such file" in h.containerd_accepts()
    h.file(DI, "version = 2\n")
    assert h.containerd_accepts() == ""
