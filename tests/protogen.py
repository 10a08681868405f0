"""Python modules generated at test time from the tests' ``.proto`` files (grpcio-tools).

The kubelet's gRPC APIs (pod-resources, device plugins) are written out as ``.proto`` files in
tests/; :func:`generated` compiles the ones asked for once per test process into a temporary
directory and imports them, so the test peers speak through Google's own protobuf and gRPC
implementation, never through the agent's hand-written codec they check.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from grpc_tools import protoc  # type: ignore[import-untyped,unused-ignore]

TESTS = Path(__file__).resolve().parent
_GENERATED: dict[str, ModuleType] = {}
_LOCK = threading.Lock()


def generated(*protos: str) -> dict[str, ModuleType]:
    """``{stem_pb2: module, stem_pb2_grpc: module}`` for each ``stem.proto`` of tests/."""
    with _LOCK:
        wanted = [p for p in protos if p[: -len(".proto")] + "_pb2" not in _GENERATED]
        if wanted:
            out = Path(tempfile.mkdtemp(prefix="protogen-"))
            rc = protoc.main(
                ["protoc", f"-I{TESTS}", f"--python_out={out}", f"--grpc_python_out={out}"]
                + [str(TESTS / p) for p in wanted]
            )
            if rc != 0:
                raise RuntimeError(f"protoc failed ({rc}) on {', '.join(wanted)}")
            sys.path.insert(0, str(out))  # the _grpc modules import their _pb2 by bare name
            for proto in wanted:
                stem = proto[: -len(".proto")]
                for suffix in ("_pb2", "_pb2_grpc"):
                    _GENERATED[stem + suffix] = importlib.import_module(stem + suffix)
        return {
            name: mod
            for name, mod in _GENERATED.items()
            if any(name.startswith(p[: -len(".proto")] + "_pb2") for p in protos)
        }
