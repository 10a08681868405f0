"""Many node identities, fast: a client certificate and key per node from a CA's files, and
the kubeconfig the agent reads (``python -m bench.kube``'s fleets, tests/test_fleet_cluster.py).

``tests/kubeapi/certs.py`` issues one identity with two ``openssl`` processes (a new key and
CSR, then the CA's signature) under one lock. For a fleet, one ``openssl req -x509 -newkey ec
-CA`` makes the key and the CA-signed certificate in one process, and a pool runs one per core
at a time (``python -m bench.kube`` measures both ways). Every node still gets its own P-256
key: sharing one saved under 1 ms a certificate here, so it is not shared. A minimal
config of its own fixes the extensions (client auth, not a CA) whatever the distribution's
openssl.cnf says.

Writes only under the directory it is given; reads the CA's two files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.kubeapi.certs import subject

NODES_GROUP = "system:nodes"
CLUSTER = "fleet"
OPENSSL_CNF = """\
[req]
distinguished_name = dn
x509_extensions = client
prompt = no
[dn]
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
"""
OPENSSL_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class CA:
    """The files of the CA the API server trusts for client certificates."""

    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class Credential:
    """One identity's files: certificate, key, and a kubeconfig naming them."""

    user: str
    cert: Path
    key: Path
    kubeconfig: Path


@dataclasses.dataclass(frozen=True)
class Minted:
    """Identities made together, how long it took, and with how many processes at once."""

    credentials: tuple[Credential, ...]
    seconds: float
    workers: int


def node_user(name: str) -> str:
    """The kubelet's user name for Node ``name``."""
    return f"system:node:{name}"


def _issue(ca: CA, cnf: Path, user: str, groups: Sequence[str], stem: Path) -> tuple[Path, Path]:
    cert, key = stem.with_suffix(".crt"), stem.with_suffix(".key")
    proc = subprocess.run(
        ["openssl", "req", "-config", str(cnf), "-x509", "-newkey", "ec",
         "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
         "-CA", str(ca.cert), "-CAkey", str(ca.key), "-days", "30",
         "-subj", subject(user, groups), "-out", str(cert)],
        capture_output=True, text=True, check=False, timeout=OPENSSL_TIMEOUT_S,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{cert}: openssl req -x509 -CA failed: {proc.stderr.strip()}")
    return cert, key


def write_kubeconfig(
    path: Path, server: str, ca_cert: Path, user: str, cert: Path, key: Path
) -> Path:
    """A kubeconfig in the shape the agent reads (JSON is YAML)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER, "cluster": {"server": server,
                                                   "certificate-authority": str(ca_cert)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert),
                                          "client-key": str(key)}}],
        "contexts": [{"name": user, "context": {"cluster": CLUSTER, "user": user}}],
        "current-context": user,
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def mint(
    ca: CA,
    server: str,
    users: Sequence[tuple[str, Sequence[str]]],
    outdir: Path,
    workers: int = 0,
) -> Minted:
    """A certificate, key and kubeconfig for each ``(user, groups)``, ``workers`` openssl
    processes at a time (0: one per core)."""
    outdir.mkdir(parents=True, exist_ok=True)
    cnf = outdir / "openssl.cnf"
    cnf.write_text(OPENSSL_CNF)
    workers = workers or os.cpu_count() or 1

    def one(i: int) -> Credential:
        user, groups = users[i]
        cert, key = _issue(ca, cnf, user, groups, outdir / f"id{i}")
        kc = write_kubeconfig(outdir / f"id{i}.kubeconfig", server, ca.cert, user, cert, key)
        return Credential(user, cert, key, kc)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mint") as pool:
        creds = tuple(pool.map(one, range(len(users))))
    return Minted(creds, time.monotonic() - start, workers)


def mint_nodes(ca: CA, server: str, names: Sequence[str], outdir: Path, workers: int = 0) -> Minted:
    """Node identities (``CN=system:node:NAME, O=system:nodes``), in the order of ``names``."""
    return mint(ca, server, [(node_user(n), (NODES_GROUP,)) for n in names], outdir, workers)
