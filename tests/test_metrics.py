"""Metrics: the text format checked by prometheus_client's own parser, the textfile, HTTP."""

from __future__ import annotations

import math
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.daemon.metrics import CONTENT_TYPE, Metrics, format_value


def parse(text: str) -> dict[str, tuple[str, str, dict[tuple[str, tuple], float]]]:
    """family name → (type, help, {(sample name, sorted labels): value})."""
    out = {}
    for fam in text_string_to_metric_families(text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
        out[fam.name] = (fam.type, fam.documentation, samples)
    return out


def value(m: Metrics, sample: str, labels: Optional[dict[str, str]] = None) -> Optional[float]:
    """The rendered sample named ``sample`` with exactly ``labels``, or None."""
    key = (sample, tuple(sorted((labels or {}).items())))
    for _, _, samples in parse(m.render()).values():
        if key in samples:
            return samples[key]
    return None


@pytest.fixture
def m() -> Metrics:
    m = Metrics()
    m.describe("gpus", "gauge", "GPUs on the node, by state.")
    m.describe("reconciles", "counter", "Reconcile loops run.")
    m.describe("gpu_temperature_celsius", "gauge", "GPU temperature.")
    return m


def test_render_parses(m: Metrics) -> None:
    m.set("gpus", 4, {"state": "ok"})
    m.set("gpus", 1, {"state": "lost"})
    m.inc("reconciles")
    m.inc("reconciles", 2)
    m.set("gpu_temperature_celsius", 61.5, {"uuid": "GPU-1", "index": "0"})
    text = m.render()
    assert text.endswith("\n")
    assert parse(text) == {
        "nodeagent_gpus": (
            "gauge",
            "GPUs on the node, by state.",
            {
                ("nodeagent_gpus", (("state", "lost"),)): 1.0,
                ("nodeagent_gpus", (("state", "ok"),)): 4.0,
            },
        ),
        "nodeagent_reconciles": (
            "counter",
            "Reconcile loops run.",
            {("nodeagent_reconciles_total", ()): 3.0},
        ),
        "nodeagent_gpu_temperature_celsius": (
            "gauge",
            "GPU temperature.",
            {
                (
                    "nodeagent_gpu_temperature_celsius",
                    (("index", "0"), ("uuid", "GPU-1")),
                ): 61.5,
            },
        ),
    }


def test_same_families_as_prometheus_client_renders(m: Metrics) -> None:
    # The reference implementation, same metrics: the parsed families must agree.
    reg = CollectorRegistry()
    g = Gauge("nodeagent_gpus", "GPUs on the node, by state.", ["state"], registry=reg)
    c = Counter("nodeagent_reconciles", "Reconcile loops run.", registry=reg)
    t = Gauge(
        "nodeagent_gpu_temperature_celsius", "GPU temperature.", ["uuid", "index"], registry=reg
    )
    m.set("gpus", 2, {"state": "ok"})
    g.labels(state="ok").set(2)
    m.inc("reconciles", 5)
    c.inc(5)
    m.set("gpu_temperature_celsius", 1e6, {"uuid": 'G"\\\n', "index": "1"})
    t.labels(uuid='G"\\\n', index="1").set(1e6)
    ours = parse(m.render())
    # The client also exposes each counter's creation time, as a gauge family of its own.
    theirs = {
        name: fam
        for name, fam in parse(generate_latest(reg).decode()).items()
        if not name.endswith("_created")
    }
    assert ours == theirs


def test_render_text_exactly(m: Metrics) -> None:
    m.set("gpus", 8, {"state": "ok"})
    m.inc("reconciles")
    assert m.render() == (
        "# HELP nodeagent_gpu_temperature_celsius GPU temperature.\n"
        "# TYPE nodeagent_gpu_temperature_celsius gauge\n"
        "# HELP nodeagent_gpus GPUs on the node, by state.\n"
        "# TYPE nodeagent_gpus gauge\n"
        'nodeagent_gpus{state="ok"} 8\n'
        "# HELP nodeagent_reconciles_total Reconcile loops run.\n"
        "# TYPE nodeagent_reconciles_total counter\n"
        "nodeagent_reconciles_total 1\n"
    )


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.describe("info", "gauge", "x")
    nasty = 'back\\slash "quoted"\nnew line, {braces}=, ünïcode'
    m.set("info", 1, {"v": nasty})
    text = m.render()
    assert 'v="back\\\\slash \\"quoted\\"\\nnew line, {braces}=, ünïcode"' in text
    ((_, labels),) = parse(text)["nodeagent_info"][2]
    assert dict(labels) == {"v": nasty}


def test_help_is_escaped() -> None:
    m = Metrics()
    m.describe("x", "gauge", 'two\nlines, a \\ and "quotes"')
    assert '# HELP nodeagent_x two\\nlines, a \\\\ and "quotes"\n' in m.render()
    assert parse(m.render())["nodeagent_x"][1] == 'two\nlines, a \\ and "quotes"'


def test_counters() -> None:
    m = Metrics()
    m.describe("restarts", "counter", "Restarts.")
    m.describe("errors_total", "counter", "Errors.")  # already _total: not doubled
    m.inc("restarts", labels={"unit": "kubelet"})
    m.inc("errors_total", 0.5)
    m.set("errors_total", 7)  # mirroring a total kept elsewhere
    text = m.render()
    assert 'nodeagent_restarts_total{unit="kubelet"} 1\n' in text
    assert "nodeagent_errors_total 7\n" in text
    assert "_total_total" not in text
    assert value(m, "nodeagent_errors_total") == 7.0
    with pytest.raises(ValueError, match="cannot be decreased"):
        m.inc("restarts", -1)
    with pytest.raises(ValueError, match="cannot be set"):
        m.set("restarts", -1)
    # A gauge may go down.
    m.describe("g", "gauge", "G.")
    m.inc("g", -2.5)
    assert value(m, "nodeagent_g") == -2.5


def test_labels_order_does_not_matter(m: Metrics) -> None:
    assert value(m, "nodeagent_gpus") is None
    m.set("gpus", 3, {"a": "1", "b": "2"})
    m.set("gpus", 4, {"b": "2", "a": "1"})  # the same sample
    assert value(m, "nodeagent_gpus", {"b": "2", "a": "1"}) == 4
    assert value(m, "nodeagent_gpus", {}) is None  # {} is the sample without labels
    m.set("gpus", 1, {})
    assert value(m, "nodeagent_gpus") == 1


def test_samples_are_sorted_whatever_the_update_order() -> None:
    def build(order: list[str]) -> str:
        m = Metrics()
        for name in order:
            m.describe(name, "gauge", name)
        for name in reversed(order):
            for gpu in order if name == "b" else reversed(order):
                m.set(name, 1, {"gpu": gpu})
        return m.render()

    assert build(["a", "b", "c"]) == build(["c", "a", "b"])
    lines = [ln for ln in build(["b", "a"]).splitlines() if not ln.startswith("#")]
    assert lines == sorted(lines)


def test_undescribed_names_are_errors() -> None:
    m = Metrics()
    for call in (
        lambda: m.set("nope", 1),
        lambda: m.inc("nope"),
    ):
        with pytest.raises(ValueError, match="not described"):
            call()


@pytest.mark.parametrize("name", ["1abc", "has-dash", "has space", "", "ünï"])
def test_invalid_metric_names(name: str) -> None:
    with pytest.raises(ValueError):
        Metrics(namespace="").describe(name, "gauge", "x")


def test_colons_are_allowed_in_metric_names() -> None:
    m = Metrics(namespace="")
    m.describe("node:gpus:sum", "gauge", "x")
    m.set("node:gpus:sum", 1)
    assert "node:gpus:sum 1\n" in m.render()


@pytest.mark.parametrize("label", ["1a", "a-b", "a:b", "", "__reserved", "é"])
def test_invalid_label_names(m: Metrics, label: str) -> None:
    with pytest.raises(ValueError, match="invalid label name"):
        m.set("gpus", 1, {label: "x"})
    assert m.render().count("nodeagent_gpus") == 2  # HELP and TYPE only: nothing stored


def test_kinds_and_redescribing() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="kind"):
        m.describe("h", "histogram", "x")
    with pytest.raises(ValueError, match="invalid metric namespace"):
        Metrics(namespace="no-dashes")
    m.describe("x", "gauge", "old help")
    m.set("x", 1)
    m.describe("x", "gauge", "new help")
    assert "# HELP nodeagent_x new help\n" in m.render()
    assert value(m, "nodeagent_x") == 1
    with pytest.raises(ValueError, match="is a gauge"):
        m.describe("x", "counter", "x")
    m.describe("y", "counter", "y")
    with pytest.raises(ValueError, match="exposed as"):
        m.describe("y_total", "counter", "y again")  # both would be nodeagent_y_total


