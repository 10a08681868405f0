"""Prometheus metrics, stdlib only: a small registry, the text format, two ways out.

The daemon keeps gauges and counters in a :class:`Metrics` registry (updated from several
threads) and exposes them as Prometheus text format 0.0.4, either served over HTTP
(:meth:`Metrics.serve`, ``GET /metrics``) or written for node-exporter's textfile collector
(:meth:`Metrics.write_textfile`).

Names are given without the namespace: ``describe("gpus", "gauge", ...)`` is exposed as
``nodeagent_gpus``; a counter gets the ``_total`` suffix the format asks of counters
(``describe("restarts", "counter", ...)`` → ``nodeagent_restarts_total``). A family
described with ``namespaced=False`` is exposed exactly as named (another exporter's names,
e.g. dcgm-exporter's ``DCGM_FI_DEV_GPU_UTIL``), counters included.

Generic: it knows no daemon metric (those are :mod:`nodeagent.daemon.telemetry`'s) and
touches one host file, the textfile it is asked to write, through the one writer.
"""

from __future__ import annotations

import dataclasses
import math
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from nodeagent.host.writer import existing_meta, own_meta, write_file
from nodeagent.log import get_logger

log = get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = ("gauge", "counter")

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# One textfile writer at a time, so the file never goes back to an older snapshot.
_TEXTFILE_LOCK = threading.Lock()

LabelKey = tuple[tuple[str, str], ...]


@dataclasses.dataclass
class _Family:
    exposed: str  # the sample name as rendered: namespace_name, counters with _total
    kind: str
    help: str
    samples: dict[LabelKey, float] = dataclasses.field(default_factory=dict)


