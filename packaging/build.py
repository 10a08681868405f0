"""Build nodeagent's .deb and .rpm with every Python library bundled (docs/packaging.md).

    python packaging/build.py [--dist DIR] [--work DIR] [--locked] [--only deb|rpm]
                              [--arch x86_64|aarch64 ...]
    python packaging/build.py lock [--arch ...]   # re-pin the bundled libraries (packaging/lock/)

``make packages`` and ``make lock`` run these with the project's .venv. The build downloads, for
each architecture in ARCHES (all unless --arch names some), manylinux wheels for CPython
3.9 ... 3.13 with pip (network at build time only) and unpacks
each once under /opt/nodeagent/lib: into common when every version uses that very file, into
cp3X when one does (the compiled ones: pydantic-core, PyYAML, ...), into e.g.
cp310+cp311+cp312+cp313 when several do. It adds the launcher /usr/bin/nodeagent, the systemd
units, a commented default config, docs and the maintainer scripts, and packs the tree with
dpkg-deb and rpmbuild.
"""

from __future__ import annotations

import argparse
import dataclasses
import email.parser
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "packaging"
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
PREFIX = "opt/nodeagent"
MAINT_MARKER = "# --- main "
DEFAULT_MAINTAINER = "nodeagent maintainers <nodeagent-maintainers@example.com>"
DESCRIPTION = """\
nodeagent detects the NVIDIA GPUs through NVML, adds the nvidia runtime to
docker or containerd safely, writes the kubelet's GPU labels and startup
taint, and keeps the Node's GPUReady condition current.
.
Every Python library it needs is bundled under /opt/nodeagent (the compiled
ones for each of CPython 3.9 to 3.13): it needs only the host's python3."""


@dataclasses.dataclass(frozen=True)
class Arch:
    rpm: str  # x86_64 (also the uname -m and the wheel platform suffix)
    deb: str  # amd64
    strip: str = "strip"  # a strip that reads this architecture's ELF files

    @property
    def platforms(self) -> list[str]:
        # glibc 2.17 (manylinux2014) and older wheels: every supported distribution has more.
        return [f"manylinux2014_{self.rpm}", f"manylinux_2_17_{self.rpm}"]


# Every architecture `make packages` builds. GNU strip reads only its own architecture's
# objects, so aarch64's are stripped by Debian's binutils-aarch64-linux-gnu.
ARCHES = {
    "x86_64": Arch(rpm="x86_64", deb="amd64"),
    "aarch64": Arch(rpm="aarch64", deb="arm64", strip="aarch64-linux-gnu-strip"),
}


