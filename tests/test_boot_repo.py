"""The signed APT repository, proven by a boot: cloud-init installs nodeagent from it.

The real .deb (as tests/test_boot.py builds it) is published with ``packaging/repo.py`` (what
``make repo`` runs), signed by a throwaway key (tests/test_repo.py's), and served over HTTP
from inside the machine's own network: a named network namespace the booted machine joins,
with the server started in it before the boot, so it is there when cloud-init's config stage
adds the repository. The user data is ``cloud-init/install-from-repo.yaml`` with its REPLACE
lines filled in as an operator does (the repository's URL and public key; the join starts the
kubelet stand-in). cloud-init stores the key and names it in ``signed-by``; apt verifies the
suite's InRelease with it and installs the package; the node becomes GPU-ready exactly as in
the other boots (``boot_to_gpu_ready``). Then, inside the machine, apt refuses the same
repository signed-by another key: the check is apt's, not a formality.

The machine's image gets gpg first (Debian's gpg, gpgconf, libassuan0 unpacked into it):
cloud-init turns an armoured ``key:`` into a keyring with ``gpg --dearmor``, and cloud images
ship gpg, while the tests' minimal debootstrap does not.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import debcache
from tests.e2e.machine import Machine, in_netns, named_netns
from tests.realparts import skip_or_fail
from tests.test_boot import (
    EXAMPLES,
    NODE,
    _join_here,
    boot_to_gpu_ready,
    deb,
    fakenvml,
    prepare,
    pristine,
)
from tests.test_repo import Key, drop_key, make_key

__all__ = ["deb", "fakenvml", "pristine"]  # module fixtures shared with test_boot

REPO = Path(__file__).resolve().parents[1]
# what cloud-init's `key:` needs on the image (gpg --dearmor), from Debian 12
GPG_PACKAGES = ("gpg", "gpgconf", "libassuan0")

pytestmark = [pytest.mark.root, pytest.mark.boot]


@pytest.fixture(scope="module")
def signing_key() -> Iterator[Key]:
    for tool, package in (("gpg", "gpg"), ("apt-ftparchive", "apt-utils")):
        if not shutil.which(tool):
            skip_or_fail("signed repository", f"{tool} not installed (apt-get install {package})")
    k = make_key("nodeagent-boot-test")
    try:
        yield k
    finally:
        drop_key(k)


@pytest.fixture(scope="module")
def apt_repo(deb: Path, signing_key: Key, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published tree (``make repo``'s output) for the real .deb."""
    base = tmp_path_factory.mktemp("published")
    (base / "dist").mkdir()
    shutil.copy(deb, base / "dist" / deb.name)
    out = base / "repo"
    subprocess.run(
        [sys.executable, str(REPO / "packaging/repo.py"), "--only", "apt",
         "--dist", str(base / "dist"), "--out", str(out), "--key", signing_key.fingerprint],
        env=signing_key.env(), check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def gpg_trees() -> list[Path]:
    try:
        return [debcache.unpacked("bookworm", p) for p in GPG_PACKAGES]
    except debcache.FetchError as e:
        skip_or_fail("gpg for the machine's image", str(e))
        raise


class RepoServer:
    """``root`` over HTTP on the loopback of the network namespace ``netns``; the listening
    socket is made in there, so only that namespace (the machine) reaches it. The serving
    thread is the server's own; the test thread only starts and stops it."""

    def __init__(self, root: Path, netns: Path) -> None:
        class Handler(http.server.SimpleHTTPRequestHandler):
            requests: list[str] = []  # appended to by the serving thread only

            def log_message(self, format: str, *args: object) -> None:
                Handler.requests.append(str(args[0]) if args else format)

        self.handler = Handler
        with in_netns(netns):
            self.srv = http.server.ThreadingHTTPServer(
                ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
            )
        self.thread = threading.Thread(target=self.srv.serve_forever, name="apt-repo", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.srv.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        return list(self.handler.requests)

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def user_data_from_repo_example(url: str, public_key: str) -> str:
    """cloud-init/install-from-repo.yaml with its repository's REPLACE lines filled in: the
    repository's URL and its ASCII-armoured key; everything else as shipped."""
    doc = yaml.safe_load((EXAMPLES / "install-from-repo.yaml").read_text())
    source = doc["apt"]["sources"]["nodeagent"]
    assert "REPLACE-WITH-THE-REPOSITORY-SIGNING-KEY" in source["key"]
    assert source["source"].startswith("deb [signed-by=$KEY_FILE] https://")
    base = source["source"].split()[2]
    source["source"] = source["source"].replace(base, f"{url}/apt")
    source["key"] = public_key
    assert doc["packages"] == ["nodeagent"] and doc["package_update"] is True
    doc["runcmd"] = _join_here(doc["runcmd"])
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def give_image_gpg(root: Path, trees: list[Path]) -> None:
    """The unpacked Debian packages' programs and libraries into the machine's image (their
    docs and man pages left out; no dpkg record: the image is thrown away after the boot)."""
    for tree in trees:
        for src in tree.rglob("*"):
            rel = src.relative_to(tree)
            if src.is_dir() or rel.name == ".done" or rel.parts[:2] == ("usr", "share"):
                continue
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest, follow_symlinks=False)
    subprocess.run(["chroot", str(root), "ldconfig"], check=True)


@pytest.fixture
def netns() -> Iterator[Path]:
    with named_netns(f"na-repo-{os.getpid()}") as ns:
        yield ns


@pytest.fixture
def machine(pristine: Path, netns: Path) -> Iterator[Machine]:
    m = Machine(pristine, Path(tempfile.mkdtemp(prefix="e2e.", dir="/tmp")), NODE, netns=netns)
    try:
        yield m.prepare()
    finally:
        m.teardown()


def test_cloud_init_installs_from_the_signed_apt_repository_and_the_node_becomes_gpu_ready(
    machine: Machine,
    netns: Path,
    apt_repo: Path,
    deb: Path,
    fakenvml: Path,
    gpg_trees: list[Path],
    signing_key: Key,
    tmp_path: Path,
) -> None:
    server = RepoServer(apt_repo, netns)
    try:
        public_key = (apt_repo / "nodeagent-archive-keyring.asc").read_text()
        prepare(
            machine, deb, fakenvml, user_data=user_data_from_repo_example(server.url, public_key)
        )
        (machine.root / "var/lib/seed" / deb.name).unlink()  # only the repository has it
        give_image_gpg(machine.root, gpg_trees)
        boot_to_gpu_ready(machine, tmp_path, "install-from-repo")

        # apt fetched the signed suite and the .deb from the repository, over this network
        got = server.requests
        assert any("/apt/dists/stable/InRelease" in r for r in got), got
        assert any(f"/apt/pool/main/n/nodeagent/{deb.name}" in r for r in got), got
        host = server.url.split("//", 1)[1]
        lists = machine.root / "var/lib/apt/lists"
        assert (lists / f"{host}_apt_dists_stable_InRelease").is_file(), sorted(
            p.name for p in lists.iterdir()
        )
        # cloud-init stored the key and trusts it for this repository only (signed-by)
        keyring = machine.root / "etc/apt/cloud-init.gpg.d/nodeagent.gpg"
        assert keyring.read_bytes() == (apt_repo / "nodeagent-archive-keyring.gpg").read_bytes()
        listed = (machine.root / "etc/apt/sources.list.d/nodeagent.list").read_text()
        assert f"[signed-by=/etc/apt/cloud-init.gpg.d/nodeagent.gpg] {server.url}/apt" in listed
        policy = machine.run("apt-cache", "policy", "nodeagent", check=True).stdout
        assert f"{server.url}/apt stable/main amd64 Packages" in policy, policy

        # the same repository, signed-by another key: apt in the machine refuses it
        other = make_key("not-the-signer")
        try:
            wrong = subprocess.run(
                ["gpg", "--batch", "--export", other.fingerprint],
                env=other.env(), check=True, capture_output=True,
            ).stdout  # fmt: skip
        finally:
            drop_key(other)
        (machine.root / "root/wrong.gpg").write_bytes(wrong)
        (machine.root / "root/wrong.list").write_text(
            f"deb [signed-by=/root/wrong.gpg] {server.url}/apt stable main\n"
        )
        (machine.root / "root/no-parts").mkdir()
        (machine.root / "root/wrong-lists/partial").mkdir(parents=True)
        r = machine.run(
            "apt-get", "update",
            "-o", "Dir::Etc::SourceList=/root/wrong.list",
            "-o", "Dir::Etc::SourceParts=/root/no-parts",
            "-o", "Dir::State::Lists=/root/wrong-lists",
            "-o", "APT::Sandbox::User=root",
            timeout=60,
        )  # fmt: skip
        assert r.returncode != 0, r.stdout + r.stderr
        assert "NO_PUBKEY" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        server.close()