def test_namespaces() -> None:
    m = Metrics(namespace="gpuagent")
    m.describe("up", "gauge", "Up.")
    m.set("up", 1)
    assert "gpuagent_up 1\n" in m.render()
    bare = Metrics(namespace="")
    bare.describe("up", "gauge", "Up.")
    bare.set("up", 1)
    assert bare.render().endswith("\nup 1\n")
    assert Metrics().render() == ""


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (-0.0, "0"),
        (1, "1"),
        (-1, "-1"),
        (0.5, "0.5"),
        (61.25, "61.25"),
        (123456, "123456"),
        (1e6, "1e+06"),
        (1234567, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (-2.5e300, "-2.5e+300"),
        (0.1 + 0.2, "0.30000000000000004"),
        (2**53, "9.007199254740992e+15"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
    ],
)
def test_float_format_matches_prometheus(value: float, text: str) -> None:
    # Go's strconv.FormatFloat(v, 'g', -1, 64), as client_golang's expfmt writes values.
    assert format_value(value) == text
    m = Metrics()
    m.describe("v", "gauge", "v")
    m.set("v", value)
    ((parsed,),) = [list(f[2].values()) for f in parse(m.render()).values()]
    assert (math.isnan(parsed) and math.isnan(value)) or parsed == value


# --- the textfile ---------------------------------------------------------------------


