"""The .deb and .rpm (docs/packaging.md), built once for the session with ``make packages``.

What they contain and declare, lintian and rpmlint, the bundle run by the host's python3 and
by every supported CPython (and refused by an unsupported one), a real dpkg install, upgrade,
remove, reinstall and purge into a scratch root, the RPM scriptlets, and the maintainer
scripts' /dev/char handling against a fake /dev of real device nodes (mknod, so root).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import runpy
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realparts import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
UNITS = sorted(  # as packaging/build.py finds them
    p.name for p in (REPO / "systemd").glob("*") if p.suffix in (".service", ".timer", ".socket")
) or [
    "nodeagent-bootstrap.service",
    "nodeagent.service",
]
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
# `make packages` builds every architecture: RPM's name -> Debian's. The tests that inspect or
# lint a package run for each; those that run the bundle run the x86_64 one (this machine's);
# tests/test_arm64.py runs the arm64 .deb under emulation.
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}

# The NVIDIA nodes of the fake /dev: path under dev/, major, minor.
NVIDIA_NODES = [
    ("nvidia0", 195, 0),
    ("nvidia1", 195, 1),
    ("nvidiactl", 195, 255),
    ("nvidia-modeset", 195, 254),
    ("nvidia-uvm", 510, 0),
    ("nvidia-uvm-tools", 510, 1),
    ("nvidia-caps/nvidia-cap1", 237, 1),
    ("nvidia-caps/nvidia-cap2", 237, 2),
]


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 240)
    return subprocess.run(cmd, text=True, check=False, **kw)  # type: ignore[call-overload]


def ok(cmd: list[str], **kw: object) -> str:
    r = run(cmd, **kw)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def need_tools(*tools: tuple[str, str]) -> None:
    for binary, package in tools:
        if not shutil.which(binary):
            skip_or_fail("packaging tools", f"{binary} not installed (apt-get install {package})")


def need_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail("device nodes", "mknod and dpkg --root need root")


# --- the build ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Built:
    deb: Path  # this machine's (x86_64), which the tests run
    rpm: Path
    version: str
    work: Path
    seconds: float
    debs: dict[str, Path]  # every architecture's, by RPM name (x86_64, aarch64)
    rpms: dict[str, Path]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    need_tools(("make", "make"), ("dpkg-deb", "dpkg"), ("rpmbuild", "rpm"), ("strip", "binutils"))
    need_tools(("aarch64-linux-gnu-strip", "binutils-aarch64-linux-gnu"))
    tmp = tmp_path_factory.mktemp("packages")
    args = [f"DIST={tmp / 'dist'}", f"WORK={tmp / 'work'}", f"PYTHON={sys.executable}"]
    if not (REPO / "systemd" / "nodeagent.service").exists():  # stand-ins, never in the repo
        units = tmp / "systemd"
        units.mkdir()
        for name in UNITS:
            (units / name).write_text(
                "[Unit]\nDescription=stand-in\n[Service]\nExecStart=/usr/bin/nodeagent run\n"
                "[Install]\nWantedBy=multi-user.target\n"
            )
        args.append(f"SYSTEMD_DIR={units}")
    start = time.monotonic()
    ok(["make", "-C", str(REPO), "packages", *args], timeout=600)
    seconds = time.monotonic() - start
    import tomlkit

    version = str(tomlkit.parse((REPO / "pyproject.toml").read_text())["project"]["version"])  # type: ignore[index]
    debs = {a: tmp / "dist" / f"nodeagent_{version}_{d}.deb" for a, d in ARCHES.items()}
    rpms = {a: tmp / "dist" / f"nodeagent-{version}-1.{a}.rpm" for a in ARCHES}
    for path in [*debs.values(), *rpms.values()]:
        assert path.is_file(), sorted(p.name for p in (tmp / "dist").iterdir())
        print(f"{path.name}: {path.stat().st_size >> 20} MiB")
    print(f"built in {seconds:.0f} s")
    return Built(
        deb=debs["x86_64"],
        rpm=rpms["x86_64"],
        version=version,
        work=tmp / "work",
        seconds=seconds,
        debs=debs,
        rpms=rpms,
    )


@pytest.fixture(scope="session")
def tree(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb's files, unpacked (dpkg-deb -x): a root the launcher runs from."""
    root = tmp_path_factory.mktemp("debroot")
    ok(["dpkg-deb", "-x", str(built.deb), str(root)])
    return root


