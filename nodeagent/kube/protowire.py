"""The Protocol Buffers wire format, for just the kubelet's pod-resources ``List``.

Holds the typed messages of ``k8s.io/kubelet/pkg/apis/podresources/v1`` that the agent reads
(``ListPodResourcesResponse`` → ``PodResources`` → ``ContainerResources`` →
``ContainerDevices``, with its NUMA topology), their decoder and an encoder. The field numbers
are the real ``api.proto``'s; ``v1alpha1`` uses the same numbers for the fields it has, so one
decoder reads both. Everything else a newer kubelet sends (CPU ids, memory, dynamic resources)
is skipped as protobuf requires of unknown fields, and so is a known field whose wire type is
not the expected one (as Google's parsers do).

Pure: bytes in, dataclasses out. Any input that is not a valid message raises
:class:`MalformedMessage` and nothing else. May not touch the host or the network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Union

from nodeagent.errors import NodeagentError

# Wire types (protobuf encoding guide).
VARINT = 0
I64 = 1
LEN = 2
SGROUP = 3  # deprecated groups: skipped, never expected
EGROUP = 4
I32 = 5

MAX_VARINT_BYTES = 10  # 64 bits, 7 per byte
MAX_GROUP_DEPTH = 64  # nested groups inside an unknown field, before refusing the input
MAX_FIELD_NUMBER = (1 << 29) - 1


class MalformedMessage(NodeagentError):
    """The bytes are not a valid encoding of the expected message."""


@dataclasses.dataclass(frozen=True)
class ContainerDevices:
    """``ContainerDevices``: devices of one resource given to a container."""

    resource_name: str = ""  # field 1
    device_ids: tuple[str, ...] = ()  # field 2
    numa_nodes: tuple[int, ...] = ()  # field 3, TopologyInfo{nodes=1: NUMANode{ID=1}}


@dataclasses.dataclass(frozen=True)
class ContainerResources:
    """``ContainerResources``: one container and its devices."""

    name: str = ""  # field 1
    devices: tuple[ContainerDevices, ...] = ()  # field 2


@dataclasses.dataclass(frozen=True)
class PodResources:
    """``PodResources``: one pod and its containers."""

    name: str = ""  # field 1
    namespace: str = ""  # field 2
    containers: tuple[ContainerResources, ...] = ()  # field 3


@dataclasses.dataclass(frozen=True)
class ListPodResourcesResponse:
    """``ListPodResourcesResponse``: every pod the kubelet knows resources of."""

    pod_resources: tuple[PodResources, ...] = ()  # field 1


Value = Union[int, bytes]


# --- reading --------------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it (an unsigned 64-bit value)."""
    value = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise MalformedMessage("truncated varint")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value >> 64:
                raise MalformedMessage("varint over 64 bits")
            return value, pos + i + 1
    raise MalformedMessage("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int, Value]]:
    """Each field of a message: (number, wire type, value), a varint or fixed-size value
    as an int, a length-delimited one as bytes. Groups are skipped whole."""
    pos = 0
    while pos < len(buf):
        number, wire_type, value, pos = _field(buf, pos)
        if wire_type == SGROUP:
            pos = _skip_group(buf, pos, number)
            continue
        if wire_type == EGROUP:
            raise MalformedMessage(f"end of group {number} outside a group")
        yield number, wire_type, value


def _field(buf: bytes, pos: int) -> tuple[int, int, Value, int]:
    key, pos = read_varint(buf, pos)
    number, wire_type = key >> 3, key & 7
    if number == 0 or number > MAX_FIELD_NUMBER:
        raise MalformedMessage(f"invalid field number {number}")
    value: Value = 0
    if wire_type == VARINT:
        value, pos = read_varint(buf, pos)
    elif wire_type in (I64, I32):
        size = 8 if wire_type == I64 else 4
        if pos + size > len(buf):
            raise MalformedMessage(f"field {number}: truncated fixed-size value")
        value, pos = int.from_bytes(buf[pos : pos + size], "little"), pos + size
    elif wire_type == LEN:
        size, pos = read_varint(buf, pos)
        if size > len(buf) - pos:
            raise MalformedMessage(f"field {number}: length {size} past the end")
        value, pos = buf[pos : pos + size], pos + size
    elif wire_type not in (SGROUP, EGROUP):
        raise MalformedMessage(f"field {number}: invalid wire type {wire_type}")
    return number, wire_type, value, pos


def _skip_group(buf: bytes, pos: int, number: int) -> int:
    """The position after the end of group ``number`` whose start was just read."""
    open_groups = [number]
    while open_groups:
        if pos >= len(buf):
            raise MalformedMessage(f"group {open_groups[-1]} not closed")
        inner, wire_type, _, pos = _field(buf, pos)
        if wire_type == SGROUP:
            if len(open_groups) >= MAX_GROUP_DEPTH:
                raise MalformedMessage("groups nested too deep")
            open_groups.append(inner)
        elif wire_type == EGROUP and inner != open_groups.pop():
            raise MalformedMessage(f"end of group {inner} does not match its start")
    return pos


def _text(number: int, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"field {number}: string is not UTF-8") from None


def _int64(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def _numa_nodes(buf: bytes) -> list[int]:
    """``TopologyInfo``: the IDs of its ``NUMANode``s."""
    ids: list[int] = []
    for number, wire_type, value in fields(buf):
        if number == 1 and wire_type == LEN:
            node_id = 0
            for n2, w2, v2 in fields(_as_bytes(value)):
                if n2 == 1 and w2 == VARINT:
                    node_id = _int64(_as_int(v2))
            ids.append(node_id)
    return ids


def _as_bytes(value: Value) -> bytes:
    assert isinstance(value, bytes)  # the caller checked the wire type: LEN
    return value


def _as_int(value: Value) -> int:
    assert isinstance(value, int)  # the caller checked the wire type: VARINT
    return value


def decode_container_devices(buf: bytes) -> ContainerDevices:
    name, ids, numa = "", [], []
    for number, wire_type, value in fields(buf):
        if wire_type != LEN:
            continue
        if number == 1:
            name = _text(number, _as_bytes(value))
        elif number == 2:
            ids.append(_text(number, _as_bytes(value)))
        elif number == 3:  # a singular message seen twice is merged: its nodes add up
            numa += _numa_nodes(_as_bytes(value))
    return ContainerDevices(name, tuple(ids), tuple(numa))


def decode_container_resources(buf: bytes) -> ContainerResources:
    name, devices = "", []
    for number, wire_type, value in fields(buf):
        if wire_type != LEN:
            continue
        if number == 1:
            name = _text(number, _as_bytes(value))
        elif number == 2:
            devices.append(decode_container_devices(_as_bytes(value)))
    return ContainerResources(name, tuple(devices))


def decode_pod_resources(buf: bytes) -> PodResources:
    name, namespace, containers = "", "", []
    for number, wire_type, value in fields(buf):
        if wire_type != LEN:
            continue
        if number == 1:
            name = _text(number, _as_bytes(value))
        elif number == 2:
            namespace = _text(number, _as_bytes(value))
        elif number == 3:
            containers.append(decode_container_resources(_as_bytes(value)))
    return PodResources(name, namespace, tuple(containers))


def decode_list_response(buf: bytes) -> ListPodResourcesResponse:
    """A ``ListPodResourcesResponse`` (v1 or v1alpha1) from its encoding."""
    pods = [
        decode_pod_resources(_as_bytes(value))
        for number, wire_type, value in fields(buf)
        if number == 1 and wire_type == LEN
    ]
    return ListPodResourcesResponse(tuple(pods))


# --- writing --------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """``value`` (0 to 2**64 - 1; a negative int64 as its two's complement) as a varint."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, data: bytes) -> bytes:
    return encode_varint(number << 3 | LEN) + encode_varint(len(data)) + data


def _str_field(number: int, text: str) -> bytes:
    """A proto3 string: nothing when empty (the default is not written)."""
    return _len_field(number, text.encode("utf-8")) if text else b""


def encode_container_devices(d: ContainerDevices) -> bytes:
    out = _str_field(1, d.resource_name)
    out += b"".join(_len_field(2, i.encode("utf-8")) for i in d.device_ids)
    if d.numa_nodes:
        nodes = b"".join(
            _len_field(1, encode_varint(1 << 3 | VARINT) + encode_varint(n) if n else b"")
            for n in d.numa_nodes
        )
        out += _len_field(3, nodes)
    return out


def encode_list_response(r: ListPodResourcesResponse) -> bytes:
    """The encoding of ``r`` (fields in number order, defaults omitted, as protobuf does)."""
    out = b""
    for pod in r.pod_resources:
        body = _str_field(1, pod.name) + _str_field(2, pod.namespace)
        for c in pod.containers:
            cbody = _str_field(1, c.name)
            cbody += b"".join(_len_field(2, encode_container_devices(d)) for d in c.devices)
            body += _len_field(3, cbody)
        out += _len_field(1, body)
    return out