def log(msg: str) -> None:
    print(f"build: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, text=True, **kw)


def cp_tag(py: str) -> str:
    return "cp" + py.replace(".", "")


# --- the project ----------------------------------------------------------------------------


def project() -> tuple[str, list[str]]:
    """pyproject.toml's version and runtime dependencies."""
    import tomlkit  # a runtime dependency of nodeagent, so in its venv

    doc = tomlkit.parse((REPO / "pyproject.toml").read_text())
    proj: Any = doc["project"]
    return str(proj["version"]), [str(d) for d in proj["dependencies"]]


def source_epoch() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time (reproducible dates), else now."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return int(out)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return int(time.time())


# --- wheels ---------------------------------------------------------------------------------


def lock_path(py: str, arch: Arch) -> Path:
    return HERE / "lock" / f"{cp_tag(py)}-{arch.rpm}.txt"


def deps_line(deps: list[str]) -> str:
    return "# dependencies: " + "; ".join(sorted(deps))


def lock_is_current(py: str, arch: Arch, deps: list[str]) -> bool:
    path = lock_path(py, arch)
    return path.is_file() and deps_line(deps) in path.read_text().splitlines()


def pip_download(py: str, arch: Arch, dest: Path, args: list[str]) -> list[Path]:
    """Download wheels for CPython ``py`` on ``arch`` into the empty directory ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", "--implementation", "cp", "--python-version", py]
    cmd += ["--abi", cp_tag(py)]
    for p in arch.platforms:
        cmd += ["--platform", p]
    run([*cmd, "--dest", str(dest), *args])
    wheels = sorted(dest.glob("*.whl"))
    if not wheels or len(wheels) != len(list(dest.iterdir())):
        raise SystemExit(f"build: pip left something other than wheels in {dest}")
    return wheels


def wheel_name_version(whl: Path) -> tuple[str, str]:
    name, version = whl.name.split("-")[:2]
    return canonical(name), version


def resolve(
    py: str, arch: Arch, dest: Path, deps: list[str], constraints: tuple[str, ...] = ()
) -> list[Path]:
    """pip download with resolution, for CPython ``py`` (``constraints``: pip -c args).

    pip evaluates the environment markers of dependencies (``typing-extensions;
    python_version < "3.11"``) for the interpreter running it, not for --python-version, so
    whatever the target version needs beyond that is added and resolved again.
    """
    extra: list[str] = []
    for _ in range(5):
        wheels = pip_download(py, arch, dest, [*deps, *extra, *constraints])
        missing = sorted(missing_requirements(wheels, deps, py, arch))
        if not missing:
            return wheels
        log(f"CPython {py} also needs {', '.join(missing)} (markers pip judged for itself)")
        extra += missing
    raise SystemExit(f"build: cannot resolve a complete set for CPython {py}")


def pinned(py: str, arch: Arch) -> list[str]:
    """The ``name==version`` lines of a lock file, without their hashes."""
    return re.findall(r"^([A-Za-z0-9._-]+==\S+)", lock_path(py, arch).read_text(), re.M)


def lock(work: Path, arch: Arch) -> None:
    """Resolve the dependencies for every CPython and pin them, with hashes, in lock/.

    Every architecture but the first in ARCHES gets the versions the first one's current
    lock pins (its files and hashes are its own): the packages of one release bundle the
    same libraries everywhere. Lock the first one first after a dependency change.
    """
    _, deps = project()
    reference = next(iter(ARCHES.values()))
    for py in PYTHONS:
        constraints: tuple[str, ...] = ()
        if arch != reference and lock_is_current(py, reference, deps):
            pins = work / "lock" / f"{cp_tag(py)}-constraints.txt"
            write(pins, "\n".join(pinned(py, reference)) + "\n")
            constraints = ("-c", str(pins))
        wheels = resolve(py, arch, work / "lock" / cp_tag(py), deps, constraints)
        lines = [
            f"# The Python libraries bundled in nodeagent's packages for CPython {py} on "
            f"{arch.rpm}.",
            "# Generated by `make lock` (packaging/build.py lock) from pyproject.toml's",
            "# dependencies; `make packages` downloads exactly these files (pip --require-hashes).",
            deps_line(deps),
        ]
        for whl in wheels:
            name, ver = wheel_name_version(whl)
            digest = hashlib.sha256(whl.read_bytes()).hexdigest()
            lines.append(f"{name}=={ver} \\\n    --hash=sha256:{digest}")
        lock_path(py, arch).parent.mkdir(parents=True, exist_ok=True)
        lock_path(py, arch).write_text("\n".join(lines) + "\n")
        log(f"wrote {lock_path(py, arch).relative_to(REPO)} ({len(wheels)} wheels)")


def download_all(work: Path, arch: Arch, deps: list[str], locked: bool) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for py in PYTHONS:
        dest = work / "wheels" / cp_tag(py)
        if lock_is_current(py, arch, deps):
            args = ["--no-deps", "--require-hashes", "-r", str(lock_path(py, arch))]
        elif locked:
            raise SystemExit(
                f"build: {lock_path(py, arch).relative_to(REPO)} is missing or does not match "
                "pyproject.toml's dependencies: run `make lock`"
            )
        else:
            log(
                f"warning: {lock_path(py, arch).relative_to(REPO)} is stale or missing: "
                "resolving the newest versions (`make lock` pins them)"
            )
            out[py] = resolve(py, arch, dest, deps)
            continue
        out[py] = pip_download(py, arch, dest, args)
    return out


# What nodeagent never imports, left out of the bundle. kubernetes >= 36 carries a second,
# asyncio API client (kubernetes/aio: 41 MB of generated code) and requires aiohttp for it;
# nodeagent uses only the synchronous kubernetes.client and kubernetes.config. So the bundle
# has no kubernetes/aio, and kubernetes' requirements on aiohttp are cut: every distribution
# then unreachable from pyproject.toml's dependencies (aiohttp, yarl, multidict, ...) is left
# out. tests/test_packages.py imports every bundled module under every CPython.
PRUNE_PATHS = ("kubernetes/aio/",)
CUT_REQUIREMENTS = {"kubernetes": {"aiohttp", "aiohttp-retry"}}
# kubernetes >= 37 generates kubernetes.client with lazy imports (a module __getattr__ in
# client/__init__.py, api/__init__.py and models/__init__.py): the per-API-group modules and
# the ~850 model classes load only when used, and nodeagent uses none of them (it calls its
# five endpoints on ApiClient: nodeagent/kube/client.py, _Core). Their packages' __init__
# files stay; the rest is 33 MiB and ~900 files less to unpack at every install
# (docs/benchmarks.md, "Boot"). An older, eagerly importing client keeps everything.
LAZY_PRUNE_PATHS = ("kubernetes/client/api/", "kubernetes/client/models/")


def lazy_kubernetes_client(z: zipfile.ZipFile) -> bool:
    """Whether this wheel's kubernetes.client imports its API and model modules lazily."""
    try:
        text = z.read("kubernetes/client/__init__.py").decode("utf-8", errors="replace")
    except KeyError:
        return False
    return "def __getattr__" in text


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_environment(py: str, arch: Arch) -> dict[str, str]:
    """What environment markers see on the target: CPython ``py`` on Linux ``arch``."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{py}.0",
        "os_name": "posix",
        "platform_machine": arch.rpm,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "python_full_version": f"{py}.0",
        "python_version": py,
        "sys_platform": "linux",
        "extra": "",
    }


def wheel_requires(whl: Path, py: str, arch: Arch) -> tuple[str, set[str]]:
    """A wheel's distribution name and what it requires on CPython ``py`` on ``arch``
    (no extras)."""
    from packaging.requirements import Requirement  # pip's own dependency, in every venv

    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.HeaderParser().parsestr(z.read(meta).decode("utf-8"))
    name = canonical(msg["Name"])
    env = marker_environment(py, arch)
    needs = set()
    for line in msg.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            needs.add(canonical(req.name))
    return name, needs


def requirement_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not m:
        raise SystemExit(f"build: cannot read the requirement {req!r}")
    return canonical(m.group(1))


def walk(
    wheels: list[Path], deps: list[str], py: str, arch: Arch, cut: bool
) -> tuple[set[str], set[str]]:
    """The distributions reachable from ``deps`` on CPython ``py`` on ``arch`` (with
    CUT_REQUIREMENTS applied when ``cut``), and the required ones not among ``wheels``."""
    graph = {}
    for whl in wheels:
        name, needs = wheel_requires(whl, py, arch)
        graph[name] = needs - CUT_REQUIREMENTS.get(name, set()) if cut else needs
    todo = [requirement_name(d) for d in deps]
    seen: set[str] = set()
    missing: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in graph:
            missing.add(name)
            continue
        todo.extend(graph[name])
    return seen - missing, missing


def missing_requirements(wheels: list[Path], deps: list[str], py: str, arch: Arch) -> set[str]:
    return walk(wheels, deps, py, arch, cut=False)[1]


def needed(wheels: list[Path], deps: list[str], py: str, arch: Arch) -> list[Path]:
    """The wheels reachable from nodeagent's dependencies (after CUT_REQUIREMENTS)."""
    reachable, missing = walk(wheels, deps, py, arch, cut=True)
    if missing:
        raise SystemExit(
            f"build: CPython {py} needs {sorted(missing)}, which packaging/lock/ lacks: "
            "run `make lock`"
        )
    by_name = {canonical(wheel_name_version(w)[0]): w for w in wheels}
    dropped = sorted(set(by_name) - reachable)
    if dropped:
        log(f"left out for CPython {py} (never imported): {', '.join(dropped)}")
    return [by_name[n] for n in sorted(reachable)]


def unpack_wheel(whl: Path, dest: Path) -> None:
    """Install a wheel's importable files into ``dest`` like pip --target, minus scripts."""
    with zipfile.ZipFile(whl) as z:
        lazy = lazy_kubernetes_client(z)
        for info in z.infolist():
            if info.is_dir():
                continue
            parts = info.filename.split("/")
            if ".." in parts or info.filename.startswith("/"):
                raise SystemExit(f"build: {whl.name}: unsafe path {info.filename}")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue  # scripts, headers, data files: nothing nodeagent imports
                parts = parts[2:]
            path = "/".join(parts)
            if path.startswith(PRUNE_PATHS):
                continue
            if lazy and path.startswith(LAZY_PRUNE_PATHS) and parts[-1] != "__init__.py":
                continue
            target = dest.joinpath(*parts)
            if target.exists():
                raise SystemExit(f"build: {whl.name}: {target} is already in the bundle")
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            target.chmod(0o644)


def lib_dir_name(pythons: list[str]) -> str:
    """The lib/ directory of a wheel used by these CPythons: common (all), cp311 (one),
    cp310+cp311+cp312+cp313 (some). /usr/bin/nodeagent reads the same names."""
    if len(pythons) == len(PYTHONS):
        return "common"
    return "+".join(cp_tag(py) for py in pythons)


def bundle(
    stage: Path, wheels: dict[str, list[Path]], deps: list[str], arch: Arch = ARCHES["x86_64"]
) -> None:
    """Unpack each wheel once, into the lib/ directory of the CPythons that use that file."""
    lib = stage / PREFIX / "lib"
    use = {py: needed(ws, deps, py, arch) for py, ws in wheels.items()}
    users: dict[str, list[str]] = {}
    files: dict[str, Path] = {}
    for py, ws in use.items():
        (lib / cp_tag(py)).mkdir(parents=True)  # the launcher's list of supported versions
        for whl in ws:
            users.setdefault(whl.name, []).append(py)
            files[whl.name] = whl
    for name, pythons in sorted(users.items()):
        unpack_wheel(files[name], lib / lib_dir_name(pythons))
    common = lib / "common"
    for src in sorted((REPO / "nodeagent").rglob("*")):
        if "__pycache__" in src.parts or src.suffix == ".pyc" or src.is_dir():
            continue
        target = common / src.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        target.chmod(0o644)
    for d in [lib, *lib.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    bad = [p.name for p in lib.glob("*/*") if p.name in ("pip", "setuptools", "wheel")]
    if bad:
        raise SystemExit(f"build: the bundle must not contain {bad}")
    strip(lib, arch)


def strip(lib: Path, arch: Arch) -> None:
    """Strip the extension modules some wheels ship unstripped, as dh_strip and rpm's
    brp-strip would (their dynamic symbols stay: they load the same, only smaller)."""
    objects = []
    for p in sorted(lib.rglob("*.so*")):
        with open(p, "rb") as f:
            if f.read(4) == b"\x7fELF":
                objects.append(str(p))
    if objects:
        flags = ["--strip-unneeded", "--remove-section=.comment", "--remove-section=.note"]
        run([arch.strip, *flags, *objects])


@dataclasses.dataclass(frozen=True)
class Dist:
    where: str
    name: str
    version: str
    license: str  # as its metadata says it
    spdx: list[str]  # the SPDX identifiers that covers


# Licence names in older metadata (License: or the classifiers) -> SPDX identifiers.
SPDX = {
    "apache 2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "bsd": "BSD-3-Clause",
    "bsd license": "BSD-3-Clause",
    "isc": "ISC",
    "isc license (iscl)": "ISC",
    "mit": "MIT",
    "mit license": "MIT",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "python software foundation license": "PSF-2.0",
}


def license_of(msg: Any) -> tuple[str, list[str]]:
    expression = (msg.get("License-Expression") or "").strip()
    if expression:
        ids = re.split(r"\s+(?:AND|OR|WITH)\s+|[()]", expression)
        return expression, sorted({i.strip() for i in ids if i.strip()})
    classifiers = msg.get_all("Classifier") or []
    names = [c.split(" :: ")[-1] for c in classifiers if c.startswith("License")]
    first = (msg.get("License") or "").strip().splitlines()
    # A short License: field that names a known licence is more precise than the classifiers
    # ("ISC" beside "BSD License"); a long one is the licence's whole text.
    if first and (first[0] in SPDX.values() or first[0].lower() in SPDX or not names):
        names = [first[0]] if len(first[0]) < 60 else names

    def spdx(name: str) -> str:
        if name in SPDX.values():
            return name  # already an identifier
        return SPDX.get(name.lower(), "LicenseRef-" + re.sub(r"[^A-Za-z0-9.]+", "-", name))

    ids = sorted({spdx(n) for n in names})
    return " / ".join(names) or "(see its dist-info)", ids or ["LicenseRef-unknown"]


def bundled_dists(stage: Path) -> list[Dist]:
    out = []
    for meta in sorted((stage / PREFIX / "lib").glob("*/*.dist-info/METADATA")):
        msg = email.parser.HeaderParser().parsestr(meta.read_text(encoding="utf-8"))
        text, ids = license_of(msg)
        out.append(Dist(meta.parent.parent.name, msg["Name"], msg["Version"], text, ids))
    return out


# --- generated files ------------------------------------------------------------------------


def default_config() -> str:
    """/etc/nodeagent/config.yaml: docs/configuration.md's YAML block, every line commented."""
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    m = re.search(r"^```yaml\n(.*?)^```", doc, re.S | re.M)
    if not m:
        raise SystemExit("build: docs/configuration.md has no ```yaml block")
    lines = m.group(1).splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)  # the block's own title comment
    head = [
        "# /etc/nodeagent/config.yaml: nodeagent's configuration.",
        "#",
        "# Every key is shown below, commented out, with its default value. A key that is",
        "# absent (or commented out) has its default, so this file as shipped changes nothing.",
        "# To change a setting, uncomment its line (and its parent section's line) and edit",
        "# the value. Every key is explained in",
        "# /usr/share/doc/nodeagent/docs/configuration.md. The file is validated as a whole",
        "# when nodeagent starts: a mistake stops it with exit code 2 and FILE:LINE.",
        "#",
        "# The package manager keeps your edits on upgrade (a dpkg conffile / an RPM",
        "# %config(noreplace) file).",
        "",
    ]
    body = ["#" + line if line.strip() else "#" for line in lines]
    text = "\n".join([*head, *body]) + "\n"
    sys.path.insert(0, str(REPO))
    from nodeagent.config import Config, parse

    # As shipped it must be the defaults; uncommented it must still be a valid config (an
    # InputError stops the build) and should be the defaults too (tests/test_packages.py).
    if parse(text, "config.yaml") != Config():
        raise SystemExit("build: the generated config.yaml is not all comments")
    if parse("\n".join(line[1:] for line in body), "config.yaml uncommented") != Config():
        log("warning: docs/configuration.md's YAML block differs from the real defaults")
    return text


def manpage(version: str) -> str:
    """nodeagent(1) from the argparse parser itself, so it never drifts from the CLI."""
    sys.path.insert(0, str(REPO))
    os.environ["COLUMNS"] = "80"
    from nodeagent.cli.main import build_parser

    def esc(text: str) -> str:
        out = []
        for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
            out.append("\\&" + line if line.startswith((".", "'")) else line)
        return "\n".join(out)

    def sections(parser: argparse.ArgumentParser, name: str) -> list[str]:
        out = [f".SS {name}", ".nf", esc(parser.format_help().rstrip()), ".fi"]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    out += sections(subparser, f"{name} {sub}")
        return out

    parser = build_parser()
    body = [
        f'.TH NODEAGENT 1 "" "nodeagent {version}" "User Commands"',
        ".SH NAME",
        "nodeagent \\- bootstrap and report NVIDIA GPU nodes for Kubernetes",
        ".SH SYNOPSIS",
        ".B nodeagent",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
        ".SH DESCRIPTION",
        esc(parser.description or ""),
        "Each command's options follow, as \\fBnodeagent\\fR \\fICOMMAND\\fR \\fB\\-\\-help\\fR"
        " prints them.",
        ".SH COMMANDS",
        *sections(parser, "nodeagent"),
        ".SH EXIT STATUS",
        "0 ok, 1 a step failed, 2 bad input or configuration, 3 no NVIDIA driver or no GPU.",
        ".SH FILES",
        ".TP",
        ".I /etc/nodeagent/config.yaml",
        "the configuration (every key commented out with its default)",
        ".TP",
        ".I /var/lib/nodeagent/backups",
        "a copy of every file nodeagent changed, taken before the change",
        ".SH SEE ALSO",
        "/usr/share/doc/nodeagent/README.md and /usr/share/doc/nodeagent/docs/.",
    ]
    return "\n".join(body) + "\n"


def copyright_text(dists: list[Dist], epoch: int) -> str:
    rows = [f"  {d.where}: {d.name} {d.version}: {d.license}" for d in dists]
    year = time.gmtime(epoch).tm_year
    return (
        "nodeagent: turns a Linux VM with NVIDIA GPUs into a Kubernetes node.\n"
        "\n"
        f"Copyright: {year} the nodeagent authors.\n"
        "License: Apache-2.0\n"
        "  On Debian systems the full text of the Apache License 2.0 is in\n"
        "  /usr/share/common-licenses/Apache-2.0; elsewhere see\n"
        "  https://www.apache.org/licenses/LICENSE-2.0\n"
        "\n"
        "Bundled third-party Python libraries, under /opt/nodeagent/lib/<dir>/ (dir: common\n"
        "for every CPython, cp311 for one, cp310+cp311 for those listed). Each one's\n"
        "license text is in its <name>-<version>.dist-info directory there.\n"
        "\n" + "\n".join(rows) + "\n"
    )


def gzip_bytes(data: bytes) -> bytes:
    """gzip -9n: no name, no timestamp (reproducible)."""
    import io

    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def maint_library(units: list[str]) -> str:
    """packaging/scripts/nodeagent-maint minus its shebang and its main, to embed."""
    text = (HERE / "scripts" / "nodeagent-maint").read_text()
    body = text.split(MAINT_MARKER, 1)[0]
    body = body.split("\n", 1)[1] if body.startswith("#!") else body
    return body.replace("@UNITS@", " ".join(units)).rstrip() + "\n"


def write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    path.chmod(mode)


# --- the tree both packages share -----------------------------------------------------------


@dataclasses.dataclass
class Inputs:
    version: str
    arch: Arch
    units: list[Path]
    cloud_init: list[Path]
    epoch: int
    maintainer: str


def stage_common(
    stage: Path, inp: Inputs, wheels: dict[str, list[Path]], deps: list[str]
) -> list[Dist]:
    bundle(stage, wheels, deps, inp.arch)
    unit_names = [u.name for u in inp.units]
    write(stage / "usr/bin/nodeagent", (HERE / "launcher.py").read_text(), 0o755)
    maint = (HERE / "scripts" / "nodeagent-maint").read_text()
    maint = maint.replace("@UNITS@", " ".join(unit_names))
    write(stage / PREFIX / "libexec/nodeagent-maint", maint, 0o755)
    write(stage / "etc/nodeagent/config.yaml", default_config())
    doc = stage / "usr/share/doc/nodeagent"
    write(doc / "README.md", (REPO / "README.md").read_bytes())
    for md in sorted((REPO / "docs").glob("*.md")):
        write(doc / "docs" / md.name, md.read_bytes())
    for example in inp.cloud_init:
        write(doc / "cloud-init" / example.name, example.read_bytes())
    if (REPO / "deploy").is_dir():
        for manifest in sorted((REPO / "deploy").glob("*.yaml")):
            write(doc / "deploy" / manifest.name, manifest.read_bytes())
    write(stage / "usr/share/man/man1/nodeagent.1.gz", gzip_bytes(manpage(inp.version).encode()))
    for d in [stage, *stage.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    return bundled_dists(stage)


# --- .deb -----------------------------------------------------------------------------------


def installed_size_kib(root: Path) -> int:
    total = 0
    for p in root.rglob("*"):
        if "DEBIAN" in p.relative_to(root).parts[:1]:
            continue
        total += 1 if p.is_dir() or p.is_symlink() else -(-p.stat().st_size // 1024)
    return total


def build_deb(stage: Path, work: Path, dist: Path, inp: Inputs, dists: list[Dist]) -> Path:
    root = work / "deb"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(stage, root, symlinks=True)
    for unit in inp.units:
        write(root / "lib/systemd/system" / unit.name, unit.read_bytes())
    doc = root / "usr/share/doc/nodeagent"
    write(doc / "copyright", copyright_text(dists, inp.epoch))
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(inp.epoch))
    changelog = (
        f"nodeagent ({inp.version}) unstable; urgency=medium\n\n"
        f"  * nodeagent {inp.version}, built from its repository by `make packages`.\n\n"
        f" -- {inp.maintainer}  {date}\n"
    )
    # A version without a Debian revision makes this a native package: changelog.gz.
    write(doc / "changelog.gz", gzip_bytes(changelog.encode()))
    write(
        root / "usr/share/lintian/overrides/nodeagent",
        (HERE / "debian" / "lintian-overrides").read_bytes(),
    )
    conffiles = ["/etc/nodeagent/config.yaml"]
    md5 = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and "/" + rel not in conffiles:
            md5.append(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {rel}")
    control = (
        "Package: nodeagent\n"
        f"Version: {inp.version}\n"
        f"Architecture: {inp.arch.deb}\n"
        f"Maintainer: {inp.maintainer}\n"
        f"Installed-Size: {installed_size_kib(root)}\n"
        # The bundled compiled libraries are manylinux2014 wheels: glibc >= 2.17.
        "Depends: python3 (>= 3.9), libc6 (>= 2.17)\n"
        "Section: admin\n"
        "Priority: optional\n"
        "Homepage: https://github.com/nodeagent/nodeagent\n"
        "Description: turn a Linux VM with NVIDIA GPUs into a Kubernetes node\n"
        + "".join(f" {line}\n" for line in DESCRIPTION.splitlines())
    )
    debian = root / "DEBIAN"
    write(debian / "control", control)
    write(debian / "conffiles", "\n".join(conffiles) + "\n")
    write(debian / "md5sums", "\n".join(md5) + "\n")
    library = maint_library([u.name for u in inp.units])
    for script in ("postinst", "prerm", "postrm"):
        template = (HERE / "debian" / script).read_text()
        write(debian / script, template.replace("#@NODEAGENT_MAINT@\n", library), 0o755)
    debian.chmod(0o755)
    out = dist / f"nodeagent_{inp.version}_{inp.arch.deb}.deb"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(inp.epoch)}
    run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out)], env=env)
    return out


