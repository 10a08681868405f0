"""dcgm-exporter compatible per-GPU series: the simulated 8x H100 through the real pynvml,
rendered, served over HTTP, linted by promtool and scraped by a real Prometheus, with the
pod that holds a GPU from the kubelet's pod-resources API (served by grpcio)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.daemon.sdnotify import Notifier
from nodeagent.daemon.telemetry import Telemetry
from nodeagent.gpu.events import XidEvent
from nodeagent.gpu.inventory import Inventory
from nodeagent.gpu.nvml import detect
from nodeagent.host.paths import HostRoot
from nodeagent.kube.podresources import DEFAULT_SOCKET as SOCK
from tests.fakeclock import FakeClock
from tests.podresources_peer import PodResourcesPeer, holding
from tests.realparts import skip_or_fail

HOST = "node-a"
# promtool's lint of dcgm-exporter's own names (exit 3): a camelCase label it must keep,
# counters named without _total. Anything else promtool says fails the test.
DCGM_LINT = (
    "label names should be written in 'snake_case' not 'camelCase'",
    'counter metrics should have "_total" suffix',
)


def samples(text: str) -> dict[str, dict[str, tuple[dict[str, str], float]]]:
    """family name → {gpu: (labels, value)} (the parser names a counter's samples _total)."""
    out: dict[str, dict[str, tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(fam.name, {})[s.labels.get("gpu", "")] = (dict(s.labels), s.value)
    return out


@pytest.fixture
def h100(use_profile: Callable[[str], str], fake_nvml: Any) -> tuple[Inventory, dict[str, Any]]:
    return detect(library=use_profile("h100x8")), fake_nvml.data("h100x8")


@pytest.fixture
def telemetry(tmp_path: Path) -> Telemetry:
    return Telemetry(Notifier(None), HostRoot(tmp_path), FakeClock())


def check_h100(text: str, data: dict[str, Any]) -> None:
    got = samples(text)
    assert len(data["gpus"]) == 8
    for i, p in enumerate(data["gpus"]):
        want_labels = {
            "gpu": str(i),
            "UUID": p["uuid"],
            "device": f"nvidia{i}",
            "modelName": p["name"],
            "Hostname": HOST,
        }
        rows = p["remapped_rows"]
        want = {
            "DCGM_FI_DEV_GPU_UTIL": p["utilization_gpu_pct"],
            "DCGM_FI_DEV_FB_USED": p["memory_used_mib"],
            "DCGM_FI_DEV_FB_FREE": p["memory_total_mib"] - p["memory_used_mib"],
            "DCGM_FI_DEV_GPU_TEMP": p["temperature_c"],
            "DCGM_FI_DEV_POWER_USAGE": p["power_usage_mw"] / 1000,
            "DCGM_FI_DEV_XID_ERRORS": 0,
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": rows["correctable"],
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": rows["uncorrectable"],
            "DCGM_FI_DEV_ROW_REMAP_FAILURE": int(rows["failure"]),
            "DCGM_FI_DEV_ROW_REMAP_PENDING": int(rows["pending"]),
        }
        for name, value in want.items():
            assert got[name][str(i)] == (want_labels, value), name
            assert f"\n{name}{{" in text, f"{name} exposed under another name"
    assert "nodeagent_gpus" in got  # the agent's own series stay


def test_textfile_and_http_carry_dcgm_series(
    h100: tuple[Inventory, dict[str, Any]], telemetry: Telemetry, tmp_path: Path
) -> None:
    inv, data = h100
    telemetry.detected(inv, HOST)
    telemetry.write_textfile("/metrics/node.prom")
    check_h100((tmp_path / "metrics/node.prom").read_text(), data)
    with telemetry.metrics.serve("127.0.0.1", 0) as srv:
        url = f"http://127.0.0.1:{srv.address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read().decode()
    check_h100(body, data)
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool", "promtool not installed (apt-get install prometheus)")
        return
    r2 = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    problems = [ln for ln in (r2.stdout + r2.stderr).splitlines() if ln.strip()]
    assert r2.returncode in (0, 3), problems
    unexpected = [p for p in problems if not (p.startswith("DCGM_") and p.endswith(DCGM_LINT))]
    assert unexpected == []
    # the agent's own families, without dcgm-exporter's names, pass promtool outright
    own = "".join(block for block in re.split(r"(?m)^(?=# HELP )", body) if "DCGM_" not in block)
    assert "# HELP nodeagent_" in own
    r3 = subprocess.run(
        [promtool, "check", "metrics"], input=own, capture_output=True, text=True, timeout=30
    )
    assert (r3.returncode, r3.stdout + r3.stderr) == (0, "")


def test_unsupported_reading_is_no_sample_and_gone_gpu_has_no_series(
    h100: tuple[Inventory, dict[str, Any]], telemetry: Telemetry
) -> None:
    inv, _ = h100
    telemetry.detected(inv, HOST)
    gpus = list(inv.gpus)
    gpus[1] = dataclasses.replace(gpus[1], utilization_gpu_pct=None, memory_used_mib=None)
    telemetry.detected(dataclasses.replace(inv, gpus=tuple(gpus[:7])), HOST)
    got = samples(telemetry.metrics.render())
    assert "1" not in got["DCGM_FI_DEV_GPU_UTIL"] and "1" not in got["DCGM_FI_DEV_FB_FREE"]
    assert "1" in got["DCGM_FI_DEV_GPU_TEMP"]
    for name in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_XID_ERRORS"):
        assert sorted(got[name]) == [str(i) for i in range(7)], name


def test_xid_errors_is_the_last_xid(
    h100: tuple[Inventory, dict[str, Any]], telemetry: Telemetry
) -> None:
    inv, _ = h100
    telemetry.detected(inv, HOST)
    for xid in (79, 13):
        telemetry.xid(XidEvent(2, inv.gpus[2].uuid, xid, xid == 79, ""))
    got = samples(telemetry.metrics.render())["DCGM_FI_DEV_XID_ERRORS"]
    assert got["2"][1] == 13 and got["3"][1] == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.load(r)
    assert doc["status"] == "success"
    return list(doc["data"]["result"])


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A --root short enough for a unix socket path (107 bytes), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="prom-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_real_prometheus_scrapes_gpu_util(
    h100: tuple[Inventory, dict[str, Any]], short_root: Path, tmp_path: Path
) -> None:
    """GPU 0 is held by a pod (the kubelet's pod-resources API served by grpcio): its
    series carry namespace, pod and container, which an HPA's query selects on."""
    binary = "/usr/bin/prometheus"
    if not Path(binary).exists():
        skip_or_fail("prometheus", "prometheus not installed (apt-get install prometheus)")
    inv, data = h100
    telemetry = Telemetry(Notifier(None), HostRoot(short_root), FakeClock(), lambda: SOCK)
    pod = holding("ml", "train-0", "cuda", data["gpus"][0]["uuid"])
    with PodResourcesPeer(short_root / SOCK.lstrip("/"), (pod,)):
        telemetry.detected(inv, HOST)
    with telemetry.metrics.serve("127.0.0.1", 0) as srv:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: nodeagent\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{srv.address[1]}']}}]\n"
        )
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            result: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not result:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                with contextlib.suppress(OSError):  # not listening yet
                    result = query(port, 'DCGM_FI_DEV_GPU_UTIL{gpu="0"}')
                if not result:
                    time.sleep(0.5)
            assert len(result) == 1, "no sample within 30 s"
            metric = result[0]["metric"]
            assert metric["UUID"] == data["gpus"][0]["uuid"] and metric["Hostname"] == HOST
            assert float(result[0]["value"][1]) == data["gpus"][0]["utilization_gpu_pct"]
            held = query(
                port, 'DCGM_FI_DEV_GPU_UTIL{namespace="ml",pod="train-0",container="cuda"}'
            )
            assert [r["metric"]["gpu"] for r in held] == ["0"]
            free = query(port, 'DCGM_FI_DEV_GPU_UTIL{pod=""}')  # no pod holds them
            assert sorted(r["metric"]["gpu"] for r in free) == [str(i) for i in range(1, 8)]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
