"""The command line as users run it: a real `nodeagent` process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent import __version__
from nodeagent.errors import EXIT_BAD_INPUT, EXIT_NO_GPU

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
        "('kubernetes', 'docker', 'pynvml', 'yaml', 'tomlkit', 'urllib3', 'structlog',"
        " 'tenacity', 'attrs', 'attr'))\n"
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


def test_detect_json_h100x8_real_values_and_labels(tmp_path: Path, fake_nvml) -> None:
    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/product_name").write_text("DGX H100\n")
    r = nodeagent("--root", str(tmp_path), "detect", "-o", "json", env=fake_nvml.env("h100x8"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    data = fake_nvml.data("h100x8")
    assert doc["schema_version"] == 1
    assert doc["state"] == "ok"
    assert doc["driver"]["version"] == data["driver_version"]
    assert doc["machine"] == "DGX H100"
    assert len(doc["gpus"]) == 8
    for got, want in zip(doc["gpus"], data["gpus"]):
        assert (got["name"], got["uuid"], got["pci_bus_id"], got["memory_total_mib"]) == (
            want["name"],
            want["uuid"],
            want["pci_bus_id"],
            want["memory_total_mib"],
        )
        assert got["compute_capability"] == want["compute_capability"]
        assert got["architecture"] == "hopper"
    labels = doc["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.machine"] == "DGX-H100"
    assert labels["gpu-type"] == "H100"


def test_detect_yaml_is_the_same_document(tmp_path: Path, fake_nvml) -> None:
    import yaml

    env = fake_nvml.env("mixed")
    j = nodeagent("--root", str(tmp_path), "detect", "-o", "json", env=env)
    y = nodeagent("--root", str(tmp_path), "detect", "-o", "yaml", env=env)
    assert json.loads(j.stdout) == yaml.safe_load(y.stdout)


def test_detect_table_shows_gpus_and_labels(tmp_path: Path, fake_nvml) -> None:
    r = nodeagent("--root", str(tmp_path), "detect", env=fake_nvml.env("gpu-lost"))
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Driver 580.159.04  CUDA 13.0")
    assert any("lost (NVML_ERROR_GPU_IS_LOST)" in ln for ln in lines)
    assert "  nvidia.com/gpu.count=7" in lines
    assert "  nodeagent.io/gpu.unhealthy=1" in lines


def test_detect_no_driver_is_one_line_and_exit_3(tmp_path: Path) -> None:
    empty = tmp_path / "lib"
    empty.mkdir()
    r = nodeagent(
        "--root", str(tmp_path), "detect", env={"LD_LIBRARY_PATH": str(empty), "PATH": "/usr/bin"}
    )
    assert r.returncode == EXIT_NO_GPU
    assert r.stdout == ""
    assert r.stderr == "nodeagent: no NVIDIA driver: libnvidia-ml.so.1 not found\n"


@pytest.mark.parametrize(
    ("profile", "line"),
    [
        (
            "driver-not-loaded",
            "nodeagent: NVML init failed: NVML_ERROR_DRIVER_NOT_LOADED (Driver Not Loaded)",
        ),
        ("zero-gpus", "nodeagent: NVML reports no GPU"),
    ],
)
def test_detect_failure_states_exit_3(tmp_path: Path, fake_nvml, profile: str, line: str) -> None:
    r = nodeagent("--root", str(tmp_path), "detect", env=fake_nvml.env(profile))
    assert r.returncode == EXIT_NO_GPU
    assert r.stderr.strip() == line


def test_nvml_library_config_key(tmp_path: Path, fake_nvml) -> None:
    cfg = tmp_path / "etc/nodeagent/config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f"nvml_library: {fake_nvml.lib}\n")
    env = {"FAKE_NVML_PROFILE": str(fake_nvml.profile("t4")), "PATH": "/usr/bin:/bin"}
    r = nodeagent("--root", str(tmp_path), "detect", "-o", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gpus"][0]["name"] == "Tesla T4"
