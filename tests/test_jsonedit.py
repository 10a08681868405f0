"""daemon.json parsing and rendering: nothing lost, bad input refused with LINE:COL."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.errors import EXIT_BAD_INPUT, InputError
from nodeagent.runtime.docker import jsonedit
from nodeagent.runtime.docker.engine import desired
from tests.dockerd import write_runtime_standin

REPO = Path(__file__).resolve().parents[1]


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "x.json").write_text("{}\n")


def _deep(depth: int) -> bytes:
    return ('{"a": ' + "[" * depth + "]" * depth + "}\n").encode()


# case -> (the file's bytes, or how to make the path; the one line nodeagent prints after
# "nodeagent: /etc/docker/daemon.json"). Everything here is exit 2 and leaves the file as is.
MALFORMED: dict[str, tuple[bytes | Callable[[Path], None], str]] = {
    "truncated": (
        b'{\n  "log-driver": "journald",\n  "debug": tr',
        ":3:12: invalid JSON: Expecting value",
    ),
    "array": (b"[]\n", ":1:1: the top level must be a JSON object"),
    "runtimes-number": (b'{"runtimes": 5}\n', ":1:2: 'runtimes' must be an object, not a number"),
    "runtimes-null": (b'{"runtimes": null}\n', ":1:2: 'runtimes' must be an object, not null"),
    "runtimes-list": (b'{"runtimes": []}\n', ":1:2: 'runtimes' must be an object, not a list"),
    "runtime-entry-string": (
        b'{"runtimes": {"nvidia": "x"}}\n',
        ":1:15: 'runtimes.nvidia' must be an object, not a string",
    ),
    "runtime-entry-null": (
        b'{"runtimes": {"runc": {"path": "runc"},\n  "nvidia": null}}\n',
        ":2:3: 'runtimes.nvidia' must be an object, not null",
    ),
    "runtime-path-number": (
        b'{"runtimes": {"nvidia": {"path": 5}}}\n',
        ":1:26: 'runtimes.nvidia.path' must be a string, not a number",
    ),
    "runtime-args-string": (
        b'{"runtimes": {"nvidia": {"runtimeArgs": "--debug"}}}\n',
        ":1:26: 'runtimes.nvidia.runtimeArgs' must be a list of strings, not a string",
    ),
    "runtime-args-item": (
        b'{"runtimes": {"nvidia": {"runtimeArgs": ["--debug", 1]}}}\n',
        ":1:26: 'runtimes.nvidia.runtimeArgs[1]' must be a string, not a number",
    ),
    "default-runtime-number": (
        b'{\n  "default-runtime": 1\n}\n',
        ":2:3: 'default-runtime' must be a string, not a number",
    ),
    "default-runtime-object": (
        b'{"default-runtime": {}}\n',
        ":1:2: 'default-runtime' must be a string, not an object",
    ),
    "live-restore-string": (
        b'{"live-restore": "yes"}\n',
        ":1:2: 'live-restore' must be true or false, not a string",
    ),
    "bom": (
        '\ufeff{"debug": true}\n'.encode(),
        ":1:1: starts with a UTF-8 byte-order mark, which dockerd cannot parse; remove it",
    ),
    "duplicate-key": (
        b'{\n  "debug": true,\n  "debug": false\n}\n',
        ":3:3: duplicate key 'debug' (dockerd would silently keep only the last one)",
    ),
    "huge": (
        b'{"labels": [' + b",".join([b'"x"'] * 300_000) + b"]}\n",
        ": 1200014 bytes, larger than the 1024 KiB this file may have; refusing to read it",
    ),
    "utf-16": (
        '{"debug": true}\n'.encode("utf-16"),
        ":1:1: UTF-16 text (byte-order mark); save it as UTF-8",
    ),
    "utf-32": (
        '{"debug": true}\n'.encode("utf-32"),
        ":1:1: UTF-32 text (byte-order mark); save it as UTF-8",
    ),
    "latin-1": (
        '{\n  "labels": ["café"]\n}\n'.encode("latin-1"),
        ":2:18: not UTF-8 text (byte 0xe9); refusing to read it",
    ),
    "nested-900": (_deep(900), ":1:70: nested deeper than 64 levels; refusing to read it"),
    "nested-100000": (_deep(100_000), ":1:70: nested deeper than 64 levels; refusing to read it"),
    "fifo": (_fifo, ": a FIFO, not a regular file; refusing to read it"),
    "directory": (_directory, ": a directory, not a regular file; refusing to read it"),
}  # fmt: skip


def _snapshot(path: Path) -> object:
    """What must not change: the bytes of a file, the listing of a directory, the kind."""
    st = path.lstat()
    if path.is_dir():
        return ("dir", sorted(p.name for p in path.iterdir()), st.st_mtime_ns)
    if path.is_fifo():
        return ("fifo", st.st_mtime_ns)
    return ("file", path.read_bytes(), st.st_mtime_ns, st.st_ino)


# --dry-run reads the same way: checked on the reader's and the shape check's worst cases.
DRY_RUN_CASES = ("fifo", "directory", "runtimes-null", "nested-900")


@pytest.mark.parametrize(
    ("case", "dry_run"),
    [(c, False) for c in sorted(MALFORMED)] + [(c, True) for c in DRY_RUN_CASES],
)
def test_malformed_daemon_json_is_refused_and_untouched(
    tmp_path: Path, case: str, dry_run: bool
) -> None:
    content, expected = MALFORMED[case]
    write_runtime_standin(tmp_path)
    daemon = tmp_path / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        daemon.write_bytes(content)
    else:
        content(daemon)
    before = _snapshot(daemon)
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(tmp_path), "runtime", "configure",
         "--runtime", "docker", *(["--dry-run"] if dry_run else [])],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == EXIT_BAD_INPUT, r.stderr
    assert r.stderr == f"nodeagent: /etc/docker/daemon.json{expected}\n"
    assert r.stdout == ""
    assert _snapshot(daemon) == before
    assert sorted(p.name for p in daemon.parent.iterdir()) == ["daemon.json"]  # no temp left
    assert not (tmp_path / "var/lib/nodeagent/backups").exists()


def test_nesting_at_the_bound_is_accepted_and_one_past_it_refused() -> None:
    deepest = "[" * (jsonedit.MAX_DEPTH - 1) + "]" * (jsonedit.MAX_DEPTH - 1)
    assert jsonedit.parse('{"a": ' + deepest + "}", "f").data["a"] == json.loads(deepest)
    with pytest.raises(InputError, match=r"^f:1:70: nested deeper than 64 levels"):
        jsonedit.parse('{"a": [' + deepest + "]}", "f")
    # brackets inside strings do not nest
    text = json.dumps({"a": "[" * 200, "b": {"c": "{" * 200}})
    assert jsonedit.parse(text, "f").data["a"] == "[" * 200


def test_key_position_follows_the_key_path() -> None:
    text = '{\n  "runtimes": {\n    "runc": {"path": "runc"},\n    "nvidia": {"path": 5}\n  }\n}'
    assert jsonedit.key_position(text, "runtimes") == (2, 3)
    assert jsonedit.key_position(text, "runtimes", "nvidia", "path") == (4, 16)
    assert jsonedit.key_position(text, "absent") == (1, 1)


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


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"default-runtime": "nvidia"}, "runc"),  # demoted: a changed value is reloadable
        ({"default-runtime": "crun"}, "crun"),  # another default is not ours to touch
        ({}, None),  # no default named: none added
    ],
)
def test_no_default_demotes_only_our_runtime(before: dict[str, Any], after: str | None) -> None:
    new = desired(before, "nvidia", "nvidia-container-runtime", False)
    assert new.get("default-runtime") == after
    assert new["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert desired(new, "nvidia", "nvidia-container-runtime", False) == new  # idempotent
