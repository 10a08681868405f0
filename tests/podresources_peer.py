"""Test peers for the kubelet's pod-resources API on a unix socket.

:class:`PodResourcesPeer` serves it with Google's grpcio, its messages generated at test
time by grpcio-tools from ``tests/podresources_v1.proto`` and
``tests/podresources_v1alpha1.proto`` (the kubelet's package, service and field numbers), so
the agent's hand-written client and codec (``nodeagent/kube/podresources.py``,
``protowire.py``) are checked against Google's implementation, not against themselves.
:class:`RawPeer` is the socket that misbehaves below gRPC: it never answers, or answers
garbage.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import grpc  # type: ignore[import-untyped,unused-ignore]

from tests import protogen

PROTOS = ("podresources_v1.proto", "podresources_v1alpha1.proto")


def generated() -> dict[str, ModuleType]:
    """The generated modules, by name (``podresources_v1_pb2``, ``..._pb2_grpc``, and the
    same for v1alpha1): protoc runs once per test process (tests/protogen.py)."""
    return protogen.generated(*PROTOS)


@dataclasses.dataclass(frozen=True)
class Devices:
    resource: str
    ids: tuple[str, ...]
    numa: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Container:
    name: str
    devices: tuple[Devices, ...] = ()


@dataclasses.dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    containers: tuple[Container, ...] = ()


def holding(namespace: str, pod: str, container: str, *ids: str, resource: str = "") -> Pod:
    """A pod whose one container holds the devices ``ids`` of ``resource``
    (default ``nvidia.com/gpu``)."""
    devices = Devices(resource or "nvidia.com/gpu", tuple(ids), (0,))
    return Pod(namespace, pod, (Container(container, (devices,)),))


def v1_response(pods: tuple[Pod, ...], *, extras: bool = True) -> Any:
    """A v1 ``ListPodResourcesResponse`` of Google's generated code. ``extras``: also the
    fields a real kubelet sends that the agent skips (CPU ids, memory, dynamic resources)."""
    pb = generated()["podresources_v1_pb2"]
    out = pb.ListPodResourcesResponse()
    for p in pods:
        msg = out.pod_resources.add(name=p.name, namespace=p.namespace)
        if extras:
            msg.cpu_ids.extend([2, 3])
            msg.memory.add(memory_type="memory", size=1 << 30)
        for c in p.containers:
            cm = msg.containers.add(name=c.name)
            if extras:
                cm.cpu_ids.extend([4])
                claim = cm.dynamic_resources.add(claim_name="claim", claim_namespace=p.namespace)
                claim.claim_resources.add(driver_name="gpu.nvidia.com", device_name="gpu-0")
            for d in c.devices:
                dm = cm.devices.add(resource_name=d.resource, device_ids=list(d.ids))
                for n in d.numa:
                    dm.topology.nodes.add(ID=n)
    return out


def v1alpha1_response(pods: tuple[Pod, ...]) -> Any:
    pb = generated()["podresources_v1alpha1_pb2"]
    out = pb.ListPodResourcesResponse()
    for p in pods:
        msg = out.pod_resources.add(name=p.name, namespace=p.namespace)
        for c in p.containers:
            cm = msg.containers.add(name=c.name)
            for d in c.devices:
                cm.devices.add(resource_name=d.resource, device_ids=list(d.ids))
    return out


class PodResourcesPeer:
    """A grpcio server of ``PodResourcesLister`` on the unix socket ``path``.

    ``apis``: which versions it implements (a kubelet before 1.20 has only v1alpha1; a
    method it lacks is answered UNIMPLEMENTED by grpcio itself). ``abort``: answer every
    List with this gRPC status code and message instead. ``calls`` counts Lists per API.
    """

    def __init__(
        self,
        path: Path,
        pods: tuple[Pod, ...] = (),
        *,
        apis: tuple[str, ...] = ("v1", "v1alpha1"),
        abort: Optional[tuple[grpc.StatusCode, str]] = None,
    ) -> None:
        self.path = path
        self.pods = pods
        self.abort = abort
        self.calls: dict[str, int] = {}
        gen = generated()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        peer = self

        for api in apis:
            grpc_mod = gen[f"podresources_{api}_pb2_grpc"]

            class Servicer(grpc_mod.PodResourcesListerServicer):  # type: ignore[name-defined,misc]
                api_name = api

                def List(self, request: Any, context: Any) -> Any:
                    peer.calls[self.api_name] = peer.calls.get(self.api_name, 0) + 1
                    if peer.abort is not None:
                        context.abort(*peer.abort)
                    if self.api_name == "v1":
                        return v1_response(peer.pods)
                    return v1alpha1_response(peer.pods)

            grpc_mod.add_PodResourcesListerServicer_to_server(Servicer(), self._server)
        bound = self._server.add_insecure_port(f"unix:{path}")
        assert bound, f"grpcio could not bind unix:{path}"
        self._server.start()

    def close(self) -> None:
        self._server.stop(grace=None).wait(5)
        if self.path.exists():
            os.unlink(self.path)

    def __enter__(self) -> PodResourcesPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawPeer:
    """A unix socket that accepts and then never answers (``reply=None``: the client must
    give up at its deadline) or writes ``reply`` and closes (garbage, a cut-off answer)."""

    def __init__(self, path: Path, reply: Optional[bytes] = None) -> None:
        self.path = path
        self.reply = reply
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(4)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            if self.reply is None:
                self._held.append(conn)  # read nothing, answer nothing, until close()
                continue
            try:
                conn.settimeout(2)
                conn.recv(65536)  # the client's preface and request
                conn.sendall(self.reply)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self._held:
            c.close()
        self._sock.close()
        if self.path.exists():
            os.unlink(self.path)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
