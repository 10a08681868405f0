"""The controller image (packaging/image.py, ``make image``), loaded and run by real daemons.

Built once per session into a temp dir (the Debian base tree is cached under
/var/cache/nodeagent-image/; its first build needs root and debootstrap), then: built again
from the same inputs to the same bytes; its config checked against deploy/controller.yaml;
``docker load``-ed into a dockerd of each suite of the runtime matrix and run read-only as
the non-root user; the controller run inside it the way the Deployment runs it (in-cluster
service-account credential, the ConfigMap's config, read-only root, no capabilities)
against the test API server, lifting a startup taint; ``ctr images import``-ed into a
containerd of each suite and run there.
"""

from __future__ import annotations

import calendar
import dataclasses
import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent.config import KubeConfig
from tests import packagingscripts
from tests.containerd import Containerd, needs_containerd
from tests.debcache import FetchError, unpacked
from tests.dockerd import BASE_CONFIG, Dockerd, needs_dockerd
from tests.kubeapi import KubeAPIServer
from tests.realparts import skip_or_fail
from tests.runtimes import MATRIX, runtime

REPO = Path(__file__).resolve().parents[1]


image = packagingscripts.load("image")

DOCKERS = [suite for kind, suite in MATRIX if kind == "docker"]
CONTAINERDS = [suite for kind, suite in MATRIX if kind == "containerd"]
VERSION = image.build.project()[0]
TAG = f"nodeagent:{VERSION}"
NODE = "gpu-node-1"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # where a pod's token is mounted


@dataclasses.dataclass(frozen=True)
class Archive:
    """A built image archive and what ``make image`` printed about it."""

    path: Path
    digest: str  # the manifest's

    def member(self, name: str) -> bytes:
        with tarfile.open(self.path) as tar:
            f = tar.extractfile(name)
            assert f is not None, name
            return f.read()

    def json(self, name: str) -> Any:
        return json.loads(self.member(name))

    def manifest(self) -> dict[str, Any]:
        index = self.json("index.json")
        digest = index["manifests"][0]["digest"]
        return dict(self.json("blobs/sha256/" + digest.split(":")[1]))

    def config(self) -> dict[str, Any]:
        digest = self.manifest()["config"]["digest"]
        return dict(self.json("blobs/sha256/" + digest.split(":")[1]))

    def layer(self, i: int) -> bytes:
        """Layer ``i`` (0: base, 1: app), uncompressed."""
        desc = self.manifest()["layers"][i]
        return gzip.decompress(self.member("blobs/sha256/" + desc["digest"].split(":")[1]))

    def layers(self) -> list[list[tarfile.TarInfo]]:
        """Each layer's entries, in order."""
        out = []
        for i in range(len(self.manifest()["layers"])):
            with tarfile.open(fileobj=io.BytesIO(self.layer(i))) as tar:
                out.append(tar.getmembers())
        return out


def make_image(out: Path, work: Path) -> Archive:
    """``make image`` into ``out`` (what the Makefile runs)."""
    r = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "image.py"), "--out", str(out),
         "--work", str(work)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    path, tag, digest = r.stdout.split()[:3]
    assert (Path(path.rstrip(":")), tag) == (out, TAG)
    return Archive(out, digest)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    reason = image.why_not()
    if reason:
        skip_or_fail("image build", reason)
    d = tmp_path_factory.mktemp("image")
    return make_image(d / "nodeagent-image.tar", d / "work")


def deployment() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "controller.yaml").read_text()))
    return next(d for d in docs if d and d["kind"] == "Deployment")


def configmap() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "controller.yaml").read_text()))
    return next(d for d in docs if d and d["kind"] == "ConfigMap")


# --- the archive itself ---------------------------------------------------------------------


def test_the_same_inputs_give_the_same_image(built: Archive, tmp_path: Path) -> None:
    again = make_image(tmp_path / "again.tar", tmp_path / "work")
    assert again.digest == built.digest
    assert again.path.read_bytes() == built.path.read_bytes()


