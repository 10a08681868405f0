"""Build the controller's container image with no registry (docs/install.md, "The controller
image").

    python packaging/image.py [--dist DIR | --out FILE] [--tag NAME:TAG] [--cache DIR] [--work DIR]

``make image`` runs this. The image is two layers, assembled here by our own code (no docker,
no buildkit, no base image pulled from anywhere):

1. **base**: Debian's ``python3`` and the files of the packages it depends on, taken from a
   ``debootstrap --variant=minbase`` tree (cached under ``/var/cache/nodeagent-image/``, like
   the e2e's rootfs), plus ``/etc/passwd`` with the non-root user ``nonroot`` (65532), ``/tmp``
   and a ``var/lib/dpkg/status`` listing exactly the packages whose files are in the image (so
   scanners see them). No shell, no apt, no dpkg: nothing in the image but python3 runs.
2. **app**: the package's bundle (``/opt/nodeagent/lib`` from packaging/build.py, for the one
   CPython the base has), its launcher ``/usr/bin/nodeagent``, and the bytecode of every
   module the controller imports, compiled by the image's own python3 (a read-only root
   cannot keep what the interpreter would compile at each start).

The output is one tar that is at once an OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/…``: ``ctr images import``, ``skopeo copy oci-archive:…``) and a docker-archive
(``manifest.json`` naming the same blobs: ``docker load``, which docker 20.10 reads only in
that form). It is reproducible: every tar entry is sorted, owned by 0:0 (but the user's home),
dated SOURCE_DATE_EPOCH (else the last commit's time; the base layer 1970, so that its digest
depends on Debian's packages only), gzip carries no name or time, JSON is written with sorted
keys; the same inputs give the same bytes and so the same digests (tests/test_image.py).

Holds the image assembly only. Touches nothing but its cache directory, its work directory
and the output file; needs root for debootstrap (the first build only).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402  (packaging/build.py: the bundle, the lock files, the epoch)
import debroot  # noqa: E402  (packaging/debroot.py: the mirror, the build-once step)

CACHE = Path(os.environ.get("NODEAGENT_IMAGE_CACHE", "/var/cache/nodeagent-image"))
SUITE = "bookworm"
ROOTFS_PACKAGES = ("python3",)
ROOTFS_LAYOUT = "1"  # bump when what rootfs() does after debootstrap changes
# What python3's dependency closure drags in that only installing packages needs: tzdata's
# debconf questions and debconf's interpreter. Nothing in the image configures a package.
NOT_IN_IMAGE = {
    "debconf": "asks install-time questions; the image installs nothing",
    "perl-base": "debconf's interpreter",
    "dpkg": "python3-minimal's maintainer scripts run it (and it brings tar)",
}
# Files of the chosen packages that no program reads at run time (licences stay).
DROPPED = re.compile(
    r"^usr/share/(man|info|locale|lintian|bug|menu|doc-base|pixmaps|applications)/"
    r"|^usr/share/doc/(?!.*/copyright$)"
)
USER = 65532  # "nonroot", as distroless images have it; deploy/controller.yaml's runAsUser
ENTRYPOINT = ["/usr/bin/nodeagent"]
CMD = ["controller"]  # a pod's args replace it: ["--config", "/etc/…/config.yaml", "controller"]
PATH_ENV = "PATH=/usr/local/bin:/usr/bin:/bin"
# What `nodeagent controller` imports (its whole import closure is compiled, the standard
# library's part included): with a read-only root nothing can be compiled at run time, and
# compiling these on every start costs ~2 s of CPU and ~8 MiB more peak memory.
CONTROLLER_MODULES = (
    "nodeagent.cli.main",
    "nodeagent.config",
    "nodeagent.kube.controller",
    "nodeagent.kube.client",
    "nodeagent.host.reader",
    "kubernetes.client",
    "kubernetes.client.exceptions",
    "kubernetes.config",
    "urllib3.exceptions",
    "yaml",
)
PYCACHE = "/var/cache/nodeagent/pycache"  # the launcher's sys.pycache_prefix under /
BASE_EPOCH = 0  # the base layer's files' date (see build_image)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(msg: str) -> None:
    print(f"image: {msg}", file=sys.stderr, flush=True)


# --- the base root file system ------------------------------------------------------------


def rootfs_key() -> str:
    text = f"{SUITE} {' '.join(ROOTFS_PACKAGES)} {ROOTFS_LAYOUT}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def why_not() -> Optional[str]:
    """Why no image can be built here, or None."""
    if os.geteuid() != 0 and not (CACHE / f"rootfs-{SUITE}-{rootfs_key()}" / ".complete").exists():
        return "the first build needs root (debootstrap)"
    for tool in ("debootstrap", "strip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install debootstrap binutils)"
    return None


def rootfs(cache: Path) -> Path:
    """The cached debootstrap tree the base layer is taken from; built once (concurrent
    builds wait on a lock). It is only read: the layer copies what it needs."""

    def fill(tmp: Path) -> str:
        start = time.monotonic()
        log(f"debootstrap {SUITE} into {cache} (once; cached)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}"]
        subprocess.run(
            [*cmd, SUITE, str(tmp), debroot.mirror()], check=True, stdout=subprocess.DEVNULL
        )
        return f"built in {time.monotonic() - start:.0f} s"

    return debroot.cached_root(cache, f"rootfs-{SUITE}-{rootfs_key()}", fill)


@dataclasses.dataclass(frozen=True)
class Package:
    """One installed package of the tree, as var/lib/dpkg/status says."""

    name: str
    stanza: str  # its whole status entry, copied into the image's status file
    depends: tuple[tuple[str, ...], ...]  # Pre-Depends and Depends: each a set of alternatives
    provides: tuple[str, ...]


def _names(field: str) -> list[tuple[str, ...]]:
    """``a (>= 1) | b, c:any`` -> [("a", "b"), ("c",)]."""
    out = []
    for group in field.split(","):
        alts = tuple(re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in group.split("|"))
        if any(alts):
            out.append(tuple(a for a in alts if a))
    return out


def installed(root: Path) -> dict[str, Package]:
    """Every package installed in the tree, by name."""
    text = (root / "var/lib/dpkg/status").read_text()
    out = {}
    for stanza in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "installed" not in fields.get("Status", "").split():
            continue
        depends = _names(fields.get("Pre-Depends", "")) + _names(fields.get("Depends", ""))
        provides = tuple(alt for group in _names(fields.get("Provides", "")) for alt in group)
        out[fields["Package"]] = Package(
            fields["Package"], stanza.strip() + "\n", tuple(depends), provides
        )
    return out


def closure(pkgs: dict[str, Package], wanted: Iterable[str]) -> list[str]:
    """``wanted`` and everything they depend on (the installed alternative of each group,
    a virtual name through its provider), minus :data:`NOT_IN_IMAGE`; sorted."""
    providers: dict[str, str] = {}
    for p in sorted(pkgs.values(), key=lambda p: p.name):
        for v in p.provides:
            providers.setdefault(v, p.name)
    seen: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_IN_IMAGE:
            continue
        seen.add(name)
        for group in pkgs[name].depends:
            real = [providers.get(a, a) for a in group]
            chosen = next((a for a in real if a in pkgs), None)
            if chosen is None:
                raise SystemExit(f"image: {name} needs one of {group}, none installed")
            todo.append(chosen)
    return sorted(seen)


def package_paths(root: Path, name: str) -> list[str]:
    """The paths dpkg installed for ``name`` (its .list file), without the leading /."""
    info = root / "var/lib/dpkg/info"
    for f in (info / f"{name}.list", *sorted(info.glob(f"{name}:*.list"))):
        if f.exists():
            lines = f.read_text().splitlines()
            return [p.lstrip("/") for p in lines if p.strip("/.")]
    raise SystemExit(f"image: no file list for {name} in {info}")


def canonical(root: Path, rel: str) -> str:
    """``rel`` with its directories resolved inside ``root`` (merged /usr: lib/x -> usr/lib/x);
    the last component is kept as is (a symlink stays a symlink)."""
    parent, _, leaf = rel.rpartition("/")
    real = Path(os.path.realpath(root / parent)) if parent else root
    try:
        where = real.relative_to(root).as_posix()
    except ValueError:
        raise SystemExit(f"image: {rel} leads out of {root}") from None
    return leaf if where == "." else f"{where}/{leaf}"


def python_version(root: Path) -> str:
    """The CPython minor version the tree's /usr/bin/python3 is ("3.11")."""
    target = os.readlink(root / "usr/bin/python3")
    m = re.fullmatch(r"python(3\.\d+)", target)
    if not m:
        raise SystemExit(f"image: /usr/bin/python3 -> {target}: not a python3.X")
    return m.group(1)