def test_write_textfile(m: Metrics, tmp_path: Path) -> None:
    m.set("gpus", 2, {"state": "ok"})
    path = tmp_path / "collector" / "textfile" / "nodeagent.prom"  # dir created
    m.write_textfile(path)
    assert path.read_text() == m.render()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node-exporter (nobody) reads it
    m.set("gpus", 3, {"state": "ok"})
    m.write_textfile(path)
    assert parse(path.read_text())["nodeagent_gpus"][2] == {
        ("nodeagent_gpus", (("state", "ok"),)): 3.0
    }
    assert os.listdir(path.parent) == ["nodeagent.prom"]  # no temp files left


def test_textfile_must_end_in_prom(m: Metrics, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\*\.prom"):
        m.write_textfile(tmp_path / "nodeagent.txt")
    assert not (tmp_path / "nodeagent.txt").exists()


def test_textfile_is_never_seen_half_written(
    m: Metrics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "nodeagent.prom"
    m.set("gpus", 1, {"state": "ok"})
    m.write_textfile(path)
    old = path.read_text()

    # Stop the writer after the new text is in the temp file, before the rename (a
    # test-side seam: os.replace pauses until the marker is removed).
    marker = tmp_path / "paused"
    real_replace = os.replace

    def paused_replace(src: str, dst: str) -> None:
        marker.write_text("paused")
        while marker.exists():
            time.sleep(0.01)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", paused_replace)
    for i in range(500):
        m.set("gpu_temperature_celsius", 50 + i % 40, {"uuid": f"GPU-{i:04d}"})
    writer = threading.Thread(target=m.write_textfile, args=(path,))
    writer.start()
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "writer never paused"
        time.sleep(0.01)
    # Mid-write: the collector sees the old file whole, and no other *.prom file.
    assert path.read_text() == old
    assert sorted(p.name for p in tmp_path.glob("*.prom")) == ["nodeagent.prom"]
    (temp,) = tmp_path.glob(".nodeagent.prom.*")
    assert not temp.name.endswith(".prom")
    marker.unlink()
    writer.join(10)
    assert not writer.is_alive()
    assert path.read_text() == m.render()
    assert len(parse(path.read_text())["nodeagent_gpu_temperature_celsius"][2]) == 500
    assert sorted(os.listdir(tmp_path)) == ["nodeagent.prom"]


def test_textfile_concurrent_writers_and_a_reader(m: Metrics, tmp_path: Path) -> None:
    path = tmp_path / "nodeagent.prom"
    for i in range(200):
        m.set("gpu_temperature_celsius", i, {"uuid": f"GPU-{i:03d}"})
    m.write_textfile(path)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = 0

    def read() -> None:
        nonlocal reads
        while not stop.is_set():
            text = path.read_text()
            try:
                assert text.endswith("\n")
                assert len(parse(text)["nodeagent_gpu_temperature_celsius"][2]) == 200
            except BaseException as e:
                errors.append(e)
                return
            reads += 1

    def write() -> None:
        try:
            for _ in range(20):
                m.inc("reconciles")
                m.write_textfile(path)
        except BaseException as e:
            errors.append(e)

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write) for _ in range(3)]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert errors == []
    assert reads > 0
    assert parse(path.read_text())["nodeagent_reconciles"][2] == {
        ("nodeagent_reconciles_total", ()): 60.0
    }
    assert os.listdir(tmp_path) == ["nodeagent.prom"]


