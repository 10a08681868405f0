"""A real kubelet 1.20.2 inside the e2e machine: its unit, what it needs there, its images.

What a kubelet needs that these machines do not give by themselves (recipe and reasons in
../shared/notes/real-cluster.md, "A real single-node cluster inside the nspawn machine"):

* **kernel tunables**: the kubelet writes six sysctls it wants (or fails); they are not
  namespaced, so the machine must never write the host's. ``e2e-kubelet-prep`` bind-mounts a
  small file holding the wanted value over each ``/proc/sys`` entry *inside the machine*
  (the kubelet then reads the value it wants and writes nothing), and creates ``/dev/kmsg``
  for the OOM watcher;
* **CAP_SYS_RESOURCE is missing** from every process's bounding set here, so a negative
  ``oom_score_adj`` cannot be written, and dockershim gives each pod sandbox -998: runc then
  fails ("can't get final child's PID from pipe: EOF"). The nvidia-container-runtime
  stand-in — the runtime the agent makes docker's default — clamps a negative
  ``process.oomScoreAdj`` in the bundle's config.json to 0 before it execs runc, and logs
  that it did. On a real host the real runtime runs and nothing is clamped;
* **images without a registry**: the pod sandbox image is ``tests/e2e/pause.c`` built static
  (``local/pause:3.2``), the pod's image is busybox-static (``bb:local``), both
  ``docker import``-ed; pods use ``imagePullPolicy: Never`` and ``hostNetwork: true`` (no CNI).
"""

from __future__ import annotations

import subprocess
import tempfile
import textwrap
from pathlib import Path

from tests.e2e.machine import Machine

HERE = Path(__file__).resolve().parent
KUBE_BIN = "/opt/kube/bin"
PAUSE_IMAGE = "local/pause:3.2"
POD_IMAGE = "bb:local"

#: The sysctls the kubelet wants (pkg/kubelet/cm/container_manager_linux.go, setupKernelTunables).
TUNABLES = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}

PREP = (
    "#!/bin/sh\n# e2e only: what the kubelet needs inside this machine (tests/e2e/realkubelet.py)\n"
)
PREP += "set -e\nd=/run/e2e-sysctl\nmkdir -p $d\n"
PREP += "".join(
    f'if [ "$(cat /proc/sys/{k})" != "{v}" ]; then f=$d/{k.replace("/", "_")}; '
    f"echo {v} > $f; mount --bind $f /proc/sys/{k}; fi\n"
    for k, v in TUNABLES.items()
)
PREP += "[ -e /dev/kmsg ] || touch /dev/kmsg\n"


def kubelet_unit(node: str) -> str:
    """The kubelet's unit: the agent's args file (``KUBELET_EXTRA_ARGS``: labels, startup
    taint) on top of the flags these machines need."""
    flags = " ".join(
        [
            "--kubeconfig=/etc/kubernetes/kubelet.conf",
            "--container-runtime=docker",
            "--cgroups-per-qos=false",
            "--enforce-node-allocatable=",
            "--fail-swap-on=false",
            "--cgroup-driver=cgroupfs",
            f"--hostname-override={node}",
            "--node-ip=127.0.0.1",
            f"--pod-infra-container-image={PAUSE_IMAGE}",
            "--image-gc-high-threshold=100",
            "--eviction-hard=",
        ]
    )
    return textwrap.dedent(
        f"""\
        [Unit]
        Description=kubelet 1.20.2 (built from Debian's source; the real-cluster e2e)
        After=docker.service nodeagent-bootstrap.service
        Wants=docker.service

        [Service]
        EnvironmentFile=-/etc/default/kubelet
        ExecStartPre=/usr/local/sbin/e2e-kubelet-prep
        ExecStart={KUBE_BIN}/kubelet {flags} $KUBELET_EXTRA_ARGS
        Restart=on-failure
        RestartSec=1

        [Install]
        WantedBy=multi-user.target
        """
    )


RUNTIME_STANDIN = '''\
#!/usr/bin/python3
"""nvidia-container-runtime stand-in (real-kubelet e2e): records each call, clamps a negative
oomScoreAdj (this machine cannot grant CAP_SYS_RESOURCE; see tests/e2e/realkubelet.py), then
is runc."""
import json, os, sys

args = sys.argv[1:]
with open("/var/log/nvidia-runtime-calls", "a") as log:
    log.write(" ".join(args) + "\\n")
    bundle = None
    for i, a in enumerate(args):
        if a in ("--bundle", "-b") and i + 1 < len(args):
            bundle = args[i + 1]
        elif a.startswith("--bundle="):
            bundle = a.split("=", 1)[1]
    if "create" in args and bundle:
        path = os.path.join(bundle, "config.json")
        with open(path) as f:
            spec = json.load(f)
        if spec.get("process", {}).get("oomScoreAdj", 0) < 0:
            spec["process"]["oomScoreAdj"] = 0
            with open(path, "w") as f:
                json.dump(spec, f)
            log.write("clamped oomScoreAdj to 0\\n")
os.execvp("runc", ["runc", *args])
'''


def install(m: Machine, node: str) -> None:
    """The kubelet's unit (enabled), its prep script, the runtime stand-in and the pause
    binary, under the machine's root (before boot)."""
    r = m.root
    prep = r / "usr/local/sbin/e2e-kubelet-prep"
    prep.parent.mkdir(parents=True, exist_ok=True)
    prep.write_text(PREP)
    prep.chmod(0o755)
    (r / "etc/systemd/system/kubelet.service").write_text(kubelet_unit(node))
    runtime = r / "usr/bin/nvidia-container-runtime"
    runtime.write_text(RUNTIME_STANDIN)
    runtime.chmod(0o755)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pause"
        subprocess.run(
            ["gcc", "-static", "-O2", "-o", str(out), str(HERE / "pause.c")],
            check=True,
            capture_output=True,
        )
        dest = r / "usr/local/share/e2e/pause"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(out.read_bytes())
        dest.chmod(0o755)


def import_images(m: Machine) -> None:
    """``local/pause:3.2`` and ``bb:local`` into the machine's docker (once it runs)."""
    script = textwrap.dedent(
        f"""\
        set -e
        p=$(mktemp -d); cp /usr/local/share/e2e/pause $p/pause
        tar -C $p -c . | docker import -c 'ENTRYPOINT ["/pause"]' - {PAUSE_IMAGE} >/dev/null
        d=$(mktemp -d); mkdir -p $d/bin; cp /bin/busybox $d/bin/
        for c in sh sleep true cat echo env; do ln -s busybox $d/bin/$c; done
        tar -C $d -c . | docker import - {POD_IMAGE} >/dev/null
        """
    )
    m.run("sh", "-c", script, check=True, timeout=60)
