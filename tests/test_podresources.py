"""Which pod holds each GPU: the hand-written gRPC client and protobuf codec
(nodeagent/kube/podresources.py, protowire.py) against Google's grpcio serving the kubelet's
pod-resources API on a unix socket (tests/podresources_peer.py), every failure a typed
reason, and the per-GPU series labelled with the pod (the daemon's telemetry)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import grpc  # type: ignore[import-untyped,unused-ignore]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from nodeagent.config import Config, DaemonConfig, FieldError
from nodeagent.daemon.loop import Daemon
from nodeagent.daemon.sdnotify import Notifier
from nodeagent.daemon.telemetry import Telemetry
from nodeagent.gpu.inventory import GPU, STATE_OK, Inventory
from nodeagent.gpu.nvml import detect
from nodeagent.host.paths import HostRoot
from nodeagent.kube import protowire as pw
from nodeagent.kube.podresources import (
    DEFAULT_SOCKET,
    Failure,
    PodRef,
    PodResourcesError,
    attribute,
    list_pods,
)
from tests.fakeclock import FakeClock
from tests.podresources_peer import (
    Container,
    Devices,
    Pod,
    PodResourcesPeer,
    RawPeer,
    generated,
    holding,
    v1_response,
)
from tests.realparts import skip_or_fail

SOCK = DEFAULT_SOCKET
UUIDS = tuple(f"GPU-{i}1111111-2222-3333-4444-55555555555{i}" for i in range(4))
FOUR = Inventory(
    state=STATE_OK,
    gpus=tuple(GPU(index=i, uuid=u, name="NVIDIA H100 80GB HBM3") for i, u in enumerate(UUIDS)),
)
TRAIN = PodRef("ml", "train-0", "cuda")


@pytest.fixture
def root() -> Iterator[Path]:
    """A short --root (unix socket paths are limited to 107 bytes), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="podres-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def sock_at(root: Path) -> Path:
    return root / SOCK.lstrip("/")


def fail(root: Path, deadline_s: float = 2.0) -> PodResourcesError:
    with pytest.raises(PodResourcesError) as info:
        list_pods(HostRoot(root), SOCK, deadline_s)
    return info.value


# --- the call against grpcio ----------------------------------------------------------------


def test_a_pod_holding_2_of_4_gpus(root: Path) -> None:
    pods = (
        holding("ml", "train-0", "cuda", UUIDS[1], UUIDS[3]),
        holding("web", "nginx", "nginx", "eth0", resource="example.com/nic"),  # not a GPU
        Pod("kube-system", "coredns", (Container("coredns"),)),  # no devices
    )
    with PodResourcesPeer(sock_at(root), pods) as peer:
        listing = list_pods(HostRoot(root), SOCK)
    assert listing.api == "v1" and peer.calls == {"v1": 1}
    names = [(p.namespace, p.name) for p in listing.response.pod_resources]
    assert names == [("ml", "train-0"), ("web", "nginx"), ("kube-system", "coredns")]
    devices = listing.response.pod_resources[0].containers[0].devices[0]
    assert devices == pw.ContainerDevices("nvidia.com/gpu", (UUIDS[1], UUIDS[3]), (0,))
    found = attribute(listing.response, FOUR)
    assert dict(found.by_gpu) == {1: TRAIN, 3: TRAIN}
    assert found.unmapped == () and found.shared == ()


def test_index_and_gke_ids_map_to_gpus(root: Path) -> None:
    pods = (
        holding("a", "p0", "c", "0"),  # --device-id-strategy=index style
        holding("a", "p2", "c", "2:1", resource="nvidia.com/mig-1g.10gb"),  # MIG device 1 of 2
        holding("b", "p3", "c", "nvidia3/gi1/vgpu0"),  # GKE's plugin
        holding("b", "p9", "c", "9", "GPU-not-here"),  # no such GPU
    )
    with PodResourcesPeer(sock_at(root), pods):
        found = attribute(list_pods(HostRoot(root), SOCK).response, FOUR)
    assert dict(found.by_gpu) == {
        0: PodRef("a", "p0", "c"),
        2: PodRef("a", "p2", "c"),
        3: PodRef("b", "p3", "c"),
    }
    assert found.unmapped == ("9", "GPU-not-here")