def launch(python: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """ROOT/usr/bin/nodeagent ARGS as the kernel runs it (its #! line's flags), but with
    ``python`` for /usr/bin/python3; from /, in a clean environment."""
    script = root / "usr/bin/nodeagent"
    shebang = script.read_text().splitlines()[0].split()
    assert shebang[0] == "#!/usr/bin/python3", shebang
    return run([python, *shebang[1:], str(script), *args], cwd="/", env=CLEAN_ENV)


def pyenv_python(version: str) -> str:
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no CPython {version} under {pyenv}/versions")
    return found[-1]


# --- .deb -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_deb_declares_only_python3_and_a_conffile(built: Built, arch: str) -> None:
    info = ok(["dpkg-deb", "--info", str(built.debs[arch])])
    fields = dict(
        line.strip().split(": ", 1)
        for line in info.splitlines()
        if line.startswith(" ") and ": " in line
    )
    assert fields["Package"] == "nodeagent"
    assert fields["Version"] == built.version
    assert fields["Architecture"] == ARCHES[arch]
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "python3 (>= 3.9)" in depends
    assert all(d.startswith(("python3 ", "libc6 ")) for d in depends), depends
    for field in ("Pre-Depends", "Recommends", "Suggests"):
        assert field not in fields
    ctrl = built.work / f"ctrl-{arch}"
    shutil.rmtree(ctrl, ignore_errors=True)
    ok(["dpkg-deb", "--control", str(built.debs[arch]), str(ctrl)])
    assert (ctrl / "conffiles").read_text().split() == ["/etc/nodeagent/config.yaml"]
    for script in ("postinst", "prerm", "postrm"):
        assert (ctrl / script).stat().st_mode & 0o111, script
        text = (ctrl / script).read_text()
        assert "pip " not in text and "pip3" not in text and "curl" not in text, script


@pytest.mark.parametrize("arch", ARCHES)
def test_deb_contents(built: Built, arch: str) -> None:
    listing = ok(["dpkg-deb", "--contents", str(built.debs[arch])])
    rows = {line.split()[-1].lstrip("."): line for line in listing.splitlines()}
    paths = set(rows)
    assert rows["/usr/bin/nodeagent"].startswith("-rwxr-xr-x root/root")
    expected = {
        "/opt/nodeagent/lib/common/nodeagent/cli/main.py",
        "/opt/nodeagent/libexec/nodeagent-maint",
        "/etc/nodeagent/config.yaml",
        "/usr/share/doc/nodeagent/README.md",
        "/usr/share/doc/nodeagent/copyright",
        "/usr/share/doc/nodeagent/docs/configuration.md",
        "/usr/share/man/man1/nodeagent.1.gz",
        *(f"/lib/systemd/system/{u}" for u in UNITS),  # the units as the build found them
        *(f"/usr/share/doc/nodeagent/docs/{p.name}" for p in (REPO / "docs").glob("*.md")),
        *(
            f"/usr/share/doc/nodeagent/cloud-init/{p.name}"
            for p in (REPO / "cloud-init").glob("*.yaml")
        ),
    }
    assert expected <= paths, sorted(expected - paths)
    for py in PYTHONS:  # a directory per supported CPython, with its compiled PyYAML
        tag = "cp" + py.replace(".", "")
        assert f"/opt/nodeagent/lib/{tag}/" in paths
        assert any(
            p.startswith(f"/opt/nodeagent/lib/{tag}/yaml/_yaml.cpython-{tag[2:]}-{arch}-linux-gnu")
            for p in paths
        )
    # No pip or build tools, no bytecode, and not the asyncio client nodeagent never imports.
    top = {
        p.split("/")[5] for p in paths if p.startswith("/opt/nodeagent/lib/") and p.count("/") > 5
    }
    assert not {"pip", "setuptools", "wheel", "aiohttp", "yarl"} & top, sorted(top)
    assert "nodeagent" in top and "kubernetes" in top and "pydantic_core" in top
    assert not [
        p for p in paths if "__pycache__" in p or p.endswith(".pyc") or "/kubernetes/aio/" in p
    ]


@pytest.mark.parametrize("arch", ARCHES)
def test_lintian_is_clean(built: Built, arch: str) -> None:
    need_tools(("lintian", "lintian"))
    r = run(["lintian", "--fail-on", "error,warning", "--display-info", str(built.debs[arch])])
    tags = [line for line in r.stdout.splitlines() if line[:2] in ("E:", "W:", "I:")]
    assert r.returncode == 0 and not tags, r.stdout + r.stderr


# --- .rpm -----------------------------------------------------------------------------------


def rpmq(built: Built, *args: str, arch: str = "x86_64") -> str:
    env = {**CLEAN_ENV, "HOME": "/nonexistent"}
    return ok(["rpm", "-qp", *args, str(built.rpms[arch])], env=env)


@pytest.mark.parametrize("arch", ARCHES)
def test_rpm_requires_only_python3_and_has_no_python_generators(built: Built, arch: str) -> None:
    need_tools(("rpm", "rpm"))
    assert rpmq(built, "--qf", "%{ARCH}", arch=arch) == arch
    requires = rpmq(built, "--requires", arch=arch).splitlines()
    user = [r for r in requires if not r.startswith(("rpmlib(", "/bin/sh"))]
    assert user == ["(python3 >= 3.9 or python39 or python3.11 or python3.12)"], requires
    provides = rpmq(built, "--provides", arch=arch)
    assert "python3dist" not in provides and "python(abi)" not in provides, provides
    assert "python3dist" not in "".join(requires)
    files = set(rpmq(built, "-l", arch=arch).splitlines())
    assert {
        "/usr/bin/nodeagent",
        "/etc/nodeagent/config.yaml",
        "/opt/nodeagent/libexec/nodeagent-maint",
        "/usr/share/doc/nodeagent/README.md",
        *(f"/usr/lib/systemd/system/{u}" for u in UNITS),
    } <= files
    assert not [f for f in files if f.endswith(".pyc") or "/.build-id/" in f]
    flags = dict(
        line.split(" ", 1)[::-1]
        for line in rpmq(
            built, "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", arch=arch
        ).splitlines()
    )
    assert set(flags["/etc/nodeagent/config.yaml"]) >= {"c", "n"}  # %config(noreplace)
    assert (
        "%config(noreplace) %{_sysconfdir}/nodeagent/config.yaml"
        in (REPO / "packaging/rpm/nodeagent.spec.in").read_text()
    )
    scripts = rpmq(built, "--scripts", arch=arch)
    for scriptlet in ("postinstall", "preuninstall", "postuninstall"):
        assert f"{scriptlet} scriptlet (using /bin/sh)" in scripts
    assert "stat -L -c '%t %T'" in scripts  # the %-escaping survived rpmbuild
    commands = [
        line
        for line in scripts.splitlines()
        if not line.strip().startswith(("#", "na_say"))
        and ("docker" in line or "containerd" in line)
    ]
    assert commands == [], commands  # never touches docker or containerd


@pytest.mark.parametrize("arch", ARCHES)
def test_rpmlint_is_clean(built: Built, arch: str) -> None:
    need_tools(("rpmlint", "rpmlint"))
    r = run(["rpmlint", "-r", str(REPO / "packaging/rpmlintrc"), str(built.rpms[arch])])
    assert r.returncode == 0 and " 0 errors, 0 warnings" in r.stdout, r.stdout + r.stderr


def test_rpm_installs_into_a_scratch_root_and_runs(built: Built, tmp_path: Path) -> None:
    need_tools(("rpm", "rpm"))
    root = tmp_path / "root"
    # The scriptlets would run chrooted into a root with no shell: they are tested below.
    ok(["rpm", "--root", str(root), "--initdb"])
    ok(["rpm", "--root", str(root), "-i", "--nodeps", "--noscripts", str(built.rpm)])
    r = launch("/usr/bin/python3", root, "--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"nodeagent {built.version}"), r.stderr
    assert (root / "usr/lib/systemd/system/nodeagent.service").is_file()
    verify = run(["rpm", "--root", str(root), "-V", "--nodeps", "nodeagent"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    ok(["rpm", "--root", str(root), "-e", "--noscripts", "nodeagent"])
    assert not (root / "opt/nodeagent").exists() and not (root / "usr/bin/nodeagent").exists()


# --- the bundle and its launcher ------------------------------------------------------------


def test_launcher_runs_nodeagent_from_the_bundle_with_the_hosts_python3(tree: Path) -> None:
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("no /usr/bin/python3")
    r = launch("/usr/bin/python3", tree, "--version")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    # detect needs config (PyYAML), pynvml and NVML: no driver here, so exit 3, one line.
    r = launch("/usr/bin/python3", tree, "detect")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "nodeagent: no NVIDIA driver" in r.stderr
    assert "Traceback" not in r.stderr
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='launcher')['setup'](); "
        "import nodeagent, yaml, pynvml, kubernetes.client, docker; "
        "print(nodeagent.__file__, yaml.__file__, pynvml.__file__, kubernetes.__file__, "
        "docker.__file__); print(*sys.path)"
    )
    r = run(
        ["/usr/bin/python3", "-I", "-c", code, str(tree / "usr/bin/nodeagent")],
        cwd="/",
        env=CLEAN_ENV,
    )
    assert r.returncode == 0, r.stderr
    files, path = r.stdout.splitlines()
    for f in files.split():
        assert f.startswith(f"{tree}/opt/nodeagent/lib/"), f
    assert str(REPO) not in path and ".venv" not in path
    assert "dist-packages" not in path and "site-packages" not in path


@pytest.mark.parametrize("version", PYTHONS)
def test_every_bundled_module_imports_under_each_cpython(tree: Path, version: str) -> None:
    python = pyenv_python(version)
    code = r"""
import importlib, os, runpy, sys
runpy.run_path(sys.argv[1], run_name="launcher")["setup"]()
bundle = [p for p in sys.path if "/opt/nodeagent/lib/" in p]
failed, names = [], set()
for d in bundle:
    for entry in os.listdir(d):
        if entry.endswith(".dist-info") or entry == "__pycache__":
            continue
        name = entry.split(".")[0]
        if name != "example":  # nvidia-ml-py's example script: it runs NVML on import
            names.add(name)
import pkgutil, nodeagent
names |= {m.name for m in pkgutil.walk_packages(nodeagent.__path__, "nodeagent.")}
names.discard("nodeagent.__main__")  # runs the CLI
for name in sorted(names):
    try:
        module = importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
        continue
    where = getattr(module, "__file__", None) or list(getattr(module, "__path__", []))[0]
    if not any(where.startswith(d) for d in bundle):
        failed.append(f"{name} from {where}")
print(len(names), "modules;", *bundle)
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""
    # No -S: the host's .pth files run first (some import modules, e.g. certifi, from the
    # interpreter's site-packages); the launcher must still import only the bundle's.
    r = run([python, "-I", "-c", code, str(tree / "usr/bin/nodeagent")], cwd="/", env=CLEAN_ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    tag = "cp" + version.replace(".", "")
    assert f"/opt/nodeagent/lib/{tag} " in r.stdout + " "
    # And nodeagent itself, through the launcher: config, pynvml, the no-driver answer.
    r = launch(python, tree, "detect", "-o", "json")
    assert r.returncode == 3 and '"state": "no-driver"' in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("version", ["3.9", "3.12"])
def test_the_bundled_client_reports_a_node_with_the_generated_api_left_out(
    tree: Path, version: str, srv: Any, fake_nvml: Any, tmp_path: Path
) -> None:
    """kubernetes >= 37's generated API and model modules are not bundled (build.py,
    LAZY_PRUNE_PATHS): the agent, run from the bundle, still labels the Node and sets its
    condition on the test API server (3.9 gets an older client that keeps them all)."""
    shared = tree / "opt/nodeagent/lib/cp310+cp311+cp312+cp313/kubernetes/client"
    if shared.is_dir():
        assert sorted(p.name for p in (shared / "api").iterdir()) == ["__init__.py"]
        assert sorted(p.name for p in (shared / "models").iterdir()) == ["__init__.py"]
    root = tmp_path / "root"
    srv.node_kubeconfig(root / "etc/kubernetes/kubelet.conf", "gpu-1")
    srv.create_node("gpu-1", capacity={"nvidia.com/gpu": "8"})
    config = tmp_path / "config.yaml"
    config.write_text(
        f"node_name: gpu-1\nnvml_library: {fake_nvml.lib}\nruntime:\n  engine: none\n"
    )
    script = tree / "usr/bin/nodeagent"
    flags = script.read_text().splitlines()[0].split()[1:]
    r = run(
        [
            pyenv_python(version),
            *flags,
            str(script),
            *("--root", str(root), "--config", str(config), "apply", "--phase", "report"),
        ],
        cwd="/",
        env={**CLEAN_ENV, "FAKE_NVML_PROFILE": str(fake_nvml.profile("h100x8"))},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    node = srv.get_node("gpu-1")
    assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == "8"
    cond = [c for c in node["status"]["conditions"] if c["type"] == "nvidia.com/GPUReady"]
    assert cond and cond[0]["status"] == "True", node["status"]


@pytest.mark.parametrize("version", ["3.6", "3.8"])
def test_launcher_refuses_an_unsupported_python_in_one_line(tree: Path, version: str) -> None:
    r = launch(pyenv_python(version), tree, "--version")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    assert (
        f" {version}; this nodeagent bundles libraries for CPython 3.9, 3.10, 3.11, 3.12, 3.13"
        in r.stderr
    )


def test_launcher_reruns_itself_with_a_supported_python3_x(
    tree: Path, built: Built, tmp_path: Path
) -> None:
    # An EL8-like host: python3 is too old, but a /usr/bin/python3.12 is there.
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(tree / "usr/bin/nodeagent", root / "usr/bin/nodeagent")
    (root / "opt").symlink_to(tree / "opt")
    (root / "usr/bin/python3.12").symlink_to(pyenv_python("3.12"))
    r = launch(pyenv_python("3.8"), root, "--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"nodeagent {built.version}"), r.stderr


def test_default_config_is_all_comments_and_says_the_defaults(tree: Path) -> None:
    from nodeagent.config import Config, parse

    text = (tree / "etc/nodeagent/config.yaml").read_text()
    lines = text.splitlines()
    assert all(not line or line.startswith("#") for line in lines)
    assert parse(text, "config.yaml") == Config()
    # Uncommenting every key line (all after the header: "#" + the line) gives the defaults
    # too: the values shown are docs/configuration.md's, which must be the real ones.
    keys = "\n".join(line[1:] for line in text.split("\n\n", 1)[1].splitlines())
    assert "runtime:" in keys and "  allow_restart: false" in keys
    assert parse(keys, "uncommented") == Config(), (
        "docs/configuration.md's YAML block no longer matches nodeagent.config's defaults"
    )


# --- the maintainer scripts -----------------------------------------------------------------


@dataclasses.dataclass
class Host:
    """A scratch root with a fake /dev of real NVIDIA device nodes and a logging systemctl."""

    root: Path
    log: Path
    env: dict[str, str]

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def maint(self, action: str) -> subprocess.CompletedProcess[str]:
        script = self.root / "maint"
        return run(["sh", str(script), action], env=self.env)


FAKE_SYSTEMCTL = """#!/bin/sh
# Records each call; at daemon-reload, also which /dev/char links existed at that moment.
printf '%s\\n' "$*" >>"$FAKE_LOG"
if [ "$1" = daemon-reload ]; then
	links=$(ls "$FAKE_DEV/char" 2>/dev/null | tr '\\n' ' ')
	printf 'links at reload: %s\\n' "$links" >>"$FAKE_LOG"
fi
"""


@pytest.fixture
def host(tmp_path: Path, tree: Path) -> Iterator[Host]:
    need_root()
    root = tmp_path / "host"
    (root / "dev/char").mkdir(parents=True)
    (root / "run/systemd/system").mkdir(parents=True)  # systemd "runs" here
    for rel, major, minor in NVIDIA_NODES:
        node = root / "dev" / rel
        node.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    (root / "dev/nvidia-caps-not-a-device").write_text("")
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL)
    systemctl.chmod(0o755)
    shutil.copy(tree / "opt/nodeagent/libexec/nodeagent-maint", root / "maint")
    log = tmp_path / "systemctl.log"
    env = {
        **CLEAN_ENV,
        "NODEAGENT_ROOT": str(root),
        "NODEAGENT_SYSTEMCTL": str(systemctl),
        "FAKE_LOG": str(log),
        "FAKE_DEV": str(root / "dev"),
    }
    yield Host(root=root, log=log, env=env)
    run(["umount", str(root / "dev/char")])  # the read-only test's mount, if any


def assert_links(dev: Path) -> None:
    for rel, major, minor in NVIDIA_NODES:
        link = dev / "char" / f"{major}:{minor}"
        assert link.is_symlink(), link
        assert os.readlink(link) == f"../{rel}"
        assert os.stat(link).st_rdev == os.makedev(major, minor)


def test_devchar_links_every_nvidia_device_and_leaves_the_rest(host: Host) -> None:
    char = host.dev / "char"
    (char / "195:1").symlink_to("../nvidia1")  # already right: kept as is
    (char / "195:255").symlink_to("../gone")  # dangling: replaced
    (char / "1:3").symlink_to("../null")  # not NVIDIA's: untouched
    kept = os.lstat(char / "195:1").st_ino
    r = host.maint("devchar")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_links(host.dev)
    assert os.lstat(char / "195:1").st_ino == kept
    assert os.readlink(char / "1:3") == "../null"
    assert sorted(p.name for p in char.iterdir()) == sorted(
        ["1:3", *(f"{major}:{minor}" for _, major, minor in NVIDIA_NODES)]
    )
    assert "created" in r.stdout and "195:1 " not in r.stdout
    assert host.maint("devchar").stdout == ""  # idempotent


def test_install_reloads_only_after_the_links_exist_and_starts_nothing(host: Host) -> None:
    r = host.maint("install")
    assert r.returncode == 0, r.stderr
    calls = host.calls()
    links = " ".join(sorted(f"{major}:{minor}" for _, major, minor in NVIDIA_NODES))
    assert calls[0] == "daemon-reload"
    assert sorted(calls[1].removeprefix("links at reload: ").split()) == links.split()
    assert calls[2:] == ["--no-reload enable " + " ".join(UNITS)]
    assert_links(host.dev)


def test_without_dev_char_the_reload_is_skipped_with_instructions(host: Host) -> None:
    (host.dev / "char").rmdir()
    r = host.maint("install")
    assert r.returncode == 0, r.stderr
    assert host.calls() == ["--no-reload enable " + " ".join(UNITS)]  # no daemon-reload
    assert "NOT running 'systemctl daemon-reload'" in r.stdout
    assert "nvidia-ctk system create-dev-char-symlinks --create-all" in r.stdout
    assert "nvidia-container-toolkit/issues/48" in r.stdout
    assert host.maint("devchar").returncode == 1


def test_read_only_dev_char_skips_the_reload(host: Host) -> None:
    mount = run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(host.dev / "char")])
    if mount.returncode != 0:
        skip_or_fail("read-only mount", mount.stderr.strip())
    r = host.maint("upgrade")
    assert r.returncode == 0, r.stderr
    assert "daemon-reload" not in host.calls()
    assert host.calls() == ["try-restart nodeagent.service"]
    assert "NOT running 'systemctl daemon-reload'" in r.stdout


def test_no_nvidia_device_means_a_safe_reload(host: Host) -> None:
    for rel, _, _ in NVIDIA_NODES:
        (host.dev / rel).unlink()
    r = host.maint("daemon-reload")
    assert r.returncode == 0 and host.calls()[0] == "daemon-reload", r.stdout + r.stderr


def test_without_running_systemd_only_enable_runs(host: Host) -> None:
    (host.root / "run/systemd/system").rmdir()  # a chroot or an image build
    host.maint("install")
    host.maint("upgrade")
    assert host.calls() == ["--no-reload enable " + " ".join(UNITS)]
    assert not list((host.dev / "char").iterdir())  # no reload, so /dev is left alone


def write_state(root: Path) -> None:
    for rel in (
        "var/lib/nodeagent/state.json",
        "var/lib/nodeagent/backups/daemon.json.1",
        "run/nodeagent/nodeagent.lock",
        "var/cache/nodeagent/pycache/x.pyc",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")


def test_dpkg_install_upgrade_remove_reinstall_purge(
    host: Host, built: Built, tmp_path: Path
) -> None:
    """The real .deb through dpkg, chrootless into the scratch root (DPKG_ROOT)."""
    root = host.root
    for d in ("info", "updates"):
        (root / "var/lib/dpkg" / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    env = {k: v for k, v in host.env.items() if k != "NODEAGENT_ROOT"}  # DPKG_ROOT says it
    dpkg = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends"]

    r = run([*dpkg, "-i", str(built.deb)], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert host.calls()[0] == "daemon-reload" and host.calls()[2].startswith("--no-reload enable")
    assert_links(host.dev)

    # The operator edits the config; a new version that changes the shipped one keeps theirs.
    config = root / "etc/nodeagent/config.yaml"
    config.write_text("runtime:\n  engine: containerd\n")
    v2 = tmp_path / "v2"
    ok(["dpkg-deb", "-R", str(built.deb), str(v2)])
    control = (v2 / "DEBIAN/control").read_text()
    (v2 / "DEBIAN/control").write_text(
        control.replace(f"Version: {built.version}", f"Version: {built.version}+t2")
    )
    (v2 / "etc/nodeagent/config.yaml").write_text(
        (v2 / "etc/nodeagent/config.yaml").read_text() + "# v2\n"
    )
    ok(["dpkg-deb", "--root-owner-group", "-Znone", "-b", str(v2), str(tmp_path / "v2.deb")])
    host.log.unlink()
    write_state(root)
    r = run([*dpkg, "--force-confold", "-i", str(tmp_path / "v2.deb")], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert config.read_text() == "runtime:\n  engine: containerd\n"
    assert (root / "etc/nodeagent/config.yaml.dpkg-dist").read_text().endswith("# v2\n")
    calls = host.calls()
    assert calls[0] == "daemon-reload" and calls[2:] == ["try-restart nodeagent.service"], calls
    assert not (root / "var/cache/nodeagent/pycache").exists()  # the old bundle's bytecode

    host.log.unlink()
    r = run([*dpkg, "-r", "nodeagent"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert host.calls()[:2] == ["stop " + " ".join(UNITS), "--no-reload disable " + " ".join(UNITS)]
    assert host.calls()[2] == "daemon-reload"
    assert "nodeagent rollback" in r.stdout
    assert not (root / "opt/nodeagent").exists() and config.exists()  # conffiles stay

    # Installed again after a remove (dpkg calls it configure-from-0.1.0+t2): enabled again,
    # like a first install, and the operator's config still kept.
    host.log.unlink()
    r = run([*dpkg, "--force-confold", "-i", str(built.deb)], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert host.calls()[2] == "--no-reload enable " + " ".join(UNITS), host.calls()
    assert config.read_text() == "runtime:\n  engine: containerd\n"

    write_state(root)
    r = run([*dpkg, "-P", "nodeagent"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not config.exists() and not (root / "opt/nodeagent").exists()
    assert not (root / "run/nodeagent").exists() and not (root / "var/cache/nodeagent").exists()
    assert sorted(os.listdir(root / "var/lib/nodeagent")) == ["backups"]  # kept, and said so
    assert "kept" in r.stdout and "backups" in r.stdout
    assert not [
        c for c in host.calls() if "docker" in c or "containerd" in c or c.startswith("start")
    ]


def rpm_scriptlet(built: Built, tag: str, host: Host) -> Path:
    body = rpmq(built, "--qf", "%{" + tag + "}")
    path = host.root / f"{tag}.sh"
    path.write_text(body)
    return path


def test_rpm_scriptlets(host: Host, built: Built) -> None:
    need_tools(("rpm", "rpm"))
    post, preun, postun = (rpm_scriptlet(built, t, host) for t in ("POSTIN", "PREUN", "POSTUN"))

    def scriptlet(path: Path, arg: str) -> list[str]:
        if host.log.exists():
            host.log.unlink()
        r = run(["sh", str(path), arg], env=host.env)
        assert r.returncode == 0, r.stdout + r.stderr
        return host.calls()

    install = scriptlet(post, "1")
    assert install[0] == "daemon-reload" and install[2] == "--no-reload enable " + " ".join(UNITS)
    assert_links(host.dev)
    write_state(host.root)
    assert scriptlet(post, "2") == [install[0], install[1]]  # upgrade: reload, no enable
    assert not (host.root / "var/cache/nodeagent/pycache").exists()
    assert scriptlet(preun, "1") == []  # the old package's %preun during an upgrade
    assert scriptlet(postun, "1") == ["try-restart nodeagent.service"]
    assert scriptlet(preun, "0") == [
        "stop " + " ".join(UNITS),
        "--no-reload disable " + " ".join(UNITS),
    ]
    write_state(host.root)
    assert scriptlet(postun, "0")[0] == "daemon-reload"  # erase: reload, then the state goes
    assert sorted(os.listdir(host.root / "var/lib/nodeagent")) == ["backups"]
    assert not (host.root / "run/nodeagent").exists()


def test_shell_scripts_are_shellcheck_clean(built: Built, tree: Path) -> None:
    need_tools(("shellcheck", "shellcheck"))
    ctrl = built.work / "ctrl-sc"
    shutil.rmtree(ctrl, ignore_errors=True)
    ok(["dpkg-deb", "--control", str(built.deb), str(ctrl)])
    scripts = [
        REPO / "packaging/scripts/nodeagent-maint",
        *(ctrl / s for s in ("postinst", "prerm", "postrm")),
    ]
    ok(["shellcheck", "-s", "sh", *map(str, scripts)])


def test_a_stale_lock_is_noticed() -> None:
    """packaging/lock/ pins the bundle only while it matches pyproject.toml's dependencies
    (the build resolves afresh, with a warning, or fails with --locked, otherwise)."""
    build = runpy.run_path(str(REPO / "packaging/build.py"), run_name="packaging_build")
    assert sorted(build["ARCHES"]) == sorted(ARCHES)
    for py in PYTHONS:
        for arch in build["ARCHES"].values():
            line = next(
                x
                for x in build["lock_path"](py, arch).read_text().splitlines()
                if x.startswith("# dependencies: ")
            )
            deps = line.removeprefix("# dependencies: ").split("; ")
            assert build["lock_is_current"](py, arch, deps)
            assert not build["lock_is_current"](py, arch, [*deps, "something-new>=1"])
        # aarch64 bundles the versions x86_64 does (its own files and hashes).
        x86, arm = (build["ARCHES"][a] for a in ("x86_64", "aarch64"))
        assert build["pinned"](py, arm) == build["pinned"](py, x86)