# --- layers ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tar entry of a layer: from a file of a tree (``source``) or generated (``data``)."""

    path: str  # inside the image, no leading /
    kind: bytes  # tarfile.DIRTYPE / REGTYPE / SYMTYPE
    mode: int
    source: Optional[Path] = None
    data: Optional[bytes] = None
    link: str = ""
    owner: int = 0


def from_tree(root: Path, rel: str) -> Entry:
    """The entry for ``root/rel`` as it is on disk (a directory, a file or a symlink)."""
    p = root / rel
    st = p.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return Entry(rel, tarfile.SYMTYPE, 0o777, link=os.readlink(p))
    if stat.S_ISDIR(st.st_mode):
        return Entry(rel, tarfile.DIRTYPE, mode)
    if stat.S_ISREG(st.st_mode):
        return Entry(rel, tarfile.REGTYPE, mode, source=p)
    raise SystemExit(f"image: {p}: neither a file, a directory nor a symlink")


def generated(path: str, text: str, mode: int = 0o644) -> Entry:
    return Entry(path, tarfile.REGTYPE, mode, data=text.encode())


def with_parents(entries: dict[str, Entry]) -> dict[str, Entry]:
    """Every entry's parent directories too (0755, root's), where not already there."""
    out = dict(entries)
    for path in list(entries):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.setdefault("/".join(parts[:i]), Entry("/".join(parts[:i]), tarfile.DIRTYPE, 0o755))
    return out


