"""daemon.json parsing and rendering: nothing lost, bad input refused with LINE:COL."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.errors import EXIT_BAD_INPUT, InputError
from nodeagent.runtime import jsonedit
from nodeagent.runtime.docker import desired
from tests.dockerd import write_runtime_standin

REPO = Path(__file__).resolve().parents[1]

MALFORMED = {
    "truncated": ('{\n  "log-driver": "journald",\n  "debug": tr', "3:12: invalid JSON"),
    "array": ("[]\n", "1:1: the top level must be a JSON object"),
    "runtimes-number": ('{"runtimes": 5}\n', "1:2: 'runtimes' must be an object"),
    "runtime-entry-string": (
        '{"runtimes": {"nvidia": "x"}}\n',
        "1:15: 'runtimes.nvidia' must be an object",
    ),
    "bom": ('\ufeff{"debug": true}\n', "1:1: starts with a UTF-8 byte-order mark"),
    "duplicate-key": (
        '{\n  "debug": true,\n  "debug": false\n}\n',
        "3:3: duplicate key 'debug'",
    ),
    "huge": ('{"labels": [' + ",".join(['"x"'] * 300_000) + "]}\n", "1:1: larger than 1024 KiB"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_daemon_json_is_refused_and_untouched(tmp_path: Path, case: str) -> None:
    text, expected = MALFORMED[case]
    write_runtime_standin(tmp_path)
    daemon = tmp_path / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    daemon.write_bytes(text.encode())
    st_before = daemon.stat()
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(tmp_path), "runtime", "configure",
         "--runtime", "docker"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == EXIT_BAD_INPUT
    assert r.stderr.startswith(f"nodeagent: /etc/docker/daemon.json:{expected}"), r.stderr
    assert r.stderr.count("\n") == 1
    assert daemon.read_bytes() == text.encode()
    assert daemon.stat().st_mtime_ns == st_before.st_mtime_ns
    assert not (tmp_path / "var/lib/nodeagent/backups").exists()


@pytest.mark.parametrize(
    ("text", "indent"),
    [
        ('{\n  "a": 1\n}\n', "  "),
        ('{\n    "a": {\n        "b": 1\n    }\n}\n', "    "),
        ('{\n\t"a": 1\n}\n', "\t"),
        ('{"a": 1}', None),
        ("", "    "),
        ("  \n", "    "),
    ],
)
def test_indentation_style_is_kept(text: str, indent: str | None) -> None:
    doc = jsonedit.parse(text, "f")
    assert doc.indent == indent
    out = jsonedit.render(doc)
    assert out.endswith("\n")
    if text.strip():
        assert json.loads(out) == json.loads(text)
        if indent is not None:
            assert out == text if text.endswith("\n") else out == text + "\n"


def test_empty_file_is_empty_config() -> None:
    assert jsonedit.parse("", "f").data == {}


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
daemon_keys = st.sampled_from(
    ["log-driver", "storage-driver", "insecure-registries", "registry-mirrors", "live-restore",
     "data-root", "features", "exec-opts", "log-opts", "default-ulimits", "mtu", "debug"]
) | st.text(min_size=1, max_size=12)  # fmt: skip


@given(
    original=st.dictionaries(daemon_keys, json_values, max_size=8),
    other_runtimes=st.dictionaries(
        st.sampled_from(["runc", "crun", "kata", "gvisor"]),
        st.fixed_dictionaries({"path": st.text(min_size=1, max_size=20)}),
        max_size=2,
    ),
    indent=st.sampled_from(["  ", "    ", "\t"]),
    set_default=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_every_original_key_and_value_survives(
    original: dict[str, Any], other_runtimes: dict[str, Any], indent: str, set_default: bool
) -> None:
    original = {k: v for k, v in original.items() if k not in ("runtimes", "default-runtime")}
    if other_runtimes:
        original["runtimes"] = other_runtimes
    text = json.dumps(original, indent=indent) + "\n"
    doc = jsonedit.parse(text, "daemon.json")
    new = desired(doc.data, "nvidia", "nvidia-container-runtime", set_default)
    out = jsonedit.render(dataclasses.replace(doc, data=new))
    back = json.loads(out)
    # every original key, in the original order, with its value (runtimes extended)
    assert list(back)[: len(original)] == list(original)
    for k, v in original.items():
        if k != "runtimes":
            assert back[k] == v
    for name, entry in other_runtimes.items():
        assert back["runtimes"][name] == entry
    assert back["runtimes"]["nvidia"] == {"path": "nvidia-container-runtime", "runtimeArgs": []}
    assert ("default-runtime" in back) is set_default
    # and applying it again changes nothing
    assert desired(back, "nvidia", "nvidia-container-runtime", set_default) == back
    # "{}" is a one-line document: it stays one line
    assert jsonedit.parse(out, "daemon.json").indent == (indent if original else None)


@given(
    original=st.dictionaries(daemon_keys, json_values, min_size=1, max_size=8),
    indent=st.sampled_from(["  ", "    ", "\t"]),
    set_default=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_hand_formatted_members_keep_their_exact_bytes(
    original: dict[str, Any], indent: str, set_default: bool
) -> None:
    """Operators write `"insecure-registries": ["a", "b"]` on one line: the diff must not
    reflow it. Every member the agent does not change keeps its exact text."""
    original = {k: v for k, v in original.items() if k not in ("runtimes", "default-runtime")}
    if not original:
        return
    lines = [f"{indent}{json.dumps(k)}: {json.dumps(v)}" for k, v in original.items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    doc = jsonedit.parse(text, "daemon.json")
    new = desired(doc.data, "nvidia", "nvidia-container-runtime", set_default)
    out = jsonedit.render(dataclasses.replace(doc, data=new))
    assert json.loads(out) == new
    assert out.startswith(text[: text.rindex("\n}")])  # the old members, byte for byte
    assert out.endswith("\n}\n")
    again = jsonedit.parse(out, "daemon.json")
    assert jsonedit.render(dataclasses.replace(again, data=new)) == out


def test_a_changed_value_is_rerendered_in_place() -> None:
    text = '{\n  "a": [1, 2],\n  "default-runtime": "runc",\n  "z": {"k": 1}\n}\n'
    doc = jsonedit.parse(text, "daemon.json")
    new = {**doc.data, "default-runtime": "nvidia"}
    out = jsonedit.render(dataclasses.replace(doc, data=new))
    assert out == text.replace('"runc"', '"nvidia"')


def test_existing_runtime_args_are_kept() -> None:
    data = {"runtimes": {"nvidia": {"path": "/old", "runtimeArgs": ["--debug"]}}}
    new = desired(data, "nvidia", "nvidia-container-runtime", True)
    assert new["runtimes"]["nvidia"] == {
        "path": "nvidia-container-runtime",
        "runtimeArgs": ["--debug"],
    }
    assert data["runtimes"]["nvidia"]["path"] == "/old"  # the input is not mutated


def test_error_names_the_line_and_column() -> None:
    with pytest.raises(InputError) as e:
        jsonedit.parse('{\n  "a": 1,\n  "b" 2\n}', "/etc/docker/daemon.json")
    assert str(e.value) == ("/etc/docker/daemon.json:3:7: invalid JSON: Expecting ':' delimiter")