def test_every_layer_is_sorted_dated_once_and_owned_by_root(built: Archive) -> None:
    base_dates, app_dates = ({m.mtime for m in layer} for layer in built.layers())
    assert base_dates == {image.BASE_EPOCH}  # the base layer's digest: Debian's files only
    created = calendar.timegm(time.strptime(built.config()["created"], "%Y-%m-%dT%H:%M:%SZ"))
    assert app_dates == {created}  # SOURCE_DATE_EPOCH, else the last commit's time
    for layer in built.layers():
        names = [m.name for m in layer]
        assert names == sorted(names)
        owners = {(m.uid, m.gid, m.uname, m.gname) for m in layer if m.name != "home/nonroot"}
        assert owners == {(0, 0, "", "")}
    base, app = ({m.name: m for m in layer} for layer in built.layers())
    assert base["tmp"].mode == 0o1777
    assert (base["home/nonroot"].uid, base["home/nonroot"].mode) == (image.USER, 0o700)
    assert "usr/bin/python3" in base and "bin/sh" not in base and "usr/bin/dpkg" not in base
    assert "usr/bin/nodeagent" in app and "opt/nodeagent/lib/common/nodeagent/cli/main.py" in app
    # the image's dpkg status (what scanners read) lists the packages its files come from
    with tarfile.open(fileobj=io.BytesIO(built.layer(0))) as tar:
        f = tar.extractfile("var/lib/dpkg/status")
        assert f is not None
        listed = {line[9:] for line in f.read().decode().splitlines() if line[:9] == "Package: "}
    assert {"python3", "python3.11", "libc6", "libssl3"} <= listed
    assert not listed & set(image.NOT_IN_IMAGE)


