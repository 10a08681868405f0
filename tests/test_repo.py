"""`make repo` (packaging/repo.py): the signed APT and YUM repositories, checked by their clients.

A throwaway signing key is made for the module (gpg ``--batch``, no passphrase, in a temporary
``GNUPGHOME``; never committed). The packages are small stand-ins named nodeagent, built here
with dpkg-deb and rpmbuild for two architectures each (the repository tools do not look
inside; tests/test_boot_repo.py publishes and installs the real .deb). Then:

- APT: ``gpgv`` accepts InRelease and Release.gpg with the published keyring; ``apt-get
  update`` over HTTP with a private configuration (never the host's /etc/apt) verifies the
  suite with ``signed-by`` that keyring, and ``apt-get download`` fetches the very .deb; a
  tampered Packages index, a tampered Release and a keyring of another key each fail.
- YUM: ``repomd.xml.asc`` verifies with gpg against RPM-GPG-KEY-nodeagent and fails on a
  tampered repomd.xml; ``rpm -K`` (a private rpm database) finds each published .rpm signed
  by the key, and not by another; the metadata names the signed files' checksums.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.realparts import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
VERSION = "0.1.0"
TOOLS = (
    ("gpg", "gpg"),
    ("gpgv", "gpgv"),
    ("apt-ftparchive", "apt-utils"),
    ("apt-get", "apt"),
    ("dpkg-deb", "dpkg"),
    ("rpmbuild", "rpm"),
    ("rpmsign", "rpm"),
    ("createrepo_c", "createrepo-c"),
    ("make", "make"),
)


def ok(argv: list[str], **kw: object) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kw)  # type: ignore[call-overload]
    assert r.returncode == 0, f"{argv}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return str(r.stdout)


def fails(argv: list[str], **kw: object) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kw)  # type: ignore[call-overload]
    assert r.returncode != 0, f"{argv} succeeded\n{r.stdout}\n{r.stderr}"
    return str(r.stdout) + str(r.stderr)


# --- a throwaway key -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Key:
    home: Path  # its GNUPGHOME
    fingerprint: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.home)}


def make_key(name: str) -> Key:
    """A signing-only RSA key without a passphrase in a fresh GNUPGHOME (a short path: gpg's
    agent socket lives in it)."""
    home = Path(tempfile.mkdtemp(prefix="gpg.", dir="/tmp"))
    env = {**os.environ, "GNUPGHOME": str(home)}
    ok(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
        "--quick-gen-key", f"{name} <{name}@nodeagent.invalid>", "rsa3072", "sign", "1d"],
       env=env)  # fmt: skip
    listing = ok(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env=env)
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    return Key(home, fpr)


def drop_key(key: Key) -> None:
    subprocess.run(["gpgconf", "--kill", "all"], env=key.env(), capture_output=True, check=False)
    shutil.rmtree(key.home, ignore_errors=True)


@pytest.fixture(scope="module")
def key() -> Iterator[Key]:
    for binary, package in TOOLS:
        if not shutil.which(binary):
            skip_or_fail("repository tools", f"{binary} not installed (apt-get install {package})")
    k = make_key("nodeagent-test")
    try:
        yield k
    finally:
        drop_key(k)


@pytest.fixture(scope="module")
def other_key(key: Key) -> Iterator[Key]:
    k = make_key("someone-else")
    try:
        yield k
    finally:
        drop_key(k)


# --- stand-in packages -----------------------------------------------------------------------

SPEC = """\
Name: nodeagent
Version: {version}
Release: 1
Summary: stand-in for the repository tests
License: Apache-2.0
%description
A stand-in.
%install
mkdir -p %{{buildroot}}/usr/share/nodeagent
echo stand-in > %{{buildroot}}/usr/share/nodeagent/stand-in
%files
/usr/share/nodeagent/stand-in
"""


def stand_in_deb(dist: Path, arch: str) -> Path:
    root = dist.parent / f"deb-{arch}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/nodeagent").mkdir(parents=True)
    (root / "usr/share/nodeagent/stand-in").write_text("stand-in\n")
    (root / "DEBIAN/control").write_text(
        f"Package: nodeagent\nVersion: {VERSION}\nArchitecture: {arch}\n"
        "Maintainer: tests <tests@nodeagent.invalid>\nDescription: stand-in\n"
    )
    out = dist / f"nodeagent_{VERSION}_{arch}.deb"
    ok(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)])
    return out


def stand_in_rpm(dist: Path, arch: str) -> Path:
    top = dist.parent / f"rpm-{arch}"
    (top / "SPECS").mkdir(parents=True)
    spec = top / "SPECS/nodeagent.spec"
    spec.write_text(SPEC.format(version=VERSION))
    ok(["rpmbuild", "-bb", "--target", arch, "--define", f"_topdir {top}",
        "--define", "__os_install_post %{nil}", str(spec)],
       env={**os.environ, "HOME": str(top)})  # fmt: skip
    (built,) = (top / "RPMS" / arch).glob("*.rpm")
    return Path(shutil.copy(built, dist / built.name))


@dataclasses.dataclass(frozen=True)
class Published:
    dist: Path
    out: Path
    key: Key
    make_output: str

    @property
    def apt(self) -> Path:
        return self.out / "apt"

    @property
    def keyring(self) -> Path:
        return self.out / "nodeagent-archive-keyring.gpg"


@pytest.fixture(scope="module")
def published(key: Key, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """`make repo` over stand-ins for amd64/x86_64 and arm64/aarch64, signed by ``key``."""
    base = tmp_path_factory.mktemp("repo")
    dist = base / "dist"
    dist.mkdir()
    for deb_arch, rpm_arch in (("amd64", "x86_64"), ("arm64", "aarch64")):
        stand_in_deb(dist, deb_arch)
        stand_in_rpm(dist, rpm_arch)
    out = base / "published"
    made = ok(["make", "-C", str(REPO), "repo", f"DIST={dist}", f"REPO_OUT={out}",
               f"PYTHON={sys.executable}", f"SIGNING_KEY={key.fingerprint}"],
              env=key.env())  # fmt: skip
    return Published(dist, out, key, made)


def test_make_repo_writes_the_tree_to_publish(published: Published) -> None:
    out = published.out
    assert "apt 2 .deb (amd64 arm64), yum 2 .rpm (aarch64 x86_64)" in published.make_output
    for rel in (
        "apt/dists/stable/InRelease",
        "apt/dists/stable/Release",
        "apt/dists/stable/Release.gpg",
        "apt/dists/stable/main/binary-amd64/Packages",
        "apt/dists/stable/main/binary-arm64/Packages.gz",
        f"apt/pool/main/n/nodeagent/nodeagent_{VERSION}_amd64.deb",
        f"rpm/x86_64/nodeagent-{VERSION}-1.x86_64.rpm",
        f"rpm/aarch64/nodeagent-{VERSION}-1.aarch64.rpm",
        "rpm/x86_64/repodata/repomd.xml.asc",
        "rpm/aarch64/repodata/repomd.xml.asc",
        "nodeagent-archive-keyring.gpg",
        "RPM-GPG-KEY-nodeagent",
    ):
        assert (out / rel).is_file(), rel
    # nothing secret is published, and everything is readable by a web server
    for f in out.rglob("*"):
        assert f.stat().st_mode & 0o004, f
        if f.is_file() and f.suffix != ".gpg":
            assert b"PRIVATE KEY" not in f.read_bytes(), f
    listed = ok(
        ["gpg", "--batch", "--show-keys", "--with-colons", str(out / "RPM-GPG-KEY-nodeagent")]
    )
    assert published.key.fingerprint in listed and "\nsec:" not in listed
    release = (out / "apt/dists/stable/Release").read_text()
    assert "Suite: stable" in release and "Architectures: amd64 arm64" in release
    amd64 = (out / "apt/dists/stable/main/binary-amd64/Packages").read_text()
    assert "Architecture: amd64" in amd64 and "arm64" not in amd64


def test_the_apt_release_verifies_with_gpgv_and_the_published_keyring(
    published: Published,
) -> None:
    dist = published.apt / "dists/stable"
    kr = str(published.keyring)
    ok(["gpgv", "--keyring", kr, str(dist / "InRelease")])
    ok(["gpgv", "--keyring", kr, str(dist / "Release.gpg"), str(dist / "Release")])
    assert (dist / "InRelease").read_text().count("Hash: SHA512") == 1  # not SHA-1


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    """``root`` over HTTP on loopback; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    t = threading.Thread(target=srv.serve_forever, name="repo-http", daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


class PrivateApt:
    """apt-get and apt-cache with their own sources, lists, caches and trusted keys under
    ``home``: the host's /etc/apt, lists and keyrings are never read or written."""

    def __init__(self, home: Path, source_line: str) -> None:
        self.home = home
        for sub in ("lists/partial", "cache/archives/partial", "empty", "download"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "sources.list").write_text(source_line + "\n")

    def options(self) -> list[str]:
        h = self.home
        return [
            "-o", f"Dir::Etc::SourceList={h / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={h / 'empty'}",
            "-o", f"Dir::Etc::Trusted={h / 'empty' / 'trusted.gpg'}",
            "-o", f"Dir::Etc::TrustedParts={h / 'empty'}",
            "-o", f"Dir::Etc::Preferences={h / 'empty' / 'preferences'}",
            "-o", f"Dir::Etc::PreferencesParts={h / 'empty'}",
            "-o", f"Dir::State::Lists={h / 'lists'}",
            "-o", f"Dir::Cache={h / 'cache'}",
            "-o", "Debug::NoLocking=1",
            "-o", "Acquire::Retries=0",
            # root's apt downloads as _apt, which cannot read a private directory of root's
            *(("-o", "APT::Sandbox::User=root") if os.geteuid() == 0 else ()),
        ]  # fmt: skip

    def get(self, *args: str) -> list[str]:
        return ["apt-get", "-q", *self.options(), *args]

    def cache(self, *args: str) -> list[str]:
        return ["apt-cache", *self.options(), *args]


def copy_of(published: Published, dest: Path) -> Path:
    """A copy of the published tree to tamper with."""
    shutil.copytree(published.out, dest)
    return dest


def test_apt_get_update_verifies_the_repository_and_downloads_the_deb(
    published: Published, tmp_path: Path
) -> None:
    with http_server(published.out) as base:
        apt = PrivateApt(
            tmp_path / "apt", f"deb [signed-by={published.keyring}] {base}/apt stable main"
        )
        out = ok(apt.get("update"))
        assert "stable InRelease" in out and "Err" not in out, out
        policy = ok(apt.cache("policy", "nodeagent"))
        assert f"Candidate: {VERSION}" in policy, policy
        ok(apt.get("download", f"nodeagent={VERSION}"), cwd=apt.home / "download")
    (got,) = (apt.home / "download").glob("*.deb")
    want = published.apt / f"pool/main/n/nodeagent/nodeagent_{VERSION}_amd64.deb"
    assert got.read_bytes() == want.read_bytes()
    # apt kept the signed InRelease: the lists it uses came through the signature check
    assert list((apt.home / "lists").glob("*_apt_dists_stable_InRelease"))


def tamper_packages(tree: Path) -> None:
    """An index with another package's checksum, as a mirror serving a swapped .deb would."""
    index = tree / "apt/dists/stable/main/binary-amd64"
    text = (index / "Packages").read_text()
    text = re.sub(r"SHA256: [0-9a-f]+", "SHA256: " + "0" * 64, text)
    (index / "Packages").write_text(text)
    (index / "Packages.gz").write_bytes(gzip.compress(text.encode(), mtime=0))


def test_a_tampered_packages_index_fails_apt_get_update(
    published: Published, tmp_path: Path
) -> None:
    tree = copy_of(published, tmp_path / "tree")
    tamper_packages(tree)
    with http_server(tree) as base:
        apt = PrivateApt(
            tmp_path / "apt", f"deb [signed-by={published.keyring}] {base}/apt stable main"
        )
        out = fails(apt.get("update"))
    assert "Hash Sum mismatch" in out or "unexpected size" in out, out
    assert not list((apt.home / "lists").glob("*_binary-amd64_Packages*")), "a bad index was kept"


def test_a_tampered_release_fails_gpgv_and_apt(published: Published, tmp_path: Path) -> None:
    tree = copy_of(published, tmp_path / "tree")
    dist = tree / "apt/dists/stable"
    old = hashlib.sha256((dist / "main/binary-amd64/Packages").read_bytes()).hexdigest()
    tamper_packages(tree)
    # the attacker also rewrites the index's hash in Release and InRelease, without the key
    new = hashlib.sha256((dist / "main/binary-amd64/Packages").read_bytes()).hexdigest()
    for name in ("Release", "InRelease"):
        text = (dist / name).read_text()
        assert old in text
        (dist / name).write_text(text.replace(old, new))
    kr = str(published.keyring)
    assert "BAD signature" in fails(["gpgv", "--keyring", kr, str(dist / "InRelease")])
    fails(["gpgv", "--keyring", kr, str(dist / "Release.gpg"), str(dist / "Release")])
    with http_server(tree) as base:
        apt = PrivateApt(tmp_path / "apt", f"deb [signed-by={kr}] {base}/apt stable main")
        out = fails(apt.get("update"))
    assert "BADSIG" in out or "not signed" in out or "invalid" in out, out


def test_apt_refuses_the_repository_with_another_key(
    published: Published, other_key: Key, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.gpg"
    wrong.write_bytes(
        subprocess.run(
            ["gpg", "--batch", "--export", other_key.fingerprint],
            env=other_key.env(), capture_output=True, check=True,
        ).stdout
    )  # fmt: skip
    with http_server(published.out) as base:
        apt = PrivateApt(tmp_path / "apt", f"deb [signed-by={wrong}] {base}/apt stable main")
        out = fails(apt.get("update"))
    assert "NO_PUBKEY" in out or "not signed" in out, out


# --- YUM -------------------------------------------------------------------------------------


@contextlib.contextmanager
def gpg_verifier(public_key: Path) -> Iterator[list[str]]:
    """gpg with a fresh keyring holding only ``public_key`` (the argv prefix to verify with)."""
    home = Path(tempfile.mkdtemp(prefix="gpgv.", dir="/tmp"))
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        ok(["gpg", "--batch", "--import", str(public_key)], env=env)
        yield ["gpg", "--homedir", str(home), "--batch", "--status-fd", "1"]
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def test_repomd_signature_verifies_with_the_published_rpm_key(
    published: Published, tmp_path: Path
) -> None:
    with gpg_verifier(published.out / "RPM-GPG-KEY-nodeagent") as verify:
        for arch in ("x86_64", "aarch64"):
            repomd = published.out / "rpm" / arch / "repodata/repomd.xml"
            out = ok([*verify, "--verify", f"{repomd}.asc", str(repomd)])
            assert f"VALIDSIG {published.key.fingerprint}" in out, out
        tree = copy_of(published, tmp_path / "tree")
        repomd = tree / "rpm/x86_64/repodata/repomd.xml"
        repomd.write_text(repomd.read_text().replace("<revision>", "<revision>1"))
        assert "BADSIG" in fails([*verify, "--verify", f"{repomd}.asc", str(repomd)])


def rpm_db(tmp: Path, *keys: Path) -> list[str]:
    """rpm on a private database (never the host's) that trusts only ``keys``."""
    db = tmp / "rpmdb"
    db.mkdir(parents=True)
    base = ["rpm", "--dbpath", str(db)]
    ok([*base, "--initdb"])
    for k in keys:
        ok([*base, "--import", str(k)])
    return base


def test_rpm_k_checks_the_signed_rpms(published: Published, other_key: Key, tmp_path: Path) -> None:
    rpms = sorted((published.out / "rpm").glob("*/*.rpm"))
    assert len(rpms) == 2
    trusting = rpm_db(tmp_path / "ours", published.out / "RPM-GPG-KEY-nodeagent")
    short = published.key.fingerprint[-8:].lower()
    for rpm in rpms:
        out = ok([*trusting, "-Kv", str(rpm)])
        assert re.search(rf"Signature, key ID {short}: OK", out), out
        assert "NOT OK" not in out, out
    # the files in dist/ stay unsigned: only the published copies are
    unsigned = ok([*trusting, "-Kv", str(sorted(published.dist.glob("*.x86_64.rpm"))[0])])
    assert "Signature" not in unsigned, unsigned
    # a database that trusts another key only: the signature does not check out
    other = tmp_path / "other.asc"
    other.write_text(ok(["gpg", "--batch", "--armor", "--export", other_key.fingerprint],
                        env=other_key.env()))  # fmt: skip
    distrusting = rpm_db(tmp_path / "other", other)
    assert "SIGNATURES NOT OK" in fails([*distrusting, "-K", str(rpms[0])])


def test_the_yum_metadata_names_the_signed_rpms(published: Published) -> None:
    ns = {"c": "http://linux.duke.edu/metadata/common", "r": "http://linux.duke.edu/metadata/repo"}
    for arch in ("x86_64", "aarch64"):
        d = published.out / "rpm" / arch
        repomd = ET.parse(d / "repodata/repomd.xml").getroot()
        href = repomd.find("r:data[@type='primary']/r:location", ns)
        assert href is not None
        primary = ET.fromstring(gzip.decompress((d / href.attrib["href"]).read_bytes()))
        (pkg,) = primary.findall("c:package", ns)
        location = pkg.find("c:location", ns)
        checksum = pkg.find("c:checksum", ns)
        assert location is not None and checksum is not None
        rpm = d / location.attrib["href"]
        assert pkg.findtext("c:arch", namespaces=ns) == arch
        assert checksum.text == hashlib.sha256(rpm.read_bytes()).hexdigest()


# --- the cloud-init examples -----------------------------------------------------------------


def test_the_cloud_init_examples_point_into_the_published_layout(published: Published) -> None:
    """One base URL serves the tree: install-from-repo.yaml's apt line and
    install-from-yum.yaml's baseurl and gpgkey name paths that `make repo` writes."""
    examples = REPO / "cloud-init"
    apt = yaml.safe_load((examples / "install-from-repo.yaml").read_text())["apt"]["sources"]
    words = apt["nodeagent"]["source"].split()
    assert words[:2] == ["deb", "[signed-by=$KEY_FILE]"], words
    url, suite, component = words[2:]
    assert url.endswith("/apt") and (published.out / "apt/dists" / suite / component).is_dir()
    base = url[: -len("/apt")]
    yum = yaml.safe_load((examples / "install-from-yum.yaml").read_text())["yum_repos"]
    repo = yum["nodeagent"]
    assert repo["gpgcheck"] is True and repo["repo_gpgcheck"] is True
    assert repo["baseurl"] == f"{base}/rpm/$basearch"
    assert (published.out / "rpm/x86_64/repodata/repomd.xml.asc").is_file()
    assert repo["gpgkey"].startswith(base + "/")
    assert (published.out / repo["gpgkey"][len(base) + 1 :]).is_file()


# --- the builder's own errors ----------------------------------------------------------------


def repo_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "packaging/repo.py"), *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_a_missing_key_or_empty_dist_is_one_line_and_exit_2(
    published: Published, key: Key, tmp_path: Path
) -> None:
    env = {k: v for k, v in key.env().items() if k != "SIGNING_KEY"}
    for args, needle in (
        (["--dist", str(published.dist), "--out", str(tmp_path / "a")], "--key"),
        (["--dist", str(published.dist), "--out", str(tmp_path / "b"), "--key", "0" * 40],
         "no such key"),
        (["--dist", str(tmp_path), "--out", str(tmp_path / "c"), "--key", key.fingerprint],
         "no .deb or .rpm"),
    ):  # fmt: skip
        r = repo_cli(*args, env=env)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("repo: ") and needle in lines[0], lines
        assert "Traceback" not in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".a", ".b", ".c"))]