def test_mig_devices_map_to_their_gpu(
    root: Path, use_profile: Callable[[str], str], fake_nvml: Any
) -> None:
    inv = detect(library=use_profile("a100x8-mig"))
    data = fake_nvml.data("a100x8-mig")["gpus"]
    mig0, mig1 = data[0]["mig_devices"][0]["uuid"], data[1]["mig_devices"][1]["uuid"]
    assert mig0.startswith("MIG-") and inv.gpus[0].mig_devices, "the profile has MIG devices"
    pods = (
        holding("ml", "infer-a", "server", mig0, resource="nvidia.com/mig-1g.10gb"),
        holding("ml", "infer-b", "server", mig1, resource="nvidia.com/gpu"),  # single strategy
    )
    with PodResourcesPeer(sock_at(root), pods):
        found = attribute(list_pods(HostRoot(root), SOCK).response, inv)
    assert dict(found.by_gpu) == {
        0: PodRef("ml", "infer-a", "server"),
        1: PodRef("ml", "infer-b", "server"),
    }


def test_a_shared_gpu_keeps_one_holder_whatever_the_order(root: Path) -> None:
    a = holding("ns", "b-pod", "c", UUIDS[0] + "::1")  # time-slicing replicas
    b = holding("ns", "a-pod", "c", UUIDS[0] + "::0")
    for pods in ((a, b), (b, a)):
        with PodResourcesPeer(sock_at(root), pods):
            found = attribute(list_pods(HostRoot(root), SOCK).response, FOUR)
        assert dict(found.by_gpu) == {0: PodRef("ns", "a-pod", "c")} and found.shared == (0,)


def test_v1_unimplemented_falls_back_to_v1alpha1(root: Path) -> None:
    """A kubelet before 1.20 serves only v1alpha1: grpcio itself answers UNIMPLEMENTED."""
    with PodResourcesPeer(
        sock_at(root), (holding("ml", "train-0", "cuda", UUIDS[2]),), apis=("v1alpha1",)
    ) as peer:
        listing = list_pods(HostRoot(root), SOCK)
    assert listing.api == "v1alpha1" and peer.calls == {"v1alpha1": 1}
    assert dict(attribute(listing.response, FOUR).by_gpu) == {2: TRAIN}


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "pod resources: not allowed"),
        (grpc.StatusCode.UNAVAILABLE, "kubelet going down\nsecond line, 100% ünïcode"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ],
)
def test_grpc_status_errors(root: Path, code: Any, text: str) -> None:
    with PodResourcesPeer(sock_at(root), abort=(code, text)):
        e = fail(root)
    assert e.reason is Failure.GRPC_STATUS and e.grpc_code == code.value[0]
    line = str(e)
    assert "\n" not in line and line.startswith(f"{SOCK}: /v1.PodResourcesLister/List: gRPC ")
    assert code.name in line and " ".join(text.split()) in line


def test_both_apis_unimplemented_is_a_grpc_status(root: Path) -> None:
    with PodResourcesPeer(sock_at(root), apis=()):
        e = fail(root)
    assert e.reason is Failure.GRPC_STATUS and e.grpc_code == 12
    assert "/v1alpha1.PodResourcesLister/List: gRPC UNIMPLEMENTED" in str(e)


def test_absent_socket(root: Path) -> None:
    e = fail(root)
    assert e.reason is Failure.SOCKET_ABSENT
    assert str(e) == f"{SOCK}: No such file or directory"


def test_a_socket_nobody_listens_on_is_refused(root: Path) -> None:
    sock_at(root).parent.mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_at(root)))
    s.close()  # the file stays; nothing listens
    assert fail(root).reason is Failure.CONNECTION_REFUSED