# --- the HTTP server ------------------------------------------------------------------


@pytest.fixture
def served(m: Metrics) -> Iterator[tuple[Metrics, str]]:
    server = m.serve("127.0.0.1", 0)
    host, port = server.address
    try:
        yield m, f"http://{host}:{port}"
    finally:
        server.close()


def test_http_metrics(served: tuple[Metrics, str]) -> None:
    m, base = served
    m.set("gpus", 4, {"state": "ok"})
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        body = resp.read().decode()
    assert body == m.render()
    assert parse(body)["nodeagent_gpus"][2] == {("nodeagent_gpus", (("state", "ok"),)): 4.0}
    # Updates show on the next scrape; a query string is ignored.
    m.inc("reconciles")
    with urllib.request.urlopen(base + "/metrics?x=1", timeout=10) as resp:
        assert "nodeagent_reconciles_total 1\n" in resp.read().decode()


def test_http_healthz_head_and_404(served: tuple[Metrics, str]) -> None:
    _, base = served
    assert base.startswith("http://127.0.0.1:") and not base.endswith(":0")
    with urllib.request.urlopen(base + "/healthz", timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == b"ok"
    req = urllib.request.Request(base + "/metrics", method="HEAD")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) > 0
        assert resp.read() == b""
    for path in ("/", "/metricsx", "/healthz/x", "/favicon.ico"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + path, timeout=10)
        assert err.value.code == 404
        err.value.close()


def test_close_frees_the_port(m: Metrics) -> None:
    server = m.serve("127.0.0.1", 0)
    host, port = server.address
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as resp:
        assert resp.read() == b"ok"
    server.close()
    server.close()  # idempotent
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), timeout=5):
        pass
    # A restarted daemon gets its port back.
    again = m.serve(host, port)
    try:
        assert again.address == (host, port)
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as resp:
            assert resp.read() == b"ok"
    finally:
        again.close()


def test_port_in_use_is_an_error(m: Metrics) -> None:
    with m.serve("127.0.0.1", 0) as server, pytest.raises(OSError):
        m.serve("127.0.0.1", server.address[1])


# --- threads --------------------------------------------------------------------------


def test_updates_from_threads_are_exact(served: tuple[Metrics, str]) -> None:
    m, base = served
    threads_n, per_thread = 8, 5000
    start = threading.Barrier(threads_n + 1)
    scrapes: list[str] = []

    def work(i: int) -> None:
        start.wait()
        for k in range(per_thread):
            m.inc("reconciles")
            m.inc("reconciles", 0.5, labels={"thread": str(i % 2)})
            m.set("gpus", k, {"thread": str(i)})

    def scrape() -> None:
        start.wait()
        for _ in range(20):
            with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
                scrapes.append(resp.read().decode())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    threads.append(threading.Thread(target=scrape))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert value(m, "nodeagent_reconciles_total") == threads_n * per_thread
    half = threads_n // 2 * per_thread * 0.5
    assert value(m, "nodeagent_reconciles_total", {"thread": "0"}) == half
    assert value(m, "nodeagent_reconciles_total", {"thread": "1"}) == half
    for i in range(threads_n):
        assert value(m, "nodeagent_gpus", {"thread": str(i)}) == per_thread - 1
    # Every scrape mid-update was a consistent, parsable snapshot; counters never went back.
    seen = [
        parse(s)["nodeagent_reconciles"][2].get(("nodeagent_reconciles_total", ()), 0.0)
        for s in scrapes
    ]
    assert seen == sorted(seen)
    final = parse(m.render())["nodeagent_reconciles"][2]
    assert final[("nodeagent_reconciles_total", ())] == threads_n * per_thread
