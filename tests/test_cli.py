"""The command line as users run it: a real `nodeagent` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent import __version__
from nodeagent.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_NO_GPU, EXIT_SOFTWARE

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


# --- the error boundary: one line, a documented exit code, never a traceback ------------


def nodeagent_patched(
    patch: str, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child whose code ``patch`` (Python, run first) made misbehave: the
    test-side seam for failures no host input reaches (a bug, a library's odd exception)."""
    code = (
        f"import sys\n{patch}\nfrom nodeagent.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**(env or os.environ), "PYTHONPATH": str(REPO)},
        timeout=60,
    )


def assert_one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_empty_root_is_refused_and_nothing_is_written(tmp_path: Path, fake_nvml) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", "", "apply", "--phase", "bootstrap"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # Path("") would be this directory
        env={**fake_nvml.env("h100x8"), "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert r.returncode == EXIT_BAD_INPUT
    assert (
        assert_one_line(r.stderr)
        == "nodeagent: --root: empty; give a directory (/ for this machine)"
    )
    assert r.stdout == ""
    assert list(tmp_path.iterdir()) == []


BOOM = "import nodeagent.gpu.nvml as nvml\ndef boom(*a, **k):\n    raise {exc}\nnvml.detect = boom"


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (
            "KeyError('gpus')",
            EXIT_SOFTWARE,
            "nodeagent: internal error: KeyError: 'gpus' (a bug: please report it)",
        ),
        (
            "RuntimeError('first\\nsecond')",
            EXIT_SOFTWARE,
            "nodeagent: internal error: RuntimeError: first second (a bug: please report it)",
        ),
        (
            "__import__('nodeagent.errors').errors.InputError('/etc/x:1: bad\\n  here')",
            EXIT_BAD_INPUT,
            "nodeagent: /etc/x:1: bad here",
        ),
        ("KeyboardInterrupt()", EXIT_INTERRUPTED, None),
    ],
    ids=["bug", "bug-multiline", "input-multiline", "interrupt"],
)
def test_any_exception_is_one_line_and_a_documented_exit_code(
    tmp_path: Path, exc: str, code: int, line: str | None
) -> None:
    r = nodeagent_patched(BOOM.format(exc=exc), "--root", str(tmp_path), "detect")
    assert r.returncode == code, r.stderr
    assert r.stdout == ""
    if line is None:
        assert r.stderr == ""
    else:
        assert assert_one_line(r.stderr) == line


def test_a_bugs_traceback_is_logged_only_at_debug(tmp_path: Path) -> None:
    boom = BOOM.format(exc="KeyError('gpus')")
    r = nodeagent_patched(boom, "--root", str(tmp_path), "-vv", "--log-format", "json", "detect")
    assert r.returncode == EXIT_SOFTWARE
    logged = [json.loads(ln) for ln in r.stderr.splitlines()[:-1]]
    assert any(d["event"] == "internal_error" and "KeyError" in d["exception"] for d in logged)
    assert r.stderr.splitlines()[-1].startswith("nodeagent: internal error: KeyError")


@pytest.mark.parametrize(
    ("env", "dot"),
    [({"PYTHONIOENCODING": "ascii"}, "-"), ({"LC_ALL": "C", "LANG": "C"}, "\u00b7")],
    ids=["ascii", "C-locale"],  # Python runs a C locale as UTF-8 (PEP 538)
)
def test_output_survives_an_ascii_stream(
    tmp_path: Path, fake_nvml, env: dict[str, str], dot: str
) -> None:
    from tests.sandbox import Sandbox

    with Sandbox(tmp_path / "sb", docker=False, lib=fake_nvml.lib) as box:
        box.start()
        r = subprocess.run(
            box.argv("apply", "--phase", "bootstrap"),
            env=box.env(**env),
            capture_output=True,
            timeout=120,
            cwd=REPO,
        )
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, out + err
    assert err == ""
    if dot == "-":
        assert r.stdout.isascii()
    last = out.splitlines()[-1]
    assert last.startswith(f"apply bootstrap: ok {dot} 1 ok, 1 changed, 1 skipped {dot} ")
    assert f"driver 580.159.04 {dot} CUDA 13.0" in out  # the detect line's dots too