# --- .rpm -----------------------------------------------------------------------------------


def rpm_license(dists: list[Dist]) -> str:
    """nodeagent's license AND every bundled library's, as SPDX identifiers."""
    unknown = sorted({i for d in dists for i in d.spdx if i.startswith("LicenseRef-")})
    if unknown:
        log(f"warning: licences with no SPDX identifier (add them to SPDX): {unknown}")
    return " AND ".join(sorted({"Apache-2.0", *(i for d in dists for i in d.spdx)}))


def build_rpm(stage: Path, work: Path, dist: Path, inp: Inputs, dists: list[Dist]) -> Path:
    top = work / "rpm"
    if top.exists():
        shutil.rmtree(top)
    for d in ("BUILD", "RPMS", "SPECS", "SOURCES", "SRPMS", "BUILDROOT"):
        (top / d).mkdir(parents=True)
    units = top / "SOURCES" / "units"
    for unit in inp.units:
        write(units / unit.name, unit.read_bytes())
    write(stage.parent / "rpm-license" / "copyright", copyright_text(dists, inp.epoch))
    library = maint_library([u.name for u in inp.units]).replace("%", "%%")
    date = time.strftime("%a %b %d %Y", time.gmtime(inp.epoch))
    spec = (HERE / "rpm" / "nodeagent.spec.in").read_text()
    for key, value in {
        "@VERSION@": inp.version,
        "@LICENSE@": rpm_license(dists),
        "@STAGE@": str(stage),
        "@UNITS_DIR@": str(units),
        "@LICENSE_FILE@": str(stage.parent / "rpm-license" / "copyright"),
        "@UNIT_FILES@": "\n".join("%{_unitdir}/" + u.name for u in inp.units),
        "@DATE@": date,
        "@MAINTAINER@": inp.maintainer,
        "@DESCRIPTION@": DESCRIPTION.replace("\n.\n", "\n\n"),
        "@MAINT@": library,
    }.items():
        spec = spec.replace(key, value)
    spec_path = top / "SPECS" / "nodeagent.spec"
    write(spec_path, spec)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(inp.epoch)}
    run(
        [
            "rpmbuild",
            "-bb",
            "--quiet",
            "--target",
            inp.arch.rpm,
            "--define",
            f"_topdir {top}",
            "--define",
            "use_source_date_epoch_as_buildtime 1",
            "--define",
            "clamp_mtime_to_source_date_epoch 1",
            str(spec_path),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    built = top / "RPMS" / inp.arch.rpm / f"nodeagent-{inp.version}-1.{inp.arch.rpm}.rpm"
    out = dist / built.name
    shutil.copyfile(built, out)
    return out


# --- main -----------------------------------------------------------------------------------


def find_units(systemd_dir: Path) -> list[Path]:
    units = sorted(
        p for p in systemd_dir.glob("*") if p.suffix in (".service", ".timer", ".socket")
    )
    if not any(u.name == "nodeagent.service" for u in units):
        raise SystemExit(f"build: no nodeagent.service in {systemd_dir}")
    return units


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", nargs="?", choices=("packages", "lock"), default="packages")
    p.add_argument("--dist", type=Path, default=REPO / "dist", help="where the packages go")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp)")
    p.add_argument(
        "--arch",
        choices=sorted(ARCHES),
        action="append",
        help="build (or lock) for this architecture only; repeatable (default: every one)",
    )
    p.add_argument("--only", choices=("deb", "rpm"), help="build one format only")
    p.add_argument("--locked", action="store_true", help="fail if packaging/lock/ is stale")
    p.add_argument("--systemd-dir", type=Path, default=REPO / "systemd")
    p.add_argument("--cloud-init-dir", type=Path, default=REPO / "cloud-init")
    a = p.parse_args(argv)
    # In ARCHES order: `lock` pins the others to the first one's versions.
    arches = [arch for name, arch in ARCHES.items() if name in (a.arch or ARCHES)]
    with tempfile.TemporaryDirectory(prefix="nodeagent-build-") as tmp:
        work = (a.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        for arch in arches:
            # Each architecture has its own scratch tree: wheels, stage, deb and rpm roots.
            if a.command == "lock":
                lock(work / arch.rpm, arch)
            else:
                build_arch(a, arch, work / arch.rpm)
    return 0


def build_arch(a: argparse.Namespace, arch: Arch, work: Path) -> None:
    """The .deb and .rpm (or the one --only names) for one architecture."""
    version, deps = project()
    inp = Inputs(
        version=version,
        arch=arch,
        units=find_units(a.systemd_dir),
        cloud_init=sorted(a.cloud_init_dir.glob("*.yaml")) if a.cloud_init_dir.is_dir() else [],
        epoch=source_epoch(),
        maintainer=os.environ.get("NODEAGENT_MAINTAINER", DEFAULT_MAINTAINER),
    )
    if not inp.cloud_init:
        log(f"warning: no cloud-init examples in {a.cloud_init_dir}")
    if shutil.which(arch.strip) is None:
        raise SystemExit(f"build: {arch.strip} not found: it strips the {arch.rpm} objects")
    wheels = download_all(work, arch, deps, a.locked)
    stage = work / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    dists = stage_common(stage, inp, wheels, deps)
    dist = a.dist.resolve()
    dist.mkdir(parents=True, exist_ok=True)
    built = []
    if a.only in (None, "deb"):
        built.append(build_deb(stage, work, dist, inp, dists))
    if a.only in (None, "rpm"):
        built.append(build_rpm(stage, work, dist, inp, dists))
    for path in built:
        log(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