def test_the_image_runs_as_the_deployments_non_root_user(built: Archive) -> None:
    from nodeagent.cli.main import build_parser

    cfg = built.config()["config"]
    pod = deployment()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = int(cfg["User"].split(":")[0])
    assert uid != 0 and uid == pod["securityContext"]["runAsUser"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the pod's args replace Cmd and follow Entrypoint: together a valid nodeagent command
    assert cfg["Entrypoint"] == ["/usr/bin/nodeagent"] and cfg["Cmd"] == ["controller"]
    args = build_parser().parse_args(container["args"])
    assert (args.config, args.command) == ("/etc/nodeagent/config.yaml", "controller")
    # docker load reads manifest.json, ctr and skopeo index.json: the same blobs
    docker = built.json("manifest.json")[0]
    manifest = built.manifest()
    assert docker["Config"] == "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]
    assert docker["Layers"] == [
        "blobs/sha256/" + layer["digest"].split(":")[1] for layer in manifest["layers"]
    ]
    assert docker["RepoTags"] == [TAG]


# --- docker -------------------------------------------------------------------------------


def start_dockerd(suite: str) -> Dockerd:
    reason = needs_dockerd()
    if reason:
        skip_or_fail("dockerd", reason)
    base = Path(tempfile.mkdtemp(prefix="nai.", dir="/tmp"))
    try:
        d = Dockerd(base, runtime("docker", suite))
    except FetchError as e:
        skip_or_fail(f"docker of {suite}", str(e))
    d.config.parent.mkdir(parents=True)
    d.config.write_text(json.dumps(BASE_CONFIG) + "\n")
    if not d.start():
        log = d.log.read_text()[-2000:]
        stop_dockerd(d)
        pytest.fail(f"dockerd of {suite} did not start: {log}")
    return d


def stop_dockerd(d: Dockerd) -> None:
    """Dockerd.teardown, and the ``x/netns/default`` nsfs mount a dockerd that ran a
    ``--network host`` container leaves in its exec root (teardown's ``umount -R`` of ``x``,
    not a mount point, does not reach it)."""
    d.teardown()
    netns = d.base / "x" / "netns" / "default"
    if os.path.ismount(netns):
        subprocess.run(["umount", "-l", str(netns)], capture_output=True)
    shutil.rmtree(d.base, ignore_errors=True)


@pytest.fixture(params=DOCKERS, ids=[f"docker-{s}" for s in DOCKERS])
def dockerd(request: pytest.FixtureRequest) -> Iterator[Dockerd]:
    d = start_dockerd(request.param)
    try:
        yield d
    finally:
        stop_dockerd(d)


@pytest.mark.docker
def test_docker_loads_it_and_it_runs_read_only_as_non_root(
    built: Archive, dockerd: Dockerd
) -> None:
    assert f"Loaded image: {TAG}" in dockerd.docker("load", "-i", str(built.path))
    assert (
        dockerd.docker("image", "inspect", TAG, "--format", "{{.Id}}")
        == (built.manifest()["config"]["digest"])
    )
    out = dockerd.docker(
        "run", "--rm", "--read-only", "--network", "none", "--user", f"{image.USER}",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", TAG, "controller", "--help",
    )  # fmt: skip
    assert out.startswith("usage: nodeagent controller")
    whoami = dockerd.docker(
        "run", "--rm", "--read-only", "--network", "none", "--entrypoint", "/usr/bin/python3",
        TAG, "-c", "import os; print(os.getuid(), os.getgid())",
    )  # fmt: skip
    assert whoami == f"{image.USER} {image.USER}"  # the image's own user, with no --user
    # a read-only root compiles nothing at run time: the controller's modules come compiled
    check = (
        "import importlib, importlib.util, os, sys\n"
        "g = {'__name__': 'launcher', '__file__': '/usr/bin/nodeagent'}\n"
        "exec(open(g['__file__']).read(), g)\n"
        "g['setup']()\n"
        f"for m in {list(image.CONTROLLER_MODULES)!r}: importlib.import_module(m)\n"
        "files = [getattr(m, '__file__', None) or '' for m in list(sys.modules.values())]\n"
        "files = [f for f in files if f.endswith('.py')]\n"
        "pyc = importlib.util.cache_from_source\n"
        "print(len(files), [f for f in files if not os.path.exists(pyc(f))])"
    )
    loaded, uncompiled = dockerd.docker(
        "run", "--rm", "--read-only", "--network", "none", "--entrypoint", "/usr/bin/python3",
        TAG, "-IS", "-c", check,
    ).split(" ", 1)  # fmt: skip
    assert int(loaded) > 100 and uncompiled == "[]"


@pytest.mark.docker
def test_the_controller_in_the_container_lifts_the_startup_taint(
    built: Archive, srv: KubeAPIServer, tmp_path: Path
) -> None:
    kube = KubeConfig()
    srv.create_node(
        NODE,
        taints=[{"key": kube.startup_taint_key, "effect": "NoSchedule"}],
        conditions=[
            {
                "type": kube.condition_type,
                "status": "True",
                "reason": "GPUsHealthy",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    )
    # What the kubelet mounts into the pod: the service account's token and CA, the ConfigMap.
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(srv.token("nodeagent-controller"))
    (sa / "ca.crt").write_bytes(srv.ca_path.read_bytes())
    (sa / "namespace").write_text("nodeagent-system")
    conf = tmp_path / "config"
    conf.mkdir()
    (conf / "config.yaml").write_text(configmap()["data"]["config.yaml"])
    for f in [sa, conf, *sa.iterdir(), *conf.iterdir()]:
        f.chmod(0o755 if f.is_dir() else 0o644)
    container = deployment()["spec"]["template"]["spec"]["containers"][0]
    uid = deployment()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]

    d = start_dockerd("bookworm")
    try:
        d.docker("load", "-i", str(built.path))
        cid = d.docker(
            "run", "-d", "--read-only", "--network", "host", "--user", str(uid),
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "-e", "KUBERNETES_SERVICE_HOST=127.0.0.1",
            "-e", f"KUBERNETES_SERVICE_PORT={srv.port}",
            "-v", f"{sa}:{SA_DIR}:ro", "-v", f"{conf}:/etc/nodeagent:ro",
            TAG, *container["args"],
        )  # fmt: skip
        deadline = time.monotonic() + 60  # bounded: the container starts, lists, patches
        while time.monotonic() < deadline:
            if not (srv.get_node(NODE) or {})["spec"].get("taints"):
                break
            if d.docker("inspect", cid, "--format", "{{.State.Running}}") != "true":
                break
            time.sleep(0.2)
        logs = subprocess.run(
            ["docker", "-H", d.host, "logs", cid], capture_output=True, text=True, env=d.env()
        )
        assert not (srv.get_node(NODE) or {})["spec"].get("taints"), logs.stderr[-3000:]
        writes = [r for r in srv.requests if r.method == "PATCH"]
        assert writes and {r.user for r in writes} == {"nodeagent-controller"}
        d.docker("stop", "--time", "20", cid)
        state = d.docker("inspect", cid, "--format", "{{.State.ExitCode}}")
        logs = subprocess.run(
            ["docker", "-H", d.host, "logs", cid], capture_output=True, text=True, env=d.env()
        )
        assert state == "0", logs.stderr[-3000:]
        assert "Traceback" not in logs.stderr and "Read-only file system" not in logs.stderr
    finally:
        stop_dockerd(d)


# --- pushing it: what docs/install.md tells an operator ----------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry (distribution 2.8) on loopback: its ``host:port``."""
    if os.geteuid() != 0:
        skip_or_fail("registry", "the dockerd that pushes needs root")
    try:
        binary = unpacked("bookworm", "docker-registry") / "usr/bin/docker-registry"
    except FetchError as e:
        skip_or_fail("docker-registry", str(e))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
        "log: {level: warn}\n"
    )
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen([str(binary), "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30  # bounded: it answers /v2/ once it listens
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "registry.log").read_text()
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def skopeo() -> tuple[list[str], dict[str, str]]:
    """Debian's skopeo, unpacked with the one library the host may lack (libgpgme11)."""
    try:
        tree = unpacked("bookworm", "skopeo")
        gpgme = unpacked("bookworm", "libgpgme11")
    except FetchError as e:
        skip_or_fail("skopeo", str(e))
    env = {**os.environ, "LD_LIBRARY_PATH": str(gpgme / "usr/lib/x86_64-linux-gnu")}
    return [str(tree / "usr/bin/skopeo"), "--insecure-policy"], env


def registry_digest(where: str, repo: str, tag: str) -> str:
    req = urllib.request.Request(
        f"http://{where}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={
            "Accept": f"{image.OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(r.headers["Docker-Content-Digest"])


@pytest.mark.docker
def test_an_operator_pushes_it_with_skopeo_or_with_docker(
    built: Archive, registry: str, tmp_path: Path
) -> None:
    # skopeo copies the OCI archive as it is: the registry serves the digest make image printed
    cmd, env = skopeo()
    r = subprocess.run(
        [*cmd, "copy", "--dest-tls-verify=false", f"oci-archive:{built.path}",
         f"docker://{registry}/nodeagent:{VERSION}"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert registry_digest(registry, "nodeagent", VERSION) == built.digest
    # docker load + tag + push (docker recompresses the layers: its own digest)
    d = start_dockerd("bookworm")
    try:
        d.docker("load", "-i", str(built.path))
        d.docker("tag", TAG, f"{registry}/nodeagent:pushed-by-docker")
        d.docker("push", f"{registry}/nodeagent:pushed-by-docker")
    finally:
        stop_dockerd(d)
    with urllib.request.urlopen(f"http://{registry}/v2/nodeagent/tags/list", timeout=10) as r:
        tags = json.load(r)["tags"]
    assert sorted(tags) == sorted([VERSION, "pushed-by-docker"])


# --- containerd ---------------------------------------------------------------------------


@pytest.fixture(params=CONTAINERDS, ids=[f"containerd-{s}" for s in CONTAINERDS])
def containerd(request: pytest.FixtureRequest) -> Iterator[Containerd]:
    reason = needs_containerd()
    if reason:
        skip_or_fail("containerd", reason)
    base = Path(tempfile.mkdtemp(prefix="nai.", dir="/tmp"))
    try:
        c = Containerd(base, runtime("containerd", request.param))
    except FetchError as e:
        skip_or_fail(f"containerd of {request.param}", str(e))
    c.config.parent.mkdir(parents=True)
    c.config.write_text(c.base_toml())
    try:
        assert c.start(), c.log.read_text()[-2000:]
        yield c
    finally:
        c.teardown()


@pytest.mark.containerd
def test_ctr_imports_it_and_runs_it_read_only(built: Archive, containerd: Containerd) -> None:
    out = containerd.ctr("images", "import", str(built.path)) or ""
    name = image.full_name(TAG)
    assert name in out and built.digest in out
    listed = (containerd.ctr("images", "ls") or "").splitlines()
    assert any(line.split()[:3] == [name, image.OCI_MANIFEST, built.digest] for line in listed)
    # ctr run takes the user from the image's config (it has no --user)
    r = subprocess.run(
        ["ctr", "--address", str(containerd.sock), "run", "--rm", "--read-only", name,
         f"nai-{os.getpid()}", "/usr/bin/python3", "-c",
         "import os, subprocess; print(os.getuid());"
         "print(subprocess.run(['/usr/bin/nodeagent', '--version'], capture_output=True,"
         " text=True).stdout, end='')"],
        capture_output=True, text=True, timeout=120, env=containerd.env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n", 1) == [str(image.USER), f"nodeagent {VERSION}\n"]
