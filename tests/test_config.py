"""Config loading: defaults, every type and rule checked, errors as one `PATH:LINE: ...` line."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import config
from nodeagent.config import Config, FieldError, Range, RuntimeConfig
from nodeagent.errors import EXIT_BAD_INPUT, InputError

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "configuration.md").read_text()


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def load_error(tmp_path: Path, text: str) -> str:
    """The message ``config.load`` gives for ``text``, without the ``PATH:`` in front."""
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        config.load(p)
    assert e.value.exit_code == EXIT_BAD_INPUT
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}:")
    return msg[len(str(p)) + 1 :]


def fields(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """(dotted key, field) of every leaf key of the config."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def nested(key: str, value: str) -> str:
    """YAML setting the dotted ``key`` to the YAML text ``value``; the key is on the last line."""
    *parents, leaf = key.split(".")
    lines = [f"{'  ' * i}{p}:" for i, p in enumerate(parents)]
    return "\n".join([*lines, f"{'  ' * len(parents)}{leaf}: {value}"]) + "\n"


# --- loading -------------------------------------------------------------------------------


def test_missing_file_is_all_defaults(tmp_path: Path) -> None:
    assert config.load(tmp_path / "nope.yaml") == Config()


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        config.load(tmp_path / "nope.yaml", must_exist=True)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_all_defaults(tmp_path: Path, text: str) -> None:
    assert config.load(write(tmp_path, text)) == Config()