def write_layer(entries: dict[str, Entry], out: IO[bytes], epoch: int) -> None:
    """A reproducible tar: sorted paths, one date, 0:0 unless said, no user or group names;
    a file whose source shares an inode with an earlier one becomes a hard link to it."""
    first: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            e = entries[path]
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = e.kind, e.mode, epoch
            info.uid = info.gid = e.owner
            info.uname = info.gname = ""
            if e.kind == tarfile.SYMTYPE:
                info.linkname = e.link
                tar.addfile(info)
            elif e.kind == tarfile.DIRTYPE:
                tar.addfile(info)
            elif e.source is not None:
                st = e.source.stat()
                ino = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and ino in first:
                    info.type, info.linkname = tarfile.LNKTYPE, first[ino]
                    tar.addfile(info)
                    continue
                first[ino] = path
                info.size = st.st_size
                with open(e.source, "rb") as f:
                    tar.addfile(info, f)
            else:
                data = e.data or b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def base_entries(root: Path, packages: list[str], pkgs: dict[str, Package]) -> dict[str, Entry]:
    """The base layer: the packages' files, the users, /tmp, and the packages' dpkg status."""
    entries: dict[str, Entry] = {}
    for name in packages:
        for rel in package_paths(root, name):
            path = canonical(root, rel)
            if DROPPED.match(path) or path in entries:
                continue
            if not os.path.lexists(root / path):
                continue  # a file a maintainer script or dpkg-divert moved away
            entries[path] = from_tree(root, path)
    for top in ("bin", "sbin", "lib", "lib64"):  # merged /usr: the top-level links
        if (root / top).is_symlink():
            entries[top] = from_tree(root, top)
    for path in ("etc/os-release", "usr/lib/os-release"):  # base-files': what scanners read
        if os.path.lexists(root / path):
            entries[path] = from_tree(root, path)
    entries["etc/passwd"] = generated(
        "etc/passwd",
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"nonroot:x:{USER}:{USER}:nonroot:/home/nonroot:/usr/sbin/nologin\n",
    )
    entries["etc/group"] = generated("etc/group", f"root:x:0:\nnonroot:x:{USER}:\n")
    entries["etc/nsswitch.conf"] = generated(
        "etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"
    )
    entries["home/nonroot"] = Entry("home/nonroot", tarfile.DIRTYPE, 0o700, owner=USER)
    entries["root"] = Entry("root", tarfile.DIRTYPE, 0o700)
    entries["tmp"] = Entry("tmp", tarfile.DIRTYPE, 0o1777)
    status = "\n".join(pkgs[name].stanza for name in packages)
    entries["var/lib/dpkg/status"] = generated("var/lib/dpkg/status", status)
    return with_parents(entries)


