"""Build the signed APT and YUM repositories from the packages in dist/ (docs/install.md,
"Publishing the repositories").

    python packaging/repo.py --key FINGERPRINT [--dist dist] [--out dist/repo] [--only apt|yum]

``make repo SIGNING_KEY=FINGERPRINT`` runs it. The signing key is gpg's, from ``$GNUPGHOME``
(the operator's keyring in a release, a throwaway one in the tests); this module only asks gpg
to sign with it and to export its public half, and never reads or writes a secret key. The
tree it writes under ``--out`` is what to publish, as is, at one base URL:

    apt/dists/SUITE/{Release,InRelease,Release.gpg}      signed index of the indexes
    apt/dists/SUITE/main/binary-ARCH/Packages{,.gz}     apt-ftparchive's package index
    apt/pool/main/n/nodeagent/*.deb                      the .debs, as built
    rpm/ARCH/*.rpm                                       the .rpms, signed (rpmsign)
    rpm/ARCH/repodata/repomd.xml{,.asc} ...              createrepo_c's metadata, signed
    nodeagent-archive-keyring.gpg                        the public key, binary: apt Signed-By
    nodeagent-archive-keyring.asc, RPM-GPG-KEY-nodeagent the public key, ASCII-armoured

Tools: apt-ftparchive (apt-utils), gpg, rpmsign and rpm (rpm), createrepo_c (createrepo-c);
all in Debian 12 and 13. The tree is built beside ``--out`` and renamed into place, so a
failed build leaves the previous tree whole. The layout is decided first, from the packages'
names (:func:`plan`), and only then are the tools run (:func:`build`).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
SUITE = "stable"
COMPONENT = "main"
ORIGIN = "nodeagent"
APT_KEYRING = "nodeagent-archive-keyring.gpg"
APT_KEY_ASC = "nodeagent-archive-keyring.asc"
RPM_KEY = "RPM-GPG-KEY-nodeagent"
# apt refuses SHA-1 signatures; say what gpg signs with rather than trust its default
DIGEST = "SHA512"
TOOLS = {
    "apt": (("apt-ftparchive", "apt-utils"), ("gpg", "gpg")),
    "yum": (("createrepo_c", "createrepo-c"), ("rpmsign", "rpm"), ("rpm", "rpm"), ("gpg", "gpg")),
}


class RepoError(Exception):
    """One line, ``PATH: what is wrong``; ``code`` is the exit code (2 bad input, 1 a tool)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- the layout (pure) ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Deb:
    src: Path
    arch: str  # Debian's name: amd64, arm64

    @property
    def pool_path(self) -> str:
        return f"pool/{COMPONENT}/n/nodeagent/{self.src.name}"


