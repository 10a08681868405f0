"""Fuzzing the host-file editors and the config loader: `python -m bench.fuzz --seconds N`.

Three targets, each fed by Hypothesis from seeds (valid files as hosts hold them) through
byte-level mutations (flips, inserted bytes and syntax tokens, deletions, duplications,
splices of two seeds, long runs of one byte, deep nesting, BOMs, CRLFs) and structural
ones (a value anywhere in the parsed seed replaced by a generated one of any type, the
document re-serialised):

* ``docker``: daemon.json bytes on a scratch ``--root`` → the reader, ``jsonedit`` and the
  docker engine's ``read`` + ``plan``; when the plan writes, the new text must parse again,
  and a plan on it must change nothing (whatever the agent writes, it accepts next time);
* ``containerd``: config.toml bytes → the containerd engine's ``read`` + ``plan``, with the
  same write-then-replan check over every file the plan writes;
* ``config``: config.yaml bytes → ``nodeagent.config.load`` (the reader, then ``parse``).

Anything raised that is not a ``NodeagentError`` is a crash; a broken write-then-replan
check is a finding too. Each distinct finding (exception type and innermost nodeagent
frame) is printed with its smallest input and saved under ``build/fuzz/``. ``--write``
records how long it ran and what it found in docs/reliability.md. Every crash found has a
case in tests/test_hostile.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.common import write_section
from tests.hostfiles import CONTAINERD_TOML, CRI

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
OUT = REPO / "build" / "fuzz"
BATCH = 200  # inputs per Hypothesis run; runs repeat until the time is up

DAEMON_JSON_SEEDS = [
    b"",
    b"{}\n",
    b'{\n    "log-driver": "json-file",\n    "live-restore": true\n}\n',
    b'{"insecure-registries": ["10.0.0.5:5000"], "registry-mirrors": ["https://m.example"],'
    b' "log-opts": {"max-size": "100m", "max-file": "3"}, "storage-driver": "overlay2"}',
    b'{\r\n\t"runtimes": {\r\n\t\t"nvidia": {\r\n\t\t\t"path": "nvidia-container-runtime",'
    b'\r\n\t\t\t"runtimeArgs": []\r\n\t\t}\r\n\t},\r\n\t"default-runtime": "nvidia"\r\n}\r\n',
    b'{"runtimes": {"crun": {"path": "/usr/bin/crun"}, "nvidia": {"path": "/old/path",'
    b' "runtimeArgs": ["--debug"]}}, "default-runtime": "crun", "exec-opts":'
    b' ["native.cgroupdriver=systemd"]}',
]
CONFIG_TOML_SEEDS = [
    b"",
    b"version = 2\n",
    b'#   containerd.io stock config\n#disabled_plugins = ["cri"]\n#root = "/var/lib/containerd"\n',
    (
        CONTAINERD_TOML
        + f"""  [plugins."{CRI}".registry.configs."reg.example.com".auth]
    username = "robot"
    password = "secret"