def app_entries(stage: Path) -> dict[str, Entry]:
    """The app layer: everything packaging/build.py staged (the bundle, the launcher)."""
    entries = {}
    for p in sorted(stage.rglob("*")):
        rel = p.relative_to(stage).as_posix()
        entries[rel] = from_tree(stage, rel)
    return with_parents(entries)


# --- the bundle -----------------------------------------------------------------------------


def wheels(cache: Path, work: Path, py: str) -> list[Path]:
    """The wheels packaging/lock/ pins for CPython ``py``, downloaded once per lock file."""
    arch = build.ARCHES["x86_64"]
    _, deps = build.project()
    lock = build.lock_path(py, arch)
    if not build.lock_is_current(py, arch, deps):
        raise SystemExit(f"image: {lock} does not match pyproject.toml: run `make lock`")
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    where = cache / "wheels" / f"{build.cp_tag(py)}-{digest}"
    if not (where / ".complete").exists():
        tmp = work / "wheels"
        args = ["--no-deps", "--require-hashes", "-r", str(lock)]
        build.pip_download(py, arch, tmp, args)
        shutil.rmtree(where, ignore_errors=True)
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp, where)
        (where / ".complete").write_text("")
    return sorted(where.glob("*.whl"))


def stage_app(stage: Path, py: str, whls: list[Path]) -> None:
    """/opt/nodeagent/lib for CPython ``py`` only, and /usr/bin/nodeagent (the launcher)."""
    _, deps = build.project()
    # With one CPython every wheel lands in cp3X (lib_dir_name's "some of them") and
    # nodeagent's own code in common: the launcher reads exactly those two.
    build.bundle(stage, {py: whls}, deps)
    build.write(stage / "usr/bin/nodeagent", (HERE / "launcher.py").read_text(), 0o755)
    for d in [stage, *stage.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)


# Run by the image's own python3 (the Debian tree's, through its own dynamic loader): import
# the controller's modules from the stage, then compile each loaded module's source to the
# .pyc the launcher's interpreter will look for in the image. Unchecked-hash .pycs (PEP 552):
# valid whatever the files' dates, no source read at import; the image never changes.
_PRECOMPILE = r"""
import importlib, importlib.util, os, py_compile, sys
root, stage, prefix, *modules = sys.argv[1:]
lib = stage + "/opt/nodeagent/lib/"
dirs = sorted(d for d in os.listdir(lib) if d != "common") + ["common"]  # the launcher's order
sys.path[:0] = [lib + d for d in dirs]
for name in modules:
    importlib.import_module(name)
sys.pycache_prefix = prefix
done = []
for name, module in sorted(sys.modules.items()):
    source = getattr(module, "__file__", None) or ""
    if not source.endswith(".py"):
        continue
    for tree in (stage, root):
        if source.startswith(tree + "/"):
            in_image = source[len(tree):]
            break
    else:
        continue
    cfile = stage + importlib.util.cache_from_source(in_image)
    py_compile.compile(source, cfile=cfile, dfile=in_image, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    done.append(in_image)
print(len(done))
"""