class Metrics:
    """A thread-safe registry of gauges and counters, rendered in the text format."""

    def __init__(self, namespace: str = "nodeagent") -> None:
        if namespace and not _METRIC_NAME_RE.fullmatch(namespace):
            raise ValueError(f"invalid metric namespace {namespace!r}")
        self.namespace = namespace
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def describe(self, name: str, kind: str, help: str, *, namespaced: bool = True) -> None:
        """Declare metric ``name`` (without the namespace) of ``kind`` "gauge" or "counter".

        Describing it again with the same kind only replaces the help text; with another
        kind is a ValueError. A counter's name may be given with or without ``_total``.
        ``namespaced=False``: exposed as ``name`` exactly, without namespace or ``_total``.
        """
        if kind not in KINDS:
            raise ValueError(f"metric {name!r}: kind must be one of {KINDS}, not {kind!r}")
        full = f"{self.namespace}_{name}" if self.namespace and namespaced else name
        if not _METRIC_NAME_RE.fullmatch(full):
            raise ValueError(f"invalid metric name {full!r}")
        if namespaced and kind == "counter" and not full.endswith("_total"):
            full += "_total"
        with self._lock:
            family = self._families.get(name)
            if family is not None and family.kind != kind:
                raise ValueError(f"metric {name!r} is a {family.kind}, not a {kind}")
            clash = [n for n, f in self._families.items() if f.exposed == full and n != name]
            if clash:
                raise ValueError(f"metric {name!r} would be exposed as {clash[0]!r} is")
            if family is None:
                self._families[name] = _Family(exposed=full, kind=kind, help=help)
            else:
                family.help = help

    def set(self, name: str, value: float, labels: Optional[Mapping[str, str]] = None) -> None:
        """Set the sample of ``name`` with ``labels`` to ``value``. On a counter, for
        copying a total kept elsewhere (a device's error count); it must not be negative."""
        key = _label_key(labels)
        value = float(value)
        with self._lock:
            family = self._family(name)
            if family.kind == "counter" and value < 0:
                raise ValueError(f"counter {name!r} cannot be set to {value}")
            family.samples[key] = value

    def replace(self, name: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        """Make ``samples`` (labels, value) the only samples of ``name``, in one step: a
        series not among them (a GPU that is gone) is no longer rendered."""
        new = {_label_key(labels): float(v) for labels, v in samples}
        with self._lock:
            family = self._family(name)
            if family.kind == "counter" and any(v < 0 for v in new.values()):
                raise ValueError(f"counter {name!r} cannot be set below 0")
            family.samples = new

    def inc(self, name: str, by: float = 1.0, labels: Optional[Mapping[str, str]] = None) -> None:
        """Add ``by`` to the sample (a missing sample starts at 0). A counter only goes up:
        a negative ``by`` on a counter is a ValueError."""
        key = _label_key(labels)
        by = float(by)
        with self._lock:
            family = self._family(name)
            if family.kind == "counter" and by < 0:
                raise ValueError(f"counter {name!r} cannot be decreased (by={by})")
            family.samples[key] = family.samples.get(key, 0.0) + by

    def render(self) -> str:
        """Everything in text format 0.0.4: ``# HELP`` and ``# TYPE`` lines, then the
        samples, families by name and samples by labels, ending with a newline (or "" when
        nothing is described). A described metric with no samples still gets its HELP and
        TYPE lines."""
        with self._lock:
            families = sorted(self._families.values(), key=lambda f: f.exposed)
            lines: list[str] = []
            for f in families:
                lines.append(f"# HELP {f.exposed} {_escape_help(f.help)}")
                lines.append(f"# TYPE {f.exposed} {f.kind}")
                for key in sorted(f.samples):
                    lines.append(f"{f.exposed}{_render_labels(key)} {format_value(f.samples[key])}")
        return "".join(line + "\n" for line in lines)

    def write_textfile(self, path: Path) -> None:
        """Write :meth:`render` to ``path`` for node-exporter's textfile collector.

        The name must end in ``.prom`` (the collector reads only those). Atomic: the text
        goes to a temp file in the same directory (a name not ending in ``.prom``, so never
        read), which is renamed over ``path``; the directory is created if missing.
        """
        if path.suffix != ".prom":
            raise ValueError(f"{path}: the textfile collector reads only *.prom files")
        # Rendered under the lock too, so writes land in the order they were rendered: the
        # file is never replaced by an older snapshot than the one it holds.
        with _TEXTFILE_LOCK:
            # Readable by node-exporter, which runs as its own user (kept if the operator
            # chose another mode for the file).
            write_file(path, self.render().encode("utf-8"), existing_meta(path, own_meta()))

    def serve(self, host: str, port: int) -> MetricsServer:
        """Serve ``GET /metrics`` (and ``/healthz``) on ``host``:``port`` from a daemon
        thread; port 0 picks a free port (see :attr:`MetricsServer.address`)."""
        return MetricsServer(self, host, port)

    def _family(self, name: str) -> _Family:
        family = self._families.get(name)
        if family is None:
            raise ValueError(f"metric {name!r} was not described")
        return family


class MetricsServer:
    """An HTTP server for a :class:`Metrics` registry, running in a daemon thread.

    ``GET /metrics`` → 200, the text format; ``GET /healthz`` → 200 ``ok``; any other path
    → 404. ``HEAD`` is answered like ``GET`` without the body.
    """

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._httpd = _HTTPServer((host, port), _handler_for(metrics))
        self._closed = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="nodeagent-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics.serving", host=self.address[0], port=self.address[1])

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when 0 was asked for."""
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving and close the listening socket (the port is free again)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        # An IPv6 literal needs an AF_INET6 socket; the base class makes AF_INET ones.
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


def _handler_for(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nodeagent"
        timeout = 30  # a client that stalls mid-request does not hold a thread forever

        def do_GET(self) -> None:
            self._respond(body=True)

        def do_HEAD(self) -> None:
            self._respond(body=False)

        def _respond(self, body: bool) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                status, ctype, text = 200, CONTENT_TYPE, metrics.render()
            elif path == "/healthz":
                status, ctype, text = 200, "text/plain; charset=utf-8", "ok"
            else:
                status, ctype, text = 404, "text/plain; charset=utf-8", "not found\n"
            data = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics.request", client=self.address_string(), line=format % args)

    return Handler


def format_value(value: float) -> str:
    """``value`` as Prometheus's Go code writes it (strconv 'g', shortest): ``NaN``,
    ``+Inf``, ``-Inf``, ``1``, ``0.5``, ``123456``, ``1e+06``, ``1.5e-07``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    # repr gives the shortest digits that round-trip, as Go's shortest formatting does.
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # the decimal point sits after this many digits
    exp = point - 1
    neg = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{neg}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{neg}{digits}{'0' * (point - len(digits))}"
    return f"{neg}{digits[:point]}.{digits[point:]}"


def _label_key(labels: Optional[Mapping[str, str]]) -> LabelKey:
    if not labels:
        return ()
    for name in labels:
        if not _LABEL_NAME_RE.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}")
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _render_labels(key: LabelKey) -> str:
    if not key:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in key) + "}"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