def test_permission_denied(root: Path) -> None:
    """The socket is root's (the kubelet's directory is 0750): anyone else is refused. As
    root, the client runs without the capabilities that bypass file permissions, on a
    directory another user owns; otherwise, on a directory of mode 0."""
    with PodResourcesPeer(sock_at(root)):
        if os.geteuid() != 0:
            os.chmod(sock_at(root).parent, 0)
            try:
                assert fail(root).reason is Failure.PERMISSION_DENIED
            finally:
                os.chmod(sock_at(root).parent, 0o755)
            return
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            skip_or_fail("setpriv", "setpriv not installed (apt-get install util-linux)")
            return
        os.chown(root, 65534, 65534)
        os.chmod(root, 0o700)
        code = (
            "from nodeagent.host.paths import HostRoot\n"
            "from nodeagent.kube.podresources import PodResourcesError, list_pods\n"
            "try:\n"
            f"    list_pods(HostRoot({str(root)!r}), {SOCK!r})\n"
            "except PodResourcesError as e:\n"
            "    print(e.reason, e, sep='|')\n"
        )
        r = subprocess.run(
            [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code],
            cwd=str(Path(__file__).resolve().parents[1]),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.stdout.strip() == f"permission-denied|{SOCK}: Permission denied", r.stderr


def test_a_peer_that_never_answers_meets_the_deadline(root: Path) -> None:
    with RawPeer(sock_at(root)):
        e = fail(root, deadline_s=0.3)
    assert e.reason is Failure.DEADLINE and "no answer within the deadline" in str(e)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"garbage" * 10, Failure.MALFORMED),
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", Failure.MALFORMED),
        (bytes(range(256)) * 4, Failure.MALFORMED),
        # A SETTINGS frame, then a HEADERS frame whose header block is not HPACK.
        (
            b"\0\0\0\x04\0\0\0\0\0" + b"\0\0\x04\x01\x05\0\0\0\x01\xff\xff\xff\xff",
            Failure.MALFORMED,
        ),
        (b"\0\0\0\x04\0\0\0\0\0", Failure.CONNECTION_LOST),  # a preface, then closed
        (b"", Failure.CONNECTION_LOST),
    ],
)
def test_a_peer_that_answers_garbage(root: Path, reply: bytes, reason: Failure) -> None:
    with RawPeer(sock_at(root), reply):
        e = fail(root)
    assert e.reason is reason and "\n" not in str(e)


def test_a_socket_path_longer_than_sockaddr_allows(root: Path, tmp_path: Path) -> None:
    """A deep --root makes the path longer than 107 bytes: connected through the directory."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    (deep / "var/lib/kubelet").mkdir(parents=True)
    (deep / "var/lib/kubelet/pod-resources").symlink_to(sock_at(root).parent, True)
    assert len(os.fsencode(deep / SOCK.lstrip("/"))) > 107
    with PodResourcesPeer(sock_at(root), (holding("ml", "train-0", "cuda", UUIDS[0]),)):
        listing = list_pods(HostRoot(deep), SOCK)
    assert dict(attribute(listing.response, FOUR).by_gpu) == {0: TRAIN}


# --- the codec against Google's -------------------------------------------------------------

texts = st.text(max_size=12)
ids = st.lists(st.text(min_size=1, max_size=40), max_size=4).map(tuple)
numa = st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3).map(tuple)
device_sets = st.builds(Devices, texts, ids, numa)
containers = st.builds(Container, texts, st.lists(device_sets, max_size=3).map(tuple))
pods_st = st.lists(
    st.builds(Pod, texts, texts, st.lists(containers, max_size=3).map(tuple)), max_size=4
).map(tuple)


def ours(pods: tuple[Pod, ...]) -> pw.ListPodResourcesResponse:
    return pw.ListPodResourcesResponse(
        tuple(
            pw.PodResources(
                p.name,
                p.namespace,
                tuple(
                    pw.ContainerResources(
                        c.name,
                        tuple(pw.ContainerDevices(d.resource, d.ids, d.numa) for d in c.devices),
                    )
                    for c in p.containers
                ),
            )
            for p in pods
        )
    )


def from_google(msg: Any) -> pw.ListPodResourcesResponse:
    return pw.ListPodResourcesResponse(
        tuple(
            pw.PodResources(
                p.name,
                p.namespace,
                tuple(
                    pw.ContainerResources(
                        c.name,
                        tuple(
                            pw.ContainerDevices(
                                d.resource_name,
                                tuple(d.device_ids),
                                tuple(n.ID for n in d.topology.nodes),
                            )
                            for d in c.devices
                        ),
                    )
                    for c in p.containers
                ),
            )
            for p in msg.pod_resources
        )
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods_st, st.booleans())
def test_google_encodes_we_decode(pods: tuple[Pod, ...], extras: bool) -> None:
    data = v1_response(pods, extras=extras).SerializeToString()
    assert pw.decode_list_response(data) == ours(pods)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods_st)
def test_we_encode_google_decodes(pods: tuple[Pod, ...]) -> None:
    msg = generated()["podresources_v1_pb2"].ListPodResourcesResponse()
    data = pw.encode_list_response(ours(pods))
    msg.ParseFromString(data)
    assert from_google(msg) == ours(pods)
    assert data == v1_response(pods, extras=False).SerializeToString()  # byte for byte
    assert pw.decode_list_response(data) == ours(pods)


def same_as_google(data: bytes) -> None:
    """Our decoder on ``data``: an answer or MalformedMessage, nothing else; and when
    Google's parser takes the bytes, ours takes them too and reads the same."""
    google = generated()["podresources_v1_pb2"].ListPodResourcesResponse()
    try:
        google.ParseFromString(data)
        theirs: Any = from_google(google)
    except Exception:  # google.protobuf.message.DecodeError and the like
        theirs = None
    try:
        mine: Any = pw.decode_list_response(data)
    except pw.MalformedMessage:
        mine = None
    if theirs is not None:
        assert mine == theirs


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_the_codecs_error(data: bytes) -> None:
    same_as_google(data)


