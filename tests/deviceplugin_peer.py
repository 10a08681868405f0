"""A device-plugin peer: NVIDIA's device plugin as far as a real kubelet sees it.

It serves the kubelet's ``v1beta1`` device-plugin API (``tests/deviceplugin_v1beta1.proto``,
compiled at test time, Google's grpcio serving it) on a unix socket in the kubelet's
device-plugins directory, registers ``nvidia.com/gpu`` through the kubelet's ``kubelet.sock``,
and advertises one device per GPU UUID of the simulated NVML, so that the *kubelet itself*
puts ``nvidia.com/gpu`` into the Node's capacity — what the agent waits for before it reports
GPUReady. ``Allocate`` answers ``NVIDIA_VISIBLE_DEVICES=<UUIDs>``, as NVIDIA's plugin does in
its environment-variable mode, and records each allocation.

The kubelet empties the directory when it starts, so the peer re-serves and re-registers when
its socket disappears or ``kubelet.sock`` is replaced (the watch thread owns that; the grpc
server's threads own the RPCs; :attr:`allocations` and the device list are guarded by one lock).

``python -m tests.deviceplugin_peer DIR UUID...`` runs it until SIGTERM (for a machine whose
directory is bind-mounted from the host).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Optional

import grpc  # type: ignore[import-untyped,unused-ignore]

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.protogen import generated

PROTO = "deviceplugin_v1beta1.proto"
RESOURCE = "nvidia.com/gpu"


def _modules() -> tuple[Any, Any]:
    mods = generated(PROTO)
    return mods["deviceplugin_v1beta1_pb2"], mods["deviceplugin_v1beta1_pb2_grpc"]


class DevicePluginPeer:
    """Serve ``uuids`` as ``nvidia.com/gpu`` devices to the kubelet of ``plugin_dir``."""

    def __init__(
        self, plugin_dir: Path, uuids: Sequence[str], endpoint: str = "nodeagent-test-gpu.sock"
    ) -> None:
        self.plugin_dir = plugin_dir
        self.endpoint = endpoint
        self._health = {u: True for u in uuids}
        self._lock = threading.Condition()
        self._version = 0  # bumped on every change of the device list; streams wait on it
        self.allocations: list[tuple[str, ...]] = []
        self.registrations = 0
        self._server: Optional[Any] = None
        self._stop = threading.Event()
        self._watch: Optional[threading.Thread] = None
        self._kubelet_inode: Optional[int] = None

    @property
    def socket(self) -> Path:
        return self.plugin_dir / self.endpoint

    @property
    def kubelet_socket(self) -> Path:
        return self.plugin_dir / "kubelet.sock"

    # --- the DevicePlugin service (grpc server threads) -----------------------------------

    def _devices(self, pb2: Any) -> Any:
        with self._lock:
            devices = [
                pb2.Device(ID=u, health="Healthy" if ok else "Unhealthy")
                for u, ok in self._health.items()
            ]
        return pb2.ListAndWatchResponse(devices=devices)

    def _servicer(self) -> Any:
        pb2, pb2_grpc = _modules()
        peer = self

        class Servicer(pb2_grpc.DevicePluginServicer):  # type: ignore[misc,name-defined]
            def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
                return pb2.DevicePluginOptions()

            def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
                seen = -1
                while context.is_active() and not peer._stop.is_set():
                    with peer._lock:
                        if seen == peer._version:
                            peer._lock.wait(0.5)
                            continue
                        seen = peer._version
                    yield peer._devices(pb2)

            def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
                return pb2.PreferredAllocationResponse()

            def Allocate(self, request: Any, context: Any) -> Any:
                responses = []
                for req in request.container_requests:
                    ids = tuple(req.devices_ids)
                    with peer._lock:
                        peer.allocations.append(ids)
                    envs = {"NVIDIA_VISIBLE_DEVICES": ",".join(ids)}
                    responses.append(pb2.ContainerAllocateResponse(envs=envs))
                return pb2.AllocateResponse(container_responses=responses)

            def PreStartContainer(self, request: Any, context: Any) -> Any:
                return pb2.PreStartContainerResponse()

        return Servicer()

    # --- serving and registering (the caller's thread, then the watch thread) --------------

    def _serve(self) -> None:
        _, pb2_grpc = _modules()
        if self._server is not None:
            self._server.stop(0)
        self.socket.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb2_grpc.add_DevicePluginServicer_to_server(self._servicer(), server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server

    def _register(self, timeout: float) -> None:
        pb2, pb2_grpc = _modules()
        deadline = time.monotonic() + timeout
        last: Optional[Exception] = None
        while time.monotonic() < deadline:
            if self.kubelet_socket.exists():
                try:
                    with grpc.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
                        pb2_grpc.RegistrationStub(channel).Register(
                            pb2.RegisterRequest(
                                version="v1beta1", endpoint=self.endpoint, resource_name=RESOURCE
                            ),
                            timeout=5,
                        )
                    self._kubelet_inode = self.kubelet_socket.stat().st_ino
                    self.registrations += 1
                    return
                except grpc.RpcError as e:
                    last = e
            time.sleep(0.2)
        raise TimeoutError(f"{self.kubelet_socket}: no registration within {timeout} s: {last}")

    def start(self, timeout: float = 60.0) -> None:
        """Serve, register (waiting up to ``timeout`` for the kubelet), then keep it so."""
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self._serve()
        self._register(timeout)
        self._watch = threading.Thread(target=self._keep, name="deviceplugin-watch", daemon=True)
        self._watch.start()

    def _keep(self) -> None:
        """Re-serve and re-register after the kubelet restarted (it empties the directory)."""
        while not self._stop.wait(0.5):
            try:
                inode = self.kubelet_socket.stat().st_ino
            except FileNotFoundError:
                continue
            if inode != self._kubelet_inode or not self.socket.exists():
                try:
                    self._serve()
                    self._register(30)
                except (TimeoutError, OSError, RuntimeError):
                    continue

    def set_healthy(self, uuid: str, healthy: bool) -> None:
        """Report ``uuid`` (un)healthy on the open ListAndWatch streams."""
        with self._lock:
            self._health[uuid] = healthy
            self._version += 1
            self._lock.notify_all()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._watch is not None:
            self._watch.join(5)
        if self._server is not None:
            self._server.stop(1).wait(5)
        self.socket.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m tests.deviceplugin_peer DIR UUID [UUID ...]", file=sys.stderr)
        return 2
    peer = DevicePluginPeer(Path(argv[0]), argv[1:])
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    peer.start()
    print(f"deviceplugin_peer: registered {len(argv) - 1} devices (pid {os.getpid()})", flush=True)
    done.wait()
    peer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
