"""A throwaway PKI for the test API server, made with the ``openssl`` CLI.

One CA signs the server certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``) and client
certificates whose subject carries the user (CN) and groups (O, one RDN each), the way
kube-apiserver's x509 authenticator reads them. EC P-256 keys keep generation fast.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path


def _escape(value: str) -> str:
    """Escape a value for ``openssl -subj`` (``/``, ``+``, ``=`` and ``\\`` are special)."""
    out = []
    for ch in value:
        if ch in "/+=\\":
            out.append("\\")
        out.append(ch)
    return "".join(out)


def subject(cn: str, orgs: Sequence[str] = ()) -> str:
    """An ``openssl -subj`` string: one ``O=`` RDN per group, then ``CN=``."""
    return "".join(f"/O={_escape(o)}" for o in orgs) + f"/CN={_escape(cn)}"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


class PKI:
    """A CA under ``workdir`` and the certificates it issues, cached per subject."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_cert = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        self._lock = threading.Lock()
        self._issued: dict[tuple[str, tuple[str, ...]], tuple[Path, Path]] = {}
        self._serial = 0
        self._make_ca()
        self.server_cert, self.server_key = self._issue(
            "server",
            "/CN=kube-apiserver",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "extendedKeyUsage=serverAuth\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "basicConstraints=critical,CA:FALSE\n",
        )

    def _make_ca(self) -> None:
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(self.ca_key), "-out", str(self.ca_cert),
            "-days", "3650", "-subj", "/CN=kubeapi-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.dir,
        )  # fmt: skip

    def _issue(self, stem: str, subj: str, extensions: str, days: int = 3650) -> tuple[Path, Path]:
        key, csr, crt = (self.dir / f"{stem}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.dir / f"{stem}.ext"
        ext.write_text(extensions)
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-utf8", "-keyout", str(key), "-out", str(csr), "-subj", subj,
            cwd=self.dir,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey",
            str(self.ca_key), "-set_serial", str(secrets.randbits(63)), "-days", str(days),
            "-extfile", str(ext), "-out", str(crt),
            cwd=self.dir,
        )  # fmt: skip
        csr.unlink()
        ext.unlink()
        return crt, key

    def expired_client_cert(self, cn: str, orgs: Sequence[str] = ()) -> tuple[Path, Path]:
        """A client certificate that expired a day before it was issued (``-days -1``)."""
        with self._lock:
            self._serial += 1
            serial = self._serial
        return self._issue(
            f"expired-{serial}",
            subject(cn, orgs),
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
            days=-1,
        )

    def client_cert(self, cn: str, orgs: Sequence[str] = ()) -> tuple[Path, Path]:
        """(cert, key) PEM paths for a client whose subject is ``/O=orgs.../CN=cn``."""
        cache_key = (cn, tuple(orgs))
        with self._lock:
            if cache_key not in self._issued:
                self._serial += 1
                self._issued[cache_key] = self._issue(
                    f"client-{self._serial}",
                    subject(cn, orgs),
                    "extendedKeyUsage=clientAuth\n"
                    "keyUsage=critical,digitalSignature\n"
                    "basicConstraints=critical,CA:FALSE\n",
                )
            return self._issued[cache_key]