"""
    ).encode(),
    b'version = 2\nimports = ["/etc/containerd/conf.d/*.toml", "extra.toml"]\n'
    b'[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n'
    b'  runtime_type = ""\n  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia'
    b'.options]\n    BinaryName = "/usr/bin/nvidia-container-runtime"\n',
    b'version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd]\n'
    b'  default_runtime_name = "runc"\n',
]
CONFIG_YAML_SEEDS = [
    b"",
    b"# nothing\n",
    b"node_name: gpu-1\nruntime:\n  engine: docker\n  restart_mode: reload\n",
    b"labels:\n  static:\n    team: ml\n  skip: [gpu-type]\n  prefix: example.com\n"
    b"kube:\n  api_deadline_s: 30\n  kubelet_args_file: /etc/default/kubelet\n"
    b"daemon:\n  xid_ignore: [13, 31]\n  metrics_listen: 127.0.0.1:9410\n"
    b"  metrics_textfile: /var/lib/node_exporter/nodeagent.prom\n",
    b"runtime:\n  docker:\n    pidfile: /run/docker.pid\n    reload_command: [systemctl, reload,"
    b" docker]\n  containerd:\n    use_drop_in: false\nbackup_keep: 3\n",
]
TOKENS = {
    "docker": [b"{", b"}", b"[", b"]", b'"', b":", b",", b"null", b"5", b"1e999", b"-0",
               b'"runtimes"', b'"nvidia"', b'"default-runtime"', b"\\u0000", b"\\ud800"],
    "containerd": [b"[", b"]", b"[[", b"]]", b'"', b"=", b"\n", b"version = ", b"imports",
                   b"plugins.", b"'", b'"""', b"inf", b"nan", b"1979-05-27", b"{", b"}"],
    "config": [b":", b"-", b"? ", b"&a ", b"*a", b"!!python/object", b"!!binary", b"[", b"]",
               b"{", b"}", b".nan", b".inf", b"~", b"\t", b"---\n", b"%YAML 1.1\n", b"'"],
}  # fmt: skip
COMMON = [b"\r\n", b"\r", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\xc3", b"\xe2\x80\xa8", b"\\"]


# --- generated inputs ------------------------------------------------------------------------

_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def byte_mutation(draw: st.DrawFn, seeds: Sequence[bytes], tokens: Sequence[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        kinds = ("flip", "bytes", "token", "delete", "dup", "splice", "long", "deep")
        kind = draw(st.sampled_from(kinds))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            data[min(pos, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif kind == "bytes":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "token":
            data[pos:pos] = draw(st.sampled_from([*tokens, *COMMON])) * draw(st.integers(1, 3))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 32))]
        elif kind == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "splice":
            other = draw(st.sampled_from(seeds))
            data[pos:] = other[draw(st.integers(0, len(other))) :]
        elif kind == "long":  # a run of one byte: huge numbers, long lines and keys
            run = draw(st.sampled_from((b"9", b"a", b" ", b"\\", b"#", b"\n")))
            data[pos:pos] = run * draw(st.sampled_from((100, 5000, 70000)))
        else:
            depth = draw(st.sampled_from((10, 100, 1000, 20000)))
            opening, closing = draw(st.sampled_from(((b"[", b"]"), (b"{", b"}"), (b"[{", b"}]"))))
            data[pos:pos] = opening * depth + closing * draw(st.sampled_from((0, depth)))
    return bytes(data)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


@st.composite
def structural(
    draw: st.DrawFn,
    seeds: Sequence[bytes],
    load: Callable[[str], Any],
    dump: Callable[[Any], str],
) -> bytes:
    """A seed parsed, one value anywhere replaced by a generated one, serialised again."""
    doc = load(draw(st.sampled_from([s for s in seeds if s.strip()])).decode())
    path = draw(st.sampled_from(_paths(doc)))
    try:
        return dump(_replace(doc, path, draw(_values))).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError, OverflowError):  # not expressible in this format
        return dump(doc).encode()


def _toml_dump(value: Any) -> str:
    import tomlkit

    return tomlkit.dumps(value if isinstance(value, dict) else {"x": value})


def _toml_load(text: str) -> Any:
    import tomlkit

    return tomlkit.parse(text).unwrap()


def _yaml_dump(value: Any) -> str:
    import yaml

    return str(yaml.safe_dump(value, allow_unicode=True))


def _yaml_load(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


# --- the targets -----------------------------------------------------------------------------


class Replan(Exception):
    """The write-then-replan check failed: the agent does not accept what it wrote."""


@dataclasses.dataclass
class Target:
    name: str
    inputs: st.SearchStrategy[bytes]
    run: Callable[[Path, bytes], None]


def _scratch(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)


def _write(root: Path, host_path: str, data: bytes) -> None:
    path = root / host_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _engine(kind: str, root: Path) -> Any:
    from nodeagent.config import Config, RuntimeConfig
    from nodeagent.host.paths import HostRoot
    from nodeagent.runtime.registry import make_engine

    cfg = Config(runtime=RuntimeConfig(engine=kind, restart_mode="none"))
    return make_engine(kind, cfg, HostRoot(root))


def _plan_twice(kind: str, root: Path) -> None:
    """Plan; write what the plan writes (plain files, as the writer would); plan again:
    the second plan must change nothing."""
    engine = _engine(kind, root)
    plan = engine.plan(engine.read())
    if not plan.changed:
        return
    for change in plan.changes:
        if change.changed:
            if change.new is None:
                change.path.unlink()
            else:
                _write(root, change.host_path, change.layout.render(change.new).encode())
    again = _engine(kind, root).plan(_engine(kind, root).read())
    if again.changed:
        raise Replan(f"the second plan changes {[c.host_path for c in again.changes if c.changed]}")


def run_docker(root: Path, data: bytes) -> None:
    from nodeagent.errors import NodeagentError
    from nodeagent.runtime.docker import jsonedit

    _scratch(root)
    _write(root, "/etc/docker/daemon.json", data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    try:  # the editor alone: render(parse(text)) parses to the same data
        doc = jsonedit.parse(text, "daemon.json")
        if jsonedit.parse(jsonedit.render(doc), "rendered").data != doc.data:
            raise Replan("render(parse(text)) parses to other data")
    except NodeagentError:
        pass
    _plan_twice("docker", root)


def run_containerd(root: Path, data: bytes) -> None:
    _scratch(root)
    _write(root, "/etc/containerd/config.toml", data)
    _plan_twice("containerd", root)


def run_config(root: Path, data: bytes) -> None:
    from nodeagent import config

    _scratch(root)
    _write(root, "/etc/nodeagent/config.yaml", data)
    config.load(root / "etc/nodeagent/config.yaml")


def targets() -> list[Target]:
    def inputs(name: str, seeds: list[bytes], load: Any, dump: Any) -> st.SearchStrategy[bytes]:
        return st.one_of(byte_mutation(seeds, TOKENS[name]), structural(seeds, load, dump))

    def json_dump(v: Any) -> str:
        return json.dumps(v, indent=4, ensure_ascii=False)

    return [
        Target("docker", inputs("docker", DAEMON_JSON_SEEDS, json.loads, json_dump), run_docker),
        Target(
            "containerd",
            inputs("containerd", CONFIG_TOML_SEEDS, _toml_load, _toml_dump),
            run_containerd,
        ),
        Target("config", inputs("config", CONFIG_YAML_SEEDS, _yaml_load, _yaml_dump), run_config),
    ]


# --- the loop --------------------------------------------------------------------------------


@dataclasses.dataclass
class Finding:
    target: str
    signature: str
    error: str
    data: bytes
    count: int = 1


@dataclasses.dataclass
class Result:
    target: str
    seconds: float
    examples: int
    findings: list[Finding]
    slowest_s: float


def _signature(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/nodeagent/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(e).__name__} at {where}"


def fuzz(target: Target, seconds: float, scratch: Path) -> Result:
    from nodeagent.errors import NodeagentError

    found: dict[str, Finding] = {}
    examples = 0
    slowest = 0.0
    deadline = time.monotonic() + seconds
    root = scratch / target.name / "root"
    sink = io.StringIO()

    @settings(
        max_examples=BATCH,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(target.inputs)
    def one(data: bytes) -> None:
        nonlocal examples, slowest
        if time.monotonic() > deadline:
            return  # the rest of this batch: time is up
        examples += 1
        t0 = time.monotonic()
        try:
            with contextlib.redirect_stderr(sink):  # the agent's warnings, not findings
                target.run(root, data)
        except NodeagentError:
            pass
        except Exception as e:  # the finding: anything else
            sig = _signature(e)
            old = found.get(sig)
            if old is None:
                found[sig] = Finding(target.name, sig, f"{type(e).__name__}: {e}"[:300], data)
                print(f"\n{target.name}: CRASH {sig}: {e!s:.200}\n  input: {data[:400]!r}")
            else:
                old.count += 1
                if len(data) < len(old.data):
                    old.data = data
        slowest = max(slowest, time.monotonic() - t0)

    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Hypothesis on the size of a huge input's repr
        while time.monotonic() < deadline:
            one()  # a batch: Hypothesis draws fresh random inputs for each
    return Result(target.name, time.monotonic() - started, examples, list(found.values()), slowest)


def save(findings: list[Finding]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(findings):
        (OUT / f"{f.target}-{i}.bin").write_bytes(f.data)


def report(results: list[Result]) -> str:
    lines = [
        f"Run of {time.strftime('%Y-%m-%d', time.gmtime())} on Python "
        f"{sys.version.split()[0]}, Hypothesis-generated inputs "
        "(`.venv/bin/python -m bench.fuzz --seconds N --write`):",
        "",
        "| target | seconds | inputs | distinct crashes | slowest input |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.target} | {r.seconds:.0f} | {r.examples} | {len(r.findings)} | "
            f"{r.slowest_s * 1000:.0f} ms |"
        )
    found = [f for r in results for f in r.findings]
    lines.append("")
    if not found:
        lines.append("No input raised anything but a `NodeagentError`, and every write re-planned")
        lines.append("to no change.")
    for f in found:
        lines.append(
            f"- {f.target}: `{f.signature}` ({f.count}x), e.g. `{f.data[:80]!r}`: {f.error[:160]}"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60, help="total, split between the targets")
    p.add_argument("--target", choices=("docker", "containerd", "config"), action="append")
    p.add_argument("--write", action="store_true", help="record the run in docs/reliability.md")
    args = p.parse_args(argv)
    chosen = [t for t in targets() if not args.target or t.name in args.target]
    scratch = Path(tempfile.mkdtemp(prefix="nodeagent-fuzz."))
    try:
        results = [fuzz(t, args.seconds / len(chosen), scratch) for t in chosen]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = report(results)
    print(text)
    findings = [f for r in results for f in r.findings]
    save(findings)
    if args.write:
        write_section("fuzz", text, doc=DOC)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