# --- the parser reads the walk's phases and the registry's engines ---------------------------


def test_the_phase_choices_are_the_walks_phases() -> None:
    from nodeagent.cli.main import PHASE_CHOICES
    from nodeagent.walk.steps import Phase

    assert tuple(p.value for p in Phase) == PHASE_CHOICES


def test_runtime_choices_come_from_the_registry_only_when_asked() -> None:
    code = (
        "import sys\n"
        "from nodeagent.cli.main import build_parser\n"
        "build_parser()\n"
        "print('nodeagent.runtime.registry' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.stdout.strip() == "False", r.stderr  # building the parser loads no engine
    from nodeagent.runtime.registry import names

    r = nodeagent("rollback", "--runtime", "podman")
    assert r.returncode == EXIT_BAD_INPUT
    choices = ", ".join(repr(n) for n in ("auto", *names()))
    assert f"invalid choice: 'podman' (choose from {choices})" in r.stderr


# --- `runtime configure` is apply's runtime step, with its words -----------------------------


def test_runtime_configure_is_the_runtime_step(tmp_path: Path, fake_nvml) -> None:
    """Dry run, change, unchanged: the same lines ``apply`` prints in its runtime step's
    detail column; a failure is the step's one line on stderr with its exit code."""
    runtime = tmp_path / "usr/bin/nvidia-container-runtime"
    runtime.parent.mkdir(parents=True)
    runtime.write_text("#!/bin/sh\n")
    runtime.chmod(0o755)
    (tmp_path / "etc/nodeagent").mkdir(parents=True)
    (tmp_path / "etc/nodeagent/config.yaml").write_text("runtime:\n  engine: docker\n")
    configure = ("--root", str(tmp_path), "runtime", "configure", "--runtime", "docker")

    r = nodeagent(*configure, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("--- /dev/null\n+++ b/etc/docker/daemon.json\n")
    assert r.stdout.splitlines()[-1] == (
        "docker: would change /etc/docker/daemon.json; then none "
        "(docker is not running: it reads the file when it starts)"
    )
    assert not (tmp_path / "etc/docker/daemon.json").exists()

    r = nodeagent(*configure)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("docker: changed /etc/docker/daemon.json; written; not verified")

    unchanged = "docker: unchanged (configured; the daemon is not running: it reads it at start)"
    r = nodeagent(*configure)
    assert (r.returncode, r.stdout) == (0, unchanged + "\n")
    r = nodeagent(
        *configure[:2], "apply", "--phase", "bootstrap", "-o", "json", env=fake_nvml.env("t4")
    )
    (step,) = [s for s in json.loads(r.stdout)["steps"] if s["step"] == "runtime"]
    assert (step["status"], step["detail"]) == ("unchanged", unchanged)  # the very same words

    (tmp_path / "etc/docker/daemon.json").unlink()
    (tmp_path / "etc/docker/daemon.json").mkdir()
    r = nodeagent(*configure)
    assert (r.returncode, r.stdout) == (EXIT_BAD_INPUT, "")
    assert r.stderr.strip().splitlines()[-1] == (
        "nodeagent: /etc/docker/daemon.json: a directory, not a regular file; refusing to read it"
    )


def test_runtime_configure_with_no_engine_is_a_skip(tmp_path: Path) -> None:
    (tmp_path / "etc/nodeagent").mkdir(parents=True)
    (tmp_path / "etc/nodeagent/config.yaml").write_text("runtime:\n  engine: none\n")
    r = nodeagent("--root", str(tmp_path), "runtime", "configure")
    assert (r.returncode, r.stdout) == (0, "runtime: skipped (runtime.engine is none)\n")