def precompile(root: Path, stage: Path) -> int:
    """Bytecode for the controller's import closure, into the stage under PYCACHE."""
    loader = root / "lib64/ld-linux-x86-64.so.2"
    libs = f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"
    python = root / "usr/bin/python3"
    cmd = [str(loader), "--library-path", libs, str(python.resolve()), "-S", "-s", "-B", "-c"]
    env = {"PYTHONHOME": f"{root}/usr", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [*cmd, _PRECOMPILE, str(root), str(stage), PYCACHE, *CONTROLLER_MODULES],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"image: compiling the controller's modules failed: {r.stderr[-2000:]}")
    for d in [stage, *stage.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    return int(r.stdout.split()[-1])


# --- the archive ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:<hex>"
    size: int
    path: Path

    @property
    def name(self) -> str:
        return "blobs/sha256/" + self.digest.split(":", 1)[1]


def put_blob(blobs: Path, data_path: Path) -> Blob:
    h = hashlib.sha256()
    with open(data_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    target = blobs / h.hexdigest()
    data_path.replace(target)
    return Blob(f"sha256:{h.hexdigest()}", target.stat().st_size, target)


def put_json(blobs: Path, doc: object) -> Blob:
    data = canonical_json(doc)
    h = hashlib.sha256(data).hexdigest()
    (blobs / h).write_bytes(data)
    return Blob(f"sha256:{h}", len(data), blobs / h)


def canonical_json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class _Tee(io.RawIOBase):
    """A write-only stream that hashes what passes into a gzip stream (the diff_id)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.sha = hashlib.sha256()
        self.out = out
        self.written = 0

    def tell(self) -> int:  # tarfile asks where it starts
        return self.written

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.out.write(b)
        self.written += len(b)
        return len(b)


def layer(blobs: Path, entries: dict[str, Entry], epoch: int) -> tuple[Blob, str]:
    """Write a gzipped layer blob; its digest and the diff_id (the uncompressed tar's)."""
    tmp = blobs / ".layer.tmp"
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz,
    ):
        tee = _Tee(gz)  # type: ignore[arg-type]
        write_layer(entries, tee, epoch)  # type: ignore[arg-type]
    return put_blob(blobs, tmp), f"sha256:{tee.sha.hexdigest()}"


def full_name(tag: str) -> str:
    """docker's normalisation: nodeagent:0.1.0 -> docker.io/library/nodeagent:0.1.0."""
    name = tag
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = "docker.io/library/" + name
    elif "." not in first and ":" not in first and first != "localhost":
        name = "docker.io/" + name
    return name


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclasses.dataclass(frozen=True)
class Built:
    """What a build made: the archive and the digests an operator checks."""

    path: Path
    tag: str
    manifest_digest: str  # what a registry shows after `skopeo copy oci-archive:…`
    image_id: str  # the config's digest: what `docker images --no-trunc` shows
    layers: tuple[int, ...]  # compressed sizes


def assemble(
    out: Path, tag: str, version: str, epoch: int, layers: list[tuple[Blob, str, str]], tmp: Path
) -> Built:
    """The OCI layout + docker-archive tar from layer blobs (blob, diff_id, what made it)."""
    blobs = tmp / "blobs"
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": iso(epoch),
        "config": {
            "User": f"{USER}:{USER}",
            "Entrypoint": ENTRYPOINT,
            "Cmd": CMD,
            "Env": [PATH_ENV],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "nodeagent",
                "org.opencontainers.image.description": "nodeagent controller "
                "(deploy/controller.yaml)",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff for _, diff, _ in layers]},
        "history": [{"created": iso(epoch), "created_by": why} for _, _, why in layers],
    }
    cfg = put_json(blobs, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cfg.digest, "size": cfg.size},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b, _, _ in layers
        ],
    }
    man = put_json(blobs, manifest)
    ref = tag.rsplit(":", 1)[1] if ":" in tag.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": man.digest,
                "size": man.size,
                "annotations": {
                    "io.containerd.image.name": full_name(tag),
                    "org.opencontainers.image.ref.name": ref,
                },
            }
        ],
    }
    docker_manifest = [
        {"Config": cfg.name, "RepoTags": [tag], "Layers": [b.name for b, _, _ in layers]}
    ]
    files: dict[str, Entry] = {
        "oci-layout": Entry(
            "oci-layout", tarfile.REGTYPE, 0o644, data=b'{"imageLayoutVersion":"1.0.0"}'
        ),
        "index.json": Entry("index.json", tarfile.REGTYPE, 0o644, data=canonical_json(index)),
        "manifest.json": Entry(
            "manifest.json", tarfile.REGTYPE, 0o644, data=canonical_json(docker_manifest)
        ),
    }
    for b in [cfg, man, *(b for b, _, _ in layers)]:
        files[b.name] = Entry(b.name, tarfile.REGTYPE, 0o644, source=b.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with open(partial, "wb") as f:
        write_layer(with_parents(files), f, epoch)
    partial.replace(out)
    return Built(out, tag, man.digest, cfg.digest, tuple(b.size for b, _, _ in layers))


def build_image(out: Path, tag: Optional[str], cache: Path, work: Path) -> Built:
    version, _ = build.project()
    tag = tag or f"nodeagent:{version}"
    epoch = build.source_epoch()
    root = rootfs(cache)
    pkgs = installed(root)
    chosen = closure(pkgs, ROOTFS_PACKAGES)
    py = python_version(root)
    log(f"base: Debian {SUITE}'s python{py}, {len(chosen)} packages: {' '.join(chosen)}")
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage_app(stage, py, wheels(cache, work, py))
    log(f"compiled {precompile(root, stage)} modules the controller imports")
    tmp = work / "oci"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "blobs").mkdir(parents=True)
    # The base layer is dated 1970 whatever the commit: its digest then depends on Debian's
    # packages only, so a registry keeps one copy across nodeagent releases.
    base, base_diff = layer(tmp / "blobs", base_entries(root, chosen, pkgs), BASE_EPOCH)
    app, app_diff = layer(tmp / "blobs", app_entries(stage), epoch)
    layers = [
        (base, base_diff, f"packaging/image.py: Debian {SUITE} python3 ({len(chosen)} packages)"),
        (app, app_diff, f"packaging/image.py: nodeagent {version} bundle for CPython {py}"),
    ]
    built = assemble(out, tag, version, epoch, layers, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    return built


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dist", type=Path, default=build.REPO / "dist", help="where the archive goes")
    p.add_argument("--out", type=Path, help="the archive (default: DIST/nodeagent-image-VER.tar)")
    p.add_argument("--tag", help="the image's name (default: nodeagent:VERSION)")
    p.add_argument("--cache", type=Path, default=CACHE, help="the rootfs and wheel cache")
    p.add_argument("--work", type=Path, help="scratch directory (default: a temp)")
    a = p.parse_args(argv)
    reason = why_not()
    if reason:
        print(f"image: cannot build here: {reason}", file=sys.stderr)
        return 1
    version, _ = build.project()
    out = (a.out or a.dist / f"nodeagent-image-{version}.tar").resolve()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nodeagent-image-") as scratch:
        work = (a.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        built = build_image(out, a.tag, a.cache.resolve(), work)
    mib = built.path.stat().st_size / 2**20
    log(f"built in {time.monotonic() - start:.1f} s")
    print(f"{built.path}: {built.tag} {built.manifest_digest} ({mib:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
