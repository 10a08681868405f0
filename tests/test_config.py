"""Config loading: defaults, every type checked, errors as one `PATH:LINE: ...` line."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from nodeagent import config
from nodeagent.config import Config
from nodeagent.errors import EXIT_BAD_INPUT, InputError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def load_error(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        config.load(p)
    assert e.value.exit_code == EXIT_BAD_INPUT
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}:")
    return msg[len(str(p)) + 1 :]


def test_missing_file_is_all_defaults(tmp_path: Path) -> None:
    assert config.load(tmp_path / "nope.yaml") == Config()


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        config.load(tmp_path / "nope.yaml", must_exist=True)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_all_defaults(tmp_path: Path, text: str) -> None:
    assert config.load(write(tmp_path, text)) == Config()


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
  skip: [nvidia.com/gpu.machine]
runtime:
  engine: docker
  restart_mode: reload
  verify_timeout_s: 5
  docker:
    pidfile: /run/docker.pid
    restart_command: [/bin/true]
""",
    )
    cfg = config.load(p)
    assert cfg.node_name == "gpu-node-1"
    assert cfg.no_gpu_is_error is False
    assert cfg.backup_keep == 3
    assert cfg.labels.gfd is False
    assert cfg.labels.static == {"train": "true", "example.com/pool": "a100"}
    assert cfg.labels.skip == ("nvidia.com/gpu.machine",)
    assert cfg.runtime.engine == "docker"
    assert cfg.runtime.restart_mode == "reload"
    assert cfg.runtime.verify_timeout_s == 5.0
    assert cfg.runtime.docker.pidfile == "/run/docker.pid"
    assert cfg.runtime.docker.restart_command == ("/bin/true",)
    # untouched keys keep their defaults
    assert cfg.runtime.containerd == Config().runtime.containerd


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "runtime:\n  restart_mdoe: reload\n")
    assert msg == "2: unknown key 'runtime.restart_mdoe' (did you mean 'restart_mode'?)"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert load_error(tmp_path, "a: 1\nzzz: 2\n") == "1: unknown key 'a'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no_gpu_is_error: yes please\n", "1: 'no_gpu_is_error' must be true or false"),
        ("backup_keep: ten\n", "1: 'backup_keep' must be an integer"),
        (
            "\nruntime:\n  verify_timeout_s: soon\n",
            "3: 'runtime.verify_timeout_s' must be a number",
        ),
        ("labels:\n  static: [a, b]\n", "2: 'labels.static' must be a mapping"),
        ("labels:\n  skip: nvidia.com/gpu.machine\n", "2: 'labels.skip' must be a list"),
        ("runtime: docker\n", "1: 'runtime' must be a mapping"),
        ("- a\n- b\n", "1: the top level must be a mapping"),
        ("node_name: [a]\n", "1: 'node_name' must be a string"),
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
    assert re.match(r"\d+: invalid YAML: ", msg)


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
    assert msg.startswith(f"4: labels.static: '{key}': ")


def test_every_key_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()

    def walk(cls: type, prefix: str = "") -> list[str]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            name = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                out += walk(hints[f.name], name + ".")
            else:
                out.append(name)
        return out

    missing = [k for k in walk(Config) if f"`{k}`" not in doc]
    assert not missing, f"undocumented config keys: {missing}"
