"""Which pod holds each GPU: the kubelet's pod-resources API, read without grpcio.

Holds a small gRPC unary client over the kubelet's unix socket (HTTP/2 by the pure-Python
``h2``; the messages by :mod:`nodeagent.kube.protowire`), the typed failures of a call, and
:func:`attribute`, the pure mapping from the kubelet's answer and the GPU inventory to "GPU
index → (namespace, pod, container)" (docs/operations.md, "Which pod holds each GPU").

One call, :func:`list_pods`, is one connection and at most two requests (``v1``, then
``v1alpha1`` when the kubelet answers UNIMPLEMENTED: kubelets before 1.20), all within one
deadline; every failure is a :class:`PodResourcesError` with a :class:`Failure` reason and
one line, never another exception and never a wait past the deadline. Touches one host
object, the socket it is given (taken under ``--root``); no file is read or written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Callable, Optional

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from nodeagent import StrEnum, __version__
from nodeagent.errors import NodeagentError, one_line, shorten
from nodeagent.gpu.inventory import GPU, Inventory
from nodeagent.host.paths import HostRoot
from nodeagent.kube.protowire import (
    ListPodResourcesResponse,
    MalformedMessage,
    decode_list_response,
)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
METHODS = ("/v1.PodResourcesLister/List", "/v1alpha1.PodResourcesLister/List")
DEADLINE_S = 2.0  # the whole call: the kubelet answers from memory in milliseconds
# The largest answer read: the kubelet's own pod-resources client allows 16 MiB.
MAX_RESPONSE_BYTES = 16 << 20
_RECV_BYTES = 64 << 10
_FRAME_HEADER = 9  # bytes: length (3), type (1), flags (1), stream (4)
_SETTINGS = 0x4  # the frame type a server's preface starts with (RFC 9113 3.4)
_SUN_PATH_MAX = 107  # bytes of a unix socket path, without the NUL (sockaddr_un)

# The resources NVIDIA's device plugin advertises: whole GPUs, GPUs shared by time-slicing
# or MPS when renamed (".shared"), and MIG devices under the mixed strategy.
GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/gpu.shared")
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"

# gRPC status codes (grpc/doc/statuscodes.md) by number, for messages.
GRPC_CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
GRPC_UNIMPLEMENTED = 12


class Failure(StrEnum):
    """Why a pod-resources call gave no answer (the daemon logs each once per change)."""

    OFF = "off"  # daemon.pod_resources_socket is "": never called
    SOCKET_ABSENT = "socket-absent"  # no kubelet here (yet), or another socket path
    PERMISSION_DENIED = "permission-denied"  # the socket is root's: run the agent as root
    CONNECTION_REFUSED = "connection-refused"  # a socket file nobody listens on
    CONNECTION_LOST = "connection-lost"  # closed or reset before the answer ended
    DEADLINE = "deadline-exceeded"  # no whole answer within the deadline
    GRPC_STATUS = "grpc-status"  # the kubelet answered with a gRPC error
    MALFORMED = "malformed"  # not HTTP/2, not gRPC, or not the expected message


class PodResourcesError(NodeagentError):
    """A pod-resources call failed: ``reason``, and one line ``PATH: what is wrong``."""

    def __init__(self, reason: Failure, message: str, grpc_code: Optional[int] = None) -> None:
        super().__init__(one_line(message))
        self.reason = reason
        self.grpc_code = grpc_code


@dataclasses.dataclass(frozen=True)
class Listing:
    """The kubelet's answer and the API version that gave it ("v1" or "v1alpha1")."""

    response: ListPodResourcesResponse
    api: str


# --- the call (imperative shell) ------------------------------------------------------------