def test_crlf_file_loads(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_bytes(b"runtime:\r\n  engine: docker\r\nbackup_keep: 3\r\n")
    cfg = config.load(p)
    assert (cfg.runtime.engine, cfg.backup_keep) == ("docker", 3)


def test_full_config_round_trips(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
node_name: gpu-node-1
nvml_library: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
no_gpu_is_error: false
backup_keep: 3
labels:
  gfd: false
  static:
    train: "true"
    example.com/pool: a100
    empty: ""
  skip: [nvidia.com/gpu.machine]
  prefix: gpu.example.com
runtime:
  engine: docker
  path: /usr/bin/nvidia-container-runtime
  restart_mode: reload
  verify_timeout_s: 5
  docker:
    pidfile: /run/docker.pid
    restart_command: [/bin/true]
daemon:
  xid_ignore: [13, 31]
  heartbeat_jitter: 0
""",
    )
    cfg = config.load(p)
    assert cfg.node_name == "gpu-node-1"
    assert cfg.no_gpu_is_error is False
    assert cfg.backup_keep == 3
    assert cfg.labels.gfd is False
    assert cfg.labels.static == {"train": "true", "example.com/pool": "a100", "empty": ""}
    assert cfg.labels.skip == ("nvidia.com/gpu.machine",)
    assert cfg.labels.prefix == "gpu.example.com"
    assert cfg.runtime.engine == "docker"
    assert cfg.runtime.path == "/usr/bin/nvidia-container-runtime"
    assert cfg.runtime.restart_mode == "reload"
    assert cfg.runtime.verify_timeout_s == 5.0
    assert cfg.runtime.docker.pidfile == "/run/docker.pid"
    assert cfg.runtime.docker.restart_command == ("/bin/true",)
    assert cfg.daemon.xid_ignore == (13, 31)
    assert cfg.daemon.heartbeat_jitter == 0.0
    # untouched keys keep their defaults
    assert cfg.runtime.containerd == Config().runtime.containerd


# --- the file itself: through the one host reader ------------------------------------------


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    os.mkfifo(p)
    with pytest.raises(InputError, match=r": a FIFO, not a regular file") as e:
        config.load(p)
    assert e.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), ": a directory, not a regular file; refusing to read it"),
        (lambda p: p.write_bytes(b"node_name: n\xe9\n"), ":1:13: not UTF-8 text (byte 0xe9)"),
        (
            lambda p: p.write_bytes("node_name: n\n".encode("utf-16")),
            ":1:1: UTF-16 text (byte-order mark); save it as UTF-8",
        ),
        (
            lambda p: p.write_bytes(b"#" * (1024 * 1024 + 1)),
            ": 1048577 bytes, larger than the 64 KiB this file may have",
        ),
        (
            lambda p: p.write_bytes(b"#" * (64 * 1024 + 1)),
            ": 65537 bytes, larger than the 64 KiB this file may have",
        ),
    ],
    ids=["directory", "latin-1", "utf-16", "over-1-MiB", "over-64-KiB"],
)
def test_a_file_that_is_not_a_small_utf8_file(tmp_path: Path, make: Any, expected: str) -> None:
    p = tmp_path / "config.yaml"
    make(p)
    with pytest.raises(InputError) as e:
        config.load(p, must_exist=True)
    assert e.value.exit_code == EXIT_BAD_INPUT
    assert str(e.value).startswith(f"{p}{expected}")
    assert "\n" not in str(e.value)


def test_a_fifo_config_does_not_hang_apply_dry_run(tmp_path: Path) -> None:
    """The real CLI, as an operator would hit it: one line, exit 2, no wait for a writer."""
    fifo = tmp_path / "etc" / "nodeagent" / "config.yaml"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(tmp_path), "apply", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert r.returncode == EXIT_BAD_INPUT
    assert r.stderr == (f"nodeagent: {fifo}: a FIFO, not a regular file; refusing to read it\n")


# --- wrong types ----------------------------------------------------------------------------


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "runtime:\n  restart_mdoe: reload\n")
    assert msg == "2: unknown key 'runtime.restart_mdoe' (did you mean 'restart_mode'?)"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert load_error(tmp_path, "a: 1\nzzz: 2\n") == "1: unknown key 'a'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no_gpu_is_error: yes please\n", "1: 'no_gpu_is_error' must be true or false"),
        ("backup_keep: ten\n", "1: 'backup_keep' must be an integer, not a string ('ten')"),
        ("backup_keep: true\n", "1: 'backup_keep' must be an integer, not a boolean ('true')"),
        ("backup_keep: 2.5\n", "1: 'backup_keep' must be an integer, not a number ('2.5')"),
        (
            "\nruntime:\n  verify_timeout_s: soon\n",
            "3: 'runtime.verify_timeout_s' must be a number, not a string ('soon')",
        ),
        (
            "runtime:\n  verify_timeout_s: false\n",
            "2: 'runtime.verify_timeout_s' must be a number, not a boolean ('false')",
        ),
        ("labels:\n  static: [a, b]\n", "2: 'labels.static' must be a mapping, not a list"),
        (
            "labels:\n  skip: nvidia.com/gpu.machine\n",
            "2: 'labels.skip' must be a list, not a string ('nvidia.com/gpu.machine')",
        ),
        ("runtime: docker\n", "1: 'runtime' must be a mapping, not a string ('docker')"),
        ("- a\n- b\n", "1: the top level must be a mapping, not a list"),
        ("just text\n", "1: the top level must be a mapping, not a string ('just text')"),
        ("node_name: [a]\n", "1: 'node_name' must be a string, not a list"),
        ("node_name: 2001-12-14\n", "1: 'node_name' must be a string, not a date ('2001-12-14')"),
        (
            "daemon:\n  xid_ignore: [79, x]\n",
            "2: 'daemon.xid_ignore[1]' must be an integer, not a string ('x')",
        ),
        (
            "kube:\n  wait_for_node_s: " + "9" * 400 + "\n",
            "2: 'kube.wait_for_node_s' must be a number, not '" + "9" * 40 + "…'",
        ),
        (
            "backup_keep: " + "9" * 400 + "\n",
            "1: 'backup_keep' must be in [1, 1000], not " + "9" * 40 + "…",
        ),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, expected: str) -> None:
    assert load_error(tmp_path, text).startswith(expected)


def test_bad_enum_value_names_the_choices(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "runtime:\n  engine: docker\n  restart_mode: sometimes\n")
    assert msg == (
        "3: 'runtime.restart_mode' must be one of auto, reload, restart, none, not 'sometimes'"
    )


def test_duplicate_key(tmp_path: Path) -> None:
    assert load_error(tmp_path, "backup_keep: 1\nbackup_keep: 2\n") == (
        "2: duplicate key 'backup_keep'"
    )


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "labels:\n  static: {a: 1\n")
    assert msg.startswith("3: invalid YAML: ")


# --- hostile YAML ---------------------------------------------------------------------------

BILLION_LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" if i else "l0: &l0 lol\n" for i in range(9)
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("? [a, b]\n: 1\n", "1: keys must be strings, not a list"),
        ("? {a: b}\n: 1\n", "1: keys must be strings, not a mapping"),
        ("1: x\n", "1: keys must be strings, not an integer ('1')"),
        ("null: x\n", "1: keys must be strings, not null"),
        ("~: x\n", "1: keys must be strings, not null"),
        ("true: x\n", "1: keys must be strings, not a boolean ('true')"),
        ("runtime:\n  1.5: x\n", "2: keys of 'runtime' must be strings, not a number ('1.5')"),
        (
            "labels:\n  static:\n    1: x\n",
            "3: keys of 'labels.static' must be strings, not an integer ('1')",
        ),
        ("<<: {backup_keep: 1}\n", "1: keys must be strings, not a !!merge ('<<')"),
        (
            "runtime: !!python/object:os.system {}\n",
            "1: invalid YAML: the tag !!python/object:os.system is not allowed",
        ),
        (
            "node_name: !!python/name:os.system ''\n",
            "1: invalid YAML: the tag !!python/name:os.system is not allowed",
        ),
        ("backup_keep: !custom 1\n", "1: invalid YAML: the tag !custom is not allowed"),
        ("labels:\n  static: !!set {a}\n", "2: invalid YAML: the tag !!set is not allowed"),
        ("node_name: !!binary aGk=\n", "1: invalid YAML: the tag !!binary is not allowed"),
        ("backup_keep: !!int abc\n", "1: 'backup_keep' must be an integer, not 'abc'"),
        (
            "kube:\n  api_deadline_s: !!float abc\n",
            "2: 'kube.api_deadline_s' must be a number, not 'abc'",
        ),
        (
            "no_gpu_is_error: !!bool maybe\n",
            "1: 'no_gpu_is_error' must be true or false, not 'maybe'",
        ),
        (
            "lock_file: &p /run/x.lock\nbackup_dir: *p\n",
            "2: invalid YAML: an alias (*p) is not allowed; write the value out",
        ),
        (BILLION_LAUGHS, "2: invalid YAML: an alias (*l0) is not allowed; write the value out"),
        ("x: " + "[" * 100 + "]" * 100 + "\n", "1: invalid YAML: nested deeper than 10 levels"),
        (
            "".join(f"{'  ' * i}k{i}:\n" for i in range(12)),
            "10: invalid YAML: nested deeper than 10 levels",
        ),
        (
            "backup_keep: 1\n---\nbackup_keep: 2\n",
            "2: invalid YAML: expected a single document in the stream; but found another document",
        ),
        (
            "runtime:\n\tengine: docker\n",
            "2: invalid YAML: while scanning for the next token; "
            "found character '\\t' that cannot start any token",
        ),
        ("node_name: a\x07b\n", "1: invalid YAML: character #x0007 is not allowed"),
        ("\n\nnode_name: a\x00\n", "3: invalid YAML: character #x0000 is not allowed"),
        ("labels:\n  static:\n    a: x\n    a: y\n", "4: duplicate key 'a' in 'labels.static'"),
    ],
)
def test_hostile_yaml_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    assert load_error(tmp_path, text) == expected


def test_a_huge_document_is_refused_before_parsing(tmp_path: Path) -> None:
    p = write(tmp_path, "a: [" + "1, " * 400_000 + "]\n")
    with pytest.raises(InputError, match="larger than the 64 KiB"):
        config.load(p)


def test_a_file_just_under_the_cap_parses_quickly(tmp_path: Path) -> None:
    entries = "".join(f"    k{i}: v{i}\n" for i in range(3800))
    text = "labels:\n  static:\n" + entries
    assert config.MAX_CONFIG_BYTES * 0.9 < len(text) < config.MAX_CONFIG_BYTES
    start = time.monotonic()
    assert len(config.load(write(tmp_path, text)).labels.static) == 3800
    assert time.monotonic() - start < 3.0


# --- numbers --------------------------------------------------------------------------------

RANGED = [
    (key, f.metadata["check"]) for key, f in fields() if isinstance(f.metadata.get("check"), Range)
]


# Keys whose every entry is checked (a list of numbers).
EACH = {key: bool(f.metadata.get("each")) for key, f in fields()}


def test_every_number_has_a_range() -> None:
    numeric = [
        key
        for key, f in fields()
        if f.type in ("int", "float", "tuple[int, ...]")  # string annotations (__future__)
    ]
    assert numeric and sorted(numeric) == sorted(key for key, _ in RANGED)


def _outside(r: Range) -> list[float]:
    """Values just outside ``r`` on both ends, plus the non-finite ones."""
    out = [r.low - 1, r.high + 1, math.nan, math.inf, -math.inf]
    if r.low_open:
        out.append(r.low)
    if r.high_open:
        out.append(r.high)
    return out


def _yaml_number(v: float, integer: bool) -> str:
    if math.isnan(v):
        return ".nan"
    if math.isinf(v):
        return ".inf" if v > 0 else "-.inf"
    return str(int(v)) if integer else repr(float(v))


@pytest.mark.parametrize(("key", "r"), RANGED, ids=[k for k, _ in RANGED])
def test_numbers_outside_their_range_are_refused(tmp_path: Path, key: str, r: Range) -> None:
    each = EACH[key]
    for v in _outside(r):
        if r.integer and not math.isfinite(v):
            continue  # .nan is not an integer: the type check refuses it first
        value = _yaml_number(v, r.integer)
        text = nested(key, f"[{value}]" if each else value)
        line = text.count("\n")
        shown = int(v) if r.integer else float(v)
        rule = f"must be a finite number in {r}" if not math.isfinite(v) else f"must be in {r}"
        entries = "entries " if each else ""
        assert load_error(tmp_path, text) == f"{line}: '{key}' {entries}{rule}, not {shown!r}"


@pytest.mark.parametrize(("key", "r"), RANGED, ids=[k for k, _ in RANGED])
def test_numbers_at_the_ends_of_their_range_load(tmp_path: Path, key: str, r: Range) -> None:
    each = EACH[key]
    ends = [v for v, is_open in ((r.low, r.low_open), (r.high, r.high_open)) if not is_open]
    for v in ends:
        value = _yaml_number(v, r.integer)
        cfg = config.load(write(tmp_path, nested(key, f"[{value}]" if each else value)))
        got: Any = cfg
        for part in key.split("."):
            got = getattr(got, part)
        assert got == ((v,) if each else v)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("backup_keep: 0\n", "1: 'backup_keep' must be in [1, 1000], not 0"),
        (
            "kube:\n  api_deadline_s: .nan\n",
            "2: 'kube.api_deadline_s' must be a finite number in (0, 3600], not nan",
        ),
        (
            "kube:\n  api_deadline_s: .inf\n",
            "2: 'kube.api_deadline_s' must be a finite number in (0, 3600], not inf",
        ),
        (
            "kube:\n  wait_for_node_s: 0\n",
            "2: 'kube.wait_for_node_s' must be in (0, 3600], not 0.0",
        ),
        (
            "daemon:\n  heartbeat_jitter: 1\n",
            "2: 'daemon.heartbeat_jitter' must be in [0, 1), not 1.0",
        ),
        (
            "daemon:\n  xid_ignore:\n    - 79\n    - 0\n",
            "4: 'daemon.xid_ignore' entries must be in [1, 65535], not 0",
        ),
    ],
)
def test_the_ranges_the_issue_names(tmp_path: Path, text: str, expected: str) -> None:
    assert load_error(tmp_path, text) == expected


def test_every_range_is_documented() -> None:
    rows = {line.split("|")[1].strip(): line for line in DOC.splitlines() if line.startswith("| `")}
    missing = [key for key, r in RANGED if str(r) not in rows.get(f"`{key}`", "")]
    assert not missing, f"docs/configuration.md does not give the range of {missing}"


# --- paths and names ------------------------------------------------------------------------

PATH_KEYS = [
    "lock_file",
    "backup_dir",
    "nvml_library",
    "daemon.state_file",
    "kube.kubeconfig",
    "kube.kubelet_args_file",
    "runtime.docker.config_file",
    "runtime.docker.pidfile",
    "runtime.containerd.config_file",
    "runtime.containerd.drop_in",
    "runtime.cdi_spec",
]


def test_every_path_key_is_checked() -> None:
    checked = [key for key, f in fields() if f.metadata.get("check") is config.host_path_problem]
    assert sorted(checked) == sorted(PATH_KEYS)


@pytest.mark.parametrize("key", PATH_KEYS)
@pytest.mark.parametrize("path", ["relative/file", "file", "/var/lib/../../etc/x", "..", ""])
def test_path_keys_must_be_absolute_without_dotdot(tmp_path: Path, key: str, path: str) -> None:
    text = nested(key, repr(path))
    assert load_error(tmp_path, text) == (
        f"{text.count(chr(10))}: '{key}' must be an absolute path without '..', not {path!r}"
    )


TEXTFILE = "must be empty or an absolute path ending in .prom without '..'"
LISTEN = "must be HOST:PORT or empty"
COMMAND = "must be a command name or an absolute path without '..'"
RUNTIME_NAME = "must be letters, digits, '_', '.' and '-'"
UNIT = "must be a systemd unit name like docker.service"
DNS_LABEL = (
    "must be a DNS label (at most 63 lower-case letters, digits and '-', alphanumeric at both ends)"
)
SUBDOMAIN = "must be a DNS subdomain (lower-case DNS labels joined by '.', at most 253 characters)"
QUALIFIED = "must be a qualified name like example.com/Name"
BAD_NAME = "the name must be alphanumeric at both ends, with only '-', '_' and '.' inside"


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("daemon.metrics_textfile", "m.prom", TEXTFILE),
        ("daemon.metrics_textfile", "/a/../m.prom", TEXTFILE),
        ("daemon.metrics_textfile", "/m.txt", TEXTFILE),
        ("daemon.metrics_listen", "localhost", LISTEN),
        ("daemon.metrics_listen", ":80", LISTEN),
        ("daemon.metrics_listen", "h:65536", LISTEN),
        ("runtime.path", "bin/nvidia-container-runtime", COMMAND),
        ("runtime.path", "/usr/../x", COMMAND),
        ("runtime.path", "..", COMMAND),
        ("runtime.path", "-x", COMMAND),
        ("runtime.path", "", COMMAND),
        ("runtime.name", "nvidia gpu", RUNTIME_NAME),
        ("runtime.name", 'a"b', RUNTIME_NAME),
        ("runtime.name", "", RUNTIME_NAME),
        ("runtime.docker.service", "--force", UNIT),
        ("runtime.containerd.service", "containerd service", UNIT),
        ("kube.event_namespace", "Default", DNS_LABEL),
        ("kube.event_namespace", "a.b", DNS_LABEL),
        ("node_name", "GPU_1", SUBDOMAIN),
        ("node_name", "a..b", SUBDOMAIN),
        ("node_name", ".".join(["a" * 63] * 4), SUBDOMAIN),  # 255 characters
        ("node_name", "gpu-1\n", SUBDOMAIN),  # "$" in a regex would let the newline by
        ("runtime.name", "nvidia\n", RUNTIME_NAME),
        ("runtime.docker.service", "docker.service\n", UNIT),
        ("kube.condition_type", "GPU Ready", f"{QUALIFIED} ({BAD_NAME})"),
        ("kube.startup_taint_key", "/x", f"{QUALIFIED} (the prefix before '/' is empty)"),
        (
            "kube.unhealthy_taint_key",
            "Example.com/x",
            f"{QUALIFIED} (the prefix must be a lower-case DNS subdomain)",
        ),
    ],
)
def test_names_and_addresses(tmp_path: Path, key: str, value: str, rule: str) -> None:
    quoted = json.dumps(value)  # a YAML double-quoted scalar
    text = nested(key, quoted)
    assert load_error(tmp_path, text) == f"{text.count(chr(10))}: '{key}' {rule}, not {value!r}"


def test_a_number_where_a_name_belongs(tmp_path: Path) -> None:
    assert load_error(tmp_path, "daemon:\n  metrics_listen: 9410\n") == (
        "2: 'daemon.metrics_listen' must be a string, not an integer ('9410')"
    )


@pytest.mark.parametrize(
    "text",
    [
        "runtime:\n  path: nvidia-container-runtime.cdi\n",
        "runtime:\n  name: nvidia-cdi_2.0\n",
        "runtime:\n  docker:\n    service: snap.docker.dockerd.service\n",
        "runtime:\n  containerd:\n    service: containerd@1.service\n",
        "kube:\n  condition_type: GPUReady\n",
        "node_name: cn-hangzhou.i-bp1abc\n",
        "daemon:\n  metrics_listen: '[::1]:9410'\n",
        "daemon:\n  metrics_textfile: /var/lib/node_exporter/nodeagent.prom\n",
    ],
)
def test_valid_names_load(tmp_path: Path, text: str) -> None:
    assert config.load(write(tmp_path, text)) != Config()


# --- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "node-restriction.kubernetes.io/gpu",
        "kubernetes.io/gpu",
        "foo.k8s.io/x",
    ],
)
def test_label_keys_a_node_may_not_set_are_refused(tmp_path: Path, key: str) -> None:
    msg = load_error(tmp_path, f'labels:\n  static:\n    ok: "true"\n    {key}: "true"\n')
    assert msg.startswith(f"4: 'labels.static' key '{key}': ")
    assert "NodeRestriction" in msg


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("not valid!", "must be empty or alphanumeric at both ends"),
        ("-lead", "must be empty or alphanumeric at both ends"),
        ("x" * 64, "must be at most 63 characters"),
        ("true\\n", "must be empty or alphanumeric at both ends"),
    ],
)
def test_invalid_static_label_values_are_refused_with_their_line(
    tmp_path: Path, value: str, why: str
) -> None:
    msg = load_error(tmp_path, f'labels:\n  static:\n    ok: "true"\n    pool: "{value}"\n')
    shown = repr(value.replace("\\n", "\n"))
    assert msg.startswith(f"4: 'labels.static' value {shown} of 'pool': a label value {why}")


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("kubernetes.io", "NodeRestriction"),
        ("node.k8s.io", "NodeRestriction"),
        ("node-restriction.kubernetes.io", "NodeRestriction"),
        ("Example.com", "lower-case DNS subdomain"),
        ("a/b", "lower-case DNS subdomain"),
        ("", "the prefix before '/' is empty"),
    ],
)
def test_prefix_follows_the_static_key_rule(tmp_path: Path, prefix: str, why: str) -> None:
    msg = load_error(tmp_path, f"\nlabels:\n  prefix: '{prefix}'\n")
    assert msg.startswith(f"3: 'labels.prefix' {prefix!r}: ")
    assert why in msg


@pytest.mark.parametrize("prefix", ["node.kubernetes.io", "gpu.example.com"])
def test_prefixes_a_node_may_use_load(tmp_path: Path, prefix: str) -> None:
    assert config.load(write(tmp_path, f"labels:\n  prefix: {prefix}\n")).labels.prefix == prefix


def test_skip_entries_must_be_label_keys(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "labels:\n  skip:\n    - gpu\n    - 'bad key'\n")
    assert msg == (
        "4: 'labels.skip' entry 'bad key': not a valid label key: the name must be "
        "alphanumeric at both ends, with only '-', '_' and '.' inside"
    )


# --- the rules hold for a Config built in code, as a typed error ----------------------------


@pytest.mark.parametrize(
    ("build", "field", "at"),
    [
        (lambda: RuntimeConfig(engine="podman"), "engine", None),
        (lambda: Config(backup_keep=0), "backup_keep", None),
        (lambda: Config(backup_keep=True), "backup_keep", None),
        (lambda: Config(backup_dir="../b"), "backup_dir", None),
        (lambda: config.KubeConfig(api_deadline_s=math.nan), "api_deadline_s", None),
        (lambda: config.DaemonConfig(xid_ignore=(79, -1)), "xid_ignore", 1),
        (lambda: config.LabelsConfig(static={"a": "b c"}), "static", "a"),
        (lambda: config.LabelsConfig(prefix="k8s.io"), "prefix", None),
    ],
)
def test_a_config_built_in_code_obeys_the_same_rules(build: Any, field: str, at: Any) -> None:
    with pytest.raises(FieldError) as e:
        build()
    assert (e.value.field, e.value.at) == (field, at)
    assert str(e.value).startswith(f"'{field}' ")


def test_every_key_is_documented() -> None:
    missing = [k for k, _ in fields() if f"`{k}`" not in DOC]
    assert not missing, f"undocumented config keys: {missing}"