@settings(max_examples=1000, deadline=None)
@given(pods_st.filter(bool), st.data())
def test_mutated_messages_raise_only_the_codecs_error(pods: tuple[Pod, ...], data: Any) -> None:
    raw = bytearray(v1_response(pods).SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    same_as_google(bytes(raw[: data.draw(st.integers(0, len(raw)))]))


def test_unknown_fields_of_every_wire_type_and_groups_are_skipped() -> None:
    known = pw.encode_list_response(ours((holding("ml", "train-0", "cuda", UUIDS[0]),)))
    junk = (
        pw.encode_varint(9 << 3 | pw.VARINT) + pw.encode_varint(2**64 - 1)
        + pw.encode_varint(10 << 3 | pw.I64) + b"\x01" * 8
        + pw.encode_varint(11 << 3 | pw.I32) + b"\x02" * 4
        + pw.encode_varint(12 << 3 | pw.SGROUP)
        + pw.encode_varint(13 << 3 | pw.SGROUP) + pw.encode_varint(13 << 3 | pw.EGROUP)
        + pw.encode_varint(12 << 3 | pw.EGROUP)
        + pw.encode_varint(1 << 3 | pw.VARINT) + b"\x05"  # field 1 with the wrong wire type
    )  # fmt: skip
    assert pw.decode_list_response(junk + known + junk) == pw.decode_list_response(known)
    for bad in (b"\x0a\x05ab", b"\x80" * 11, b"\x00", b"\x0f", b"\x63", b"\x0a\x02\xff\xfe"):
        with pytest.raises(pw.MalformedMessage):
            pw.decode_list_response(b"\x0a" + bytes([len(bad)]) + bad)


# --- the per-GPU series ---------------------------------------------------------------------


def series(text: str, name: str) -> dict[str, dict[str, str]]:
    """gpu → labels of the samples of ``name``."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[s.labels["gpu"]] = dict(s.labels)
    return out


@pytest.fixture
def h100(use_profile: Callable[[str], str]) -> Inventory:
    return detect(library=use_profile("h100x8"))


def test_the_series_of_a_held_gpu_carry_its_pod(root: Path, h100: Inventory) -> None:
    uuid0, uuid1 = h100.gpus[0].uuid or "", h100.gpus[1].uuid or ""
    tel = Telemetry(Notifier(None), HostRoot(root), FakeClock(), lambda: SOCK)
    with PodResourcesPeer(sock_at(root), (holding("ml", "train-0", "cuda", uuid0, uuid1),)):
        tel.detected(h100, "node-a")
    text = tel.metrics.render()
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_XID_ERRORS"):
        got = series(text, name)
        assert len(got) == 8, name
        for gpu, labels in got.items():
            pod = {k: labels.get(k) for k in ("namespace", "pod", "container")}
            if gpu in ("0", "1"):
                assert pod == {"namespace": "ml", "pod": "train-0", "container": "cuda"}
            else:  # no pod holds it: no pod labels, as dcgm-exporter >= 4.0
                assert pod == {"namespace": None, "pod": None, "container": None}
            assert labels["Hostname"] == "node-a"
    assert "nodeagent_pod_resources_success 1\n" in text


def test_the_pod_labels_follow_the_kubelet_and_failures_are_logged_once(
    root: Path, h100: Inventory
) -> None:
    tel = Telemetry(Notifier(None), HostRoot(root), FakeClock(), lambda: SOCK)
    uuid0 = h100.gpus[0].uuid or ""
    with capture_logs() as logs:
        tel.detected(h100, "n")  # no kubelet yet
        tel.detected(h100, "n")
        with PodResourcesPeer(sock_at(root), (holding("ml", "train-0", "cuda", uuid0),)) as peer:
            tel.detected(h100, "n")
            assert series(tel.metrics.render(), "DCGM_FI_DEV_GPU_UTIL")["0"]["pod"] == "train-0"
            peer.pods = (holding("ml", "train-1", "cuda", uuid0),)
            tel.detected(h100, "n")
            assert series(tel.metrics.render(), "DCGM_FI_DEV_GPU_UTIL")["0"]["pod"] == "train-1"
            peer.pods = ()  # the pod ended: the GPU's series lose the labels
            tel.detected(h100, "n")
            assert "pod" not in series(tel.metrics.render(), "DCGM_FI_DEV_GPU_UTIL")["0"]
            peer.abort = (grpc.StatusCode.UNAVAILABLE, "restarting")
            tel.detected(h100, "n")
            tel.detected(h100, "n")
        assert "nodeagent_pod_resources_success 0\n" in tel.metrics.render()
    events = [(e["event"], e.get("reason")) for e in logs]
    assert events == [
        ("daemon.pod_resources_unavailable", "socket-absent"),
        ("daemon.pod_resources", None),
        ("daemon.pod_resources_unavailable", "grpc-status"),
    ]


def test_off_asks_nothing_and_says_so_once(root: Path, h100: Inventory) -> None:
    tel = Telemetry(Notifier(None), HostRoot(root), FakeClock(), lambda: "")
    with PodResourcesPeer(sock_at(root), (holding("ml", "t", "c", h100.gpus[0].uuid or ""),)) as p:
        with capture_logs() as logs:
            tel.detected(h100, "n")
            tel.detected(h100, "n")
        assert p.calls == {}
    assert [e["event"] for e in logs] == ["daemon.pod_resources_off"]
    text = tel.metrics.render()
    assert "pod" not in series(text, "DCGM_FI_DEV_GPU_UTIL")["0"]
    assert "\nnodeagent_pod_resources_success " not in text


def test_the_daemon_asks_the_configured_socket_and_a_reload_turns_it_off(
    root: Path, h100: Inventory
) -> None:
    """loop.py's hook: the daemon's telemetry reads daemon.pod_resources_socket at each
    refresh, so a SIGHUP reload that changes it takes effect."""
    cfg = Config(daemon=DaemonConfig(state_file="/var/lib/nodeagent/state.json"))
    assert cfg.daemon.pod_resources_socket == SOCK
    daemon = Daemon(lambda: cfg, HostRoot(root), Notifier(None), clock=FakeClock())
    with PodResourcesPeer(sock_at(root), (holding("ml", "t", "c", h100.gpus[3].uuid or ""),)) as p:
        daemon.telemetry.detected(h100, "n")
        assert series(daemon.telemetry.metrics.render(), "DCGM_FI_DEV_GPU_UTIL")["3"]["pod"] == "t"
        off = dataclasses.replace(
            cfg, daemon=dataclasses.replace(cfg.daemon, pod_resources_socket="")
        )
        daemon.state.swap_config(off)
        daemon.telemetry.detected(h100, "n")
        assert p.calls == {"v1": 1}
    assert "pod" not in series(daemon.telemetry.metrics.render(), "DCGM_FI_DEV_GPU_UTIL")["3"]


@pytest.mark.parametrize("value", ["", SOCK, "/run/k/kubelet.sock"])
def test_the_config_key_takes_an_absolute_path_or_empty(value: str) -> None:
    assert DaemonConfig(pod_resources_socket=value).pod_resources_socket == value


@pytest.mark.parametrize("value", ["kubelet.sock", "/var/lib/../kubelet.sock", "/a\0b"])
def test_the_config_key_refuses_other_paths(value: str) -> None:
    with pytest.raises(FieldError, match="pod_resources_socket"):
        DaemonConfig(pod_resources_socket=value)