@dataclasses.dataclass(frozen=True)
class Rpm:
    src: Path
    arch: str  # RPM's name, also yum's $basearch: x86_64, aarch64

    @property
    def repo_path(self) -> str:
        return f"{self.arch}/{self.src.name}"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which package goes where; what each index covers."""

    debs: tuple[Deb, ...]
    rpms: tuple[Rpm, ...]
    suite: str = SUITE

    @property
    def deb_arches(self) -> tuple[str, ...]:
        return tuple(sorted({d.arch for d in self.debs}))

    @property
    def rpm_arches(self) -> tuple[str, ...]:
        return tuple(sorted({r.arch for r in self.rpms}))


def deb_arch(name: str) -> str:
    """``nodeagent_0.1.0_amd64.deb`` → ``amd64`` (Debian's file name convention)."""
    return name[: -len(".deb")].rsplit("_", 1)[-1]


def rpm_arch(name: str) -> str:
    """``nodeagent-0.1.0-1.x86_64.rpm`` → ``x86_64`` (rpmbuild's file name convention)."""
    return name[: -len(".rpm")].rsplit(".", 1)[-1]


def plan(files: list[Path], suite: str = SUITE) -> Plan:
    """The repositories' layout for the package files found in dist/."""
    debs = tuple(Deb(f, deb_arch(f.name)) for f in sorted(files) if f.name.endswith(".deb"))
    rpms = tuple(
        Rpm(f, rpm_arch(f.name))
        for f in sorted(files)
        if f.name.endswith(".rpm") and not f.name.endswith(".src.rpm")
    )
    return Plan(debs=debs, rpms=rpms, suite=suite)


def release_options(p: Plan) -> list[str]:
    """apt-ftparchive's settings for the suite's Release file."""
    fields = {
        "Origin": ORIGIN,
        "Label": ORIGIN,
        "Suite": p.suite,
        "Codename": p.suite,
        "Architectures": " ".join(p.deb_arches),
        "Components": COMPONENT,
        "Description": "nodeagent packages",
    }
    out: list[str] = []
    for k, v in fields.items():
        out += ["-o", f"APT::FTPArchive::Release::{k}={v}"]
    return out


# --- running the tools (the only side effects) ---------------------------------------------


def run(argv: list[str], *, cwd: Optional[Path] = None, stdout: Optional[Path] = None) -> None:
    """``argv``; its stdout into ``stdout`` when given. A failure is one RepoError line."""
    out = stdout.open("wb") if stdout else None
    try:
        r = subprocess.run(
            argv,
            cwd=cwd,
            stdout=out if out else subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,  # never a passphrase prompt on a terminal: a hang
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RepoError(f"{argv[0]}: {e}") from None
    finally:
        if out:
            out.close()
    if r.returncode != 0:
        tail = r.stderr.decode(errors="replace").strip().splitlines()[-2:]
        raise RepoError(f"{argv[0]}: exit {r.returncode}: {' | '.join(tail) or 'no output'}")


def gpg(key: str, *args: str) -> list[str]:
    return [
        "gpg",
        "--batch",
        "--yes",
        "--no-tty",
        "--local-user",
        key,
        "--digest-algo",
        DIGEST,
        *args,
    ]


def export_keys(key: str, out: Path) -> None:
    run(["gpg", "--batch", "--export", key], stdout=out / APT_KEYRING)
    if (out / APT_KEYRING).stat().st_size == 0:
        raise RepoError(f"{key}: no such key in gpg's keyring (GNUPGHOME)", code=2)
    run(["gpg", "--batch", "--armor", "--export", key], stdout=out / APT_KEY_ASC)
    shutil.copyfile(out / APT_KEY_ASC, out / RPM_KEY)


def build_apt(p: Plan, key: str, top: Path) -> None:
    """apt/: the pool, a Packages index per architecture, the signed Release."""
    apt = top / "apt"
    for d in p.debs:
        (apt / d.pool_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d.src, apt / d.pool_path)
    dist = apt / "dists" / p.suite
    for arch in p.deb_arches:
        index = dist / COMPONENT / f"binary-{arch}"
        index.mkdir(parents=True)
        # paths in Packages are relative to apt/, the archive's root
        run(["apt-ftparchive", "--arch", arch, "packages", f"pool/{COMPONENT}"], cwd=apt,
            stdout=index / "Packages")  # fmt: skip
        (index / "Packages.gz").write_bytes(
            gzip.compress((index / "Packages").read_bytes(), mtime=0)
        )
    # Release lists every index file under dist/: written outside it, then moved in
    release = top / "Release.tmp"
    run(["apt-ftparchive", *release_options(p), "release", str(dist)], stdout=release)
    shutil.move(str(release), dist / "Release")
    run(gpg(key, "--clearsign", "--output", str(dist / "InRelease"), str(dist / "Release")))
    run(gpg(key, "--armor", "--detach-sign", "--output", str(dist / "Release.gpg"),
            str(dist / "Release")))  # fmt: skip


def build_yum(p: Plan, key: str, top: Path) -> None:
    """rpm/ARCH/: the signed .rpms, createrepo_c's metadata and its detached signature."""
    rpm = top / "rpm"
    for r in p.rpms:
        (rpm / r.repo_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r.src, rpm / r.repo_path)
        run([
            "rpmsign", "--addsign",
            # rpm's default is /usr/bin/gpg2, which Debian does not ship
            "--define", f"__gpg {shutil.which('gpg')}",
            "--define", f"_gpg_name {key}",
            "--define", f"_gpg_digest_algo {DIGEST.lower()}",
            "--define", "_gpg_sign_cmd_extra_args --batch --no-tty",
            str(rpm / r.repo_path),
        ])  # fmt: skip
    for arch in p.rpm_arches:
        d = rpm / arch
        # gz: the compression every yum and dnf reads (createrepo_c 1.x defaults to zstd)
        run(["createrepo_c", "--quiet", "--general-compress-type", "gz", str(d)])
        repomd = d / "repodata" / "repomd.xml"
        run(gpg(key, "--armor", "--detach-sign", "--output", f"{repomd}.asc", str(repomd)))


def missing_tools(kinds: tuple[str, ...]) -> list[str]:
    return sorted(
        {f"{tool} ({pkg})" for k in kinds for tool, pkg in TOOLS[k] if not shutil.which(tool)}
    )


def build(
    dist: Path, out: Path, key: str, *, only: Optional[str] = None, suite: str = SUITE
) -> Plan:
    """Write the signed repositories for dist/'s packages to ``out`` (replacing it)."""
    if not dist.is_dir():
        raise RepoError(f"{dist}: no such directory (run `make packages` first)", code=2)
    p = plan([f for f in dist.iterdir() if f.is_file()], suite)
    if only == "apt":
        p = dataclasses.replace(p, rpms=())
    elif only == "yum":
        p = dataclasses.replace(p, debs=())
    if not p.debs and not p.rpms:
        raise RepoError(f"{dist}: no .deb or .rpm to publish (run `make packages` first)", code=2)
    kinds = tuple(k for k, has in (("apt", p.debs), ("yum", p.rpms)) if has)
    lacking = missing_tools(kinds)
    if lacking:
        raise RepoError(f"{', '.join(lacking)}: not installed (apt-get install them)", code=2)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        export_keys(key, top)
        if p.debs:
            build_apt(p, key, top)
        if p.rpms:
            build_yum(p, key, top)
        for d in [top, *top.rglob("*")]:  # published as is: world-readable
            d.chmod(0o755 if d.is_dir() else 0o644)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        top.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(top, ignore_errors=True)
        raise
    return p


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dist", type=Path, default=REPO / "dist", help="where the packages are")
    ap.add_argument("--out", type=Path, default=None, help="the tree to publish (DIST/repo)")
    ap.add_argument(
        "--key",
        default=os.environ.get("SIGNING_KEY", ""),
        help="the signing key's fingerprint in $GNUPGHOME (default: $SIGNING_KEY)",
    )
    ap.add_argument("--suite", default=SUITE, help=f"the APT suite (default {SUITE})")
    ap.add_argument("--only", choices=("apt", "yum"), help="build one repository only")
    a = ap.parse_args(argv)
    try:
        if not a.key:
            raise RepoError("--key: the signing key's fingerprint is required (SIGNING_KEY=)", 2)
        p = build(a.dist, a.out or a.dist / "repo", a.key, only=a.only, suite=a.suite)
    except RepoError as e:
        print(f"repo: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("repo: interrupted", file=sys.stderr)
        return 130
    out = a.out or a.dist / "repo"
    print(
        f"repo: {out}: apt {len(p.debs)} .deb ({' '.join(p.deb_arches) or '-'}), "
        f"yum {len(p.rpms)} .rpm ({' '.join(p.rpm_arches) or '-'}), signed by {a.key}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
