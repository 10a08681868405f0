"""The command line as users run it: a real `nodeagent` process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nodeagent import __version__
from nodeagent.errors import EXIT_BAD_INPUT

REPO = Path(__file__).resolve().parents[1]


def nodeagent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def test_version() -> None:
    r = nodeagent("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"nodeagent {__version__}"


def test_version_imports_neither_kubernetes_nor_docker_nor_pynvml() -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['nodeagent', '--version']\n"
        "try:\n"
        "    runpy.run_module('nodeagent', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('kubernetes', 'docker', 'pynvml', 'yaml', 'tomlkit', 'urllib3', 'structlog'))\n"
        "print(','.join(heavy), file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0
    assert r.stderr.strip() == ""  # the heavy modules that were imported, comma-separated


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "nodeagent"
    etc.mkdir(parents=True)
    (etc / "config.yaml").write_text("runtime:\n  engin: docker\n")
    r = nodeagent("--root", str(tmp_path), "detect")
    assert r.returncode == EXIT_BAD_INPUT
    assert r.stdout == ""
    where = etc / "config.yaml"
    assert r.stderr == (
        f"nodeagent: {where}:2: unknown key 'runtime.engin' (did you mean 'engine'?)\n"
    )


def test_explicit_config_must_exist(tmp_path: Path) -> None:
    r = nodeagent("--config", str(tmp_path / "missing.yaml"), "detect")
    assert r.returncode == EXIT_BAD_INPUT
    assert r.stderr.strip() == f"nodeagent: {tmp_path / 'missing.yaml'}: no such file"


def test_unknown_command_is_a_usage_error() -> None:
    r = nodeagent("frobnicate")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr


def test_json_logs_go_to_stderr_not_stdout(tmp_path: Path) -> None:
    lib_dir = tmp_path / "empty"
    lib_dir.mkdir()
    r = nodeagent(
        "--root",
        str(tmp_path),
        "-v",
        "--log-format",
        "json",
        "detect",
        "-o",
        "json",
        env={"LD_LIBRARY_PATH": str(lib_dir), "PATH": "/usr/bin:/bin"},
    )
    doc = json.loads(r.stdout)  # stdout is only the report
    assert doc["state"] == "no-driver"
    for line in r.stderr.splitlines():
        assert isinstance(json.loads(line), dict)


def test_console_logs_on_a_terminal(tmp_path: Path) -> None:
    import os
    import pty

    lib_dir = tmp_path / "empty"
    lib_dir.mkdir()
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeagent", "--root", str(tmp_path), "-v", "detect", "-o", "json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=follower,
        env={"LD_LIBRARY_PATH": str(lib_dir), "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )
    os.close(follower)
    out, _ = proc.communicate(timeout=60)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    err = b"".join(chunks).decode()
    assert json.loads(out)["state"] == "no-driver"
    assert "detect.done" in err
    assert not err.lstrip().startswith("{")  # readable console line, not JSON