def list_pods(
    root: HostRoot,
    host_path: str,
    deadline_s: float = DEADLINE_S,
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> Listing:
    """``List`` from the kubelet's pod-resources socket at ``host_path`` (under ``root``):
    ``v1``, then ``v1alpha1`` if the kubelet does not implement ``v1``. Raises only
    :class:`PodResourcesError` (``host_path`` is absolute: the config checks it)."""
    deadline = monotonic() + deadline_s
    shown = shorten(host_path, 120)
    sock = _connect(root.path(host_path), shown, deadline_s)
    try:
        channel = _Channel(sock, shown, deadline, monotonic)
        for method in METHODS:
            try:
                payload = channel.unary(method, b"")
            except PodResourcesError as e:
                if e.grpc_code == GRPC_UNIMPLEMENTED and method != METHODS[-1]:
                    continue
                raise
            try:
                response = decode_list_response(payload)
            except MalformedMessage as e:
                raise PodResourcesError(Failure.MALFORMED, f"{shown}: {method}: {e}") from None
            return Listing(response, method.split(".")[0].lstrip("/"))
        raise AssertionError("unreachable: the last method's error is raised")
    finally:
        sock.close()


_ERRNO_REASONS = {
    errno.ENOENT: Failure.SOCKET_ABSENT,
    errno.ENOTDIR: Failure.SOCKET_ABSENT,
    errno.EACCES: Failure.PERMISSION_DENIED,
    errno.EPERM: Failure.PERMISSION_DENIED,
    errno.ECONNREFUSED: Failure.CONNECTION_REFUSED,
    errno.ENOTSOCK: Failure.CONNECTION_REFUSED,
    errno.EPROTOTYPE: Failure.CONNECTION_REFUSED,  # a datagram socket
}


def _connect(path: Path, shown: str, timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(max(timeout_s, 0.001))
    try:
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            sock.connect(os.fspath(path))
        else:  # too long for sockaddr_un (a deep --root): through the directory's fd
            fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{fd}/{path.name}")
            finally:
                os.close(fd)
    except socket.timeout:
        sock.close()
        raise PodResourcesError(Failure.DEADLINE, f"{shown}: connect timed out") from None
    except OSError as e:
        sock.close()
        reason = _ERRNO_REASONS.get(e.errno or 0, Failure.CONNECTION_LOST)
        what = e.strerror or type(e).__name__
        raise PodResourcesError(reason, f"{shown}: {what}") from None
    return sock


@dataclasses.dataclass
class _Answer:
    """What one stream has received so far."""

    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    trailers: dict[str, str] = dataclasses.field(default_factory=dict)
    data: bytearray = dataclasses.field(default_factory=bytearray)
    ended: bool = False


class _Channel:
    """One HTTP/2 connection to a gRPC server; unary calls one after the other."""

    def __init__(
        self, sock: socket.socket, shown: str, deadline: float, monotonic: Callable[[], float]
    ) -> None:
        self._sock = sock
        self._shown = shown
        self._deadline = deadline
        self._monotonic = monotonic
        self._conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self._conn.initiate_connection()
        self._conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        self._conn.increment_flow_control_window(MAX_RESPONSE_BYTES)
        self._head = b""  # the first bytes the server sent, up to one frame header

    def _fail(self, reason: Failure, what: str, code: Optional[int] = None) -> PodResourcesError:
        return PodResourcesError(reason, f"{self._shown}: {what}", code)

    def unary(self, method: str, request: bytes) -> bytes:
        """The one response message of ``method`` called with ``request`` (encoded)."""
        left_ms = max(1, int((self._deadline - self._monotonic()) * 1000))
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", f"{left_ms}m"),
            ("user-agent", f"nodeagent/{__version__}"),
        ]
        frame = b"\x00" + len(request).to_bytes(4, "big") + request
        try:
            stream = self._conn.get_next_available_stream_id()
            self._conn.send_headers(stream, headers)
            self._conn.send_data(stream, frame, end_stream=True)
        except H2Error as e:  # the server closed the connection (GOAWAY) after a first call
            what = one_line(str(e)) or type(e).__name__
            raise self._fail(Failure.CONNECTION_LOST, f"{method}: {shorten(what)}") from None
        answer = _Answer()
        while not answer.ended:
            self._flush()
            self._take(self._recv(method), stream, answer, method)
        with contextlib.suppress(PodResourcesError):  # acks: the answer is whole already
            self._flush()
        return self._message(answer, method)

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if not out:
            return
        self._sock.settimeout(self._left())
        try:
            self._sock.sendall(out)
        except socket.timeout:
            raise self._fail(Failure.DEADLINE, "no answer within the deadline") from None
        except OSError as e:
            raise self._fail(Failure.CONNECTION_LOST, e.strerror or type(e).__name__) from None

    def _left(self) -> float:
        left = self._deadline - self._monotonic()
        if left <= 0:
            raise self._fail(Failure.DEADLINE, "no answer within the deadline")
        return left

    def _recv(self, method: str) -> list[Event]:
        self._sock.settimeout(self._left())
        try:
            data = self._sock.recv(_RECV_BYTES)
        except socket.timeout:
            raise self._fail(Failure.DEADLINE, f"{method}: no answer within the deadline") from None
        except OSError as e:
            what = e.strerror or type(e).__name__
            raise self._fail(Failure.CONNECTION_LOST, f"{method}: {what}") from None
        if not data:
            raise self._fail(Failure.CONNECTION_LOST, f"{method}: closed before the answer ended")
        if len(self._head) < _FRAME_HEADER:  # the server's first frame must be SETTINGS
            self._head += data[: _FRAME_HEADER - len(self._head)]
            if len(self._head) > 3 and self._head[3] != _SETTINGS:
                raise self._fail(Failure.MALFORMED, f"{method}: not HTTP/2 (no SETTINGS first)")
        try:
            return list(self._conn.receive_data(data))
        except Exception as e:  # h2, hpack and hyperframe on bytes that are not HTTP/2
            what = one_line(str(e)) or type(e).__name__
            raise self._fail(Failure.MALFORMED, f"{method}: not HTTP/2: {shorten(what)}") from None

    def _take(self, events: Iterable[Event], stream: int, answer: _Answer, method: str) -> None:
        for ev in events:
            if isinstance(ev, ResponseReceived) and ev.stream_id == stream:
                answer.headers = _headers(ev.headers)
            elif isinstance(ev, TrailersReceived) and ev.stream_id == stream:
                answer.trailers = _headers(ev.headers)
            elif isinstance(ev, DataReceived) and ev.stream_id == stream:
                answer.data += ev.data or b""
                self._conn.acknowledge_received_data(ev.flow_controlled_length, stream)
                if len(answer.data) > MAX_RESPONSE_BYTES + 5:
                    raise self._fail(
                        Failure.MALFORMED, f"{method}: answer over {MAX_RESPONSE_BYTES} bytes"
                    )
            elif isinstance(ev, StreamEnded) and ev.stream_id == stream:
                answer.ended = True
            elif isinstance(ev, StreamReset) and ev.stream_id == stream:
                raise self._fail(
                    Failure.CONNECTION_LOST, f"{method}: stream reset (code {ev.error_code})"
                )
            elif isinstance(ev, ConnectionTerminated) and not answer.ended:
                raise self._fail(
                    Failure.CONNECTION_LOST,
                    f"{method}: connection closed by the server (GOAWAY {ev.error_code})",
                )

    def _message(self, answer: _Answer, method: str) -> bytes:
        status = answer.headers.get(":status", "")
        if status != "200":
            raise self._fail(Failure.MALFORMED, f"{method}: HTTP status {status or 'missing'}")
        # A trailers-only answer (an error, typically) carries grpc-status in its headers.
        meta = answer.trailers or answer.headers
        raw = meta.get("grpc-status")
        if raw is None or not raw.isdigit():
            raise self._fail(Failure.MALFORMED, f"{method}: no grpc-status in the answer")
        code = int(raw)
        if code != 0:
            name = GRPC_CODES[code] if code < len(GRPC_CODES) else str(code)
            text = urllib.parse.unquote(meta.get("grpc-message", ""))
            detail = f"{method}: gRPC {name}" + (f": {shorten(text, 200)}" if text else "")
            raise self._fail(Failure.GRPC_STATUS, detail, code)
        if not answer.headers.get("content-type", "").startswith("application/grpc"):
            raise self._fail(Failure.MALFORMED, f"{method}: content-type is not application/grpc")
        return _one_message(bytes(answer.data), lambda what: self._fail(Failure.MALFORMED, what))


def _headers(pairs: Optional[Iterable[tuple[bytes | str, bytes | str]]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in pairs or ():
        key = k.decode("latin-1") if isinstance(k, bytes) else k
        out[key.lower()] = v.decode("latin-1") if isinstance(v, bytes) else v
    return out


def _one_message(data: bytes, fail: Callable[[str], PodResourcesError]) -> bytes:
    """The single message of a unary answer's gRPC length-prefixed framing."""
    if len(data) < 5:
        raise fail("answer shorter than one gRPC message frame")
    if data[0] != 0:
        raise fail("compressed gRPC message (none was asked for)")
    size = int.from_bytes(data[1:5], "big")
    if size != len(data) - 5:
        raise fail(f"gRPC frame of {size} bytes in {len(data) - 5}")
    return data[5:]


# --- the mapping (pure) ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class PodRef:
    """The container that holds a GPU: the labels its series get."""

    namespace: str
    pod: str
    container: str

    def labels(self) -> dict[str, str]:
        return {"namespace": self.namespace, "pod": self.pod, "container": self.container}


@dataclasses.dataclass(frozen=True)
class Attribution:
    """GPU index → the container that holds it; the device ids that name no GPU here."""

    by_gpu: Mapping[int, PodRef]
    unmapped: tuple[str, ...] = ()
    shared: tuple[int, ...] = ()  # GPUs more than one container holds (the first is kept)


_INDEX_RE = re.compile(r"(\d+)(?::\d+)?")  # "3", or a MIG device "3:1" (GPU 3)
_GKE_RE = re.compile(r"nvidia(\d+)(?:/gi\d+)?(?:/vgpu\d+)?")  # GKE's plugin


def is_gpu_resource(name: str) -> bool:
    return name in GPU_RESOURCES or name.startswith(MIG_RESOURCE_PREFIX)


def gpu_of(device_id: str, gpus: Iterable[GPU]) -> Optional[int]:
    """The index of the GPU of the inventory that ``device_id`` names, or None.

    NVIDIA's device plugin names a GPU by its UUID (``GPU-…``) and a MIG device by its own
    (``MIG-…``), whatever its ``--device-id-strategy`` (which only changes what the container
    is given); a shared GPU's replicas end in ``::N``. Indices (``3``, MIG ``3:1``) and GKE's
    ``nvidia3[/gi1][/vgpu0]`` are read too.
    """
    base = device_id.split("::", 1)[0]
    listed = tuple(gpus)
    for g in listed:
        if g.uuid and base == g.uuid:
            return g.index
        if any(m.uuid == base for m in g.mig_devices):
            return g.index
    m = _INDEX_RE.fullmatch(base) or _GKE_RE.fullmatch(base)
    if m is not None:
        index = int(m.group(1))
        if any(g.index == index for g in listed):
            return index
    return None


def attribute(response: ListPodResourcesResponse, inv: Inventory) -> Attribution:
    """Which container holds each GPU of ``inv``, from the kubelet's answer. A GPU held by
    several containers (time-slicing, MPS, MIG devices of one GPU in several pods) keeps
    the first in (namespace, pod, container) order, so its labels do not flap between two
    answers that list the pods in another order."""
    holders: dict[int, set[PodRef]] = {}
    unmapped: set[str] = set()
    for pod in response.pod_resources:
        for c in pod.containers:
            ref = PodRef(pod.namespace, pod.name, c.name)
            for d in c.devices:
                if not is_gpu_resource(d.resource_name):
                    continue
                for device_id in d.device_ids:
                    index = gpu_of(device_id, inv.gpus)
                    if index is None:
                        unmapped.add(device_id)
                    else:
                        holders.setdefault(index, set()).add(ref)
    return Attribution(
        by_gpu={i: min(refs) for i, refs in sorted(holders.items())},
        unmapped=tuple(sorted(unmapped)),
        shared=tuple(i for i, refs in sorted(holders.items()) if len(refs) > 1),
    )
