"""Host paths and files that the tests which build a scratch host share: where the agent's
files live, and real-world contents of them (a kubeadm-style config.toml, containerd.io's
stock all-comments one)."""

from __future__ import annotations

DJ = "/etc/docker/daemon.json"
CT = "/etc/containerd/config.toml"
DI = "/etc/containerd/conf.d/99-nvidia.toml"
KA = "/etc/default/kubelet"
CRI = "io.containerd.grpc.v1.cri"
RUNC_V2 = "io.containerd.runc.v2"
TEMP_MARK = "nodeagent-tmp-"  # in the name of every temp file the agent's writer makes

# A node's config.toml as kubeadm guides write it (version 2, runc with the systemd driver).
CONTAINERD_TOML = f"""version = 2

[plugins."{CRI}"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."{CRI}".containerd]
    default_runtime_name = "runc"
    [plugins."{CRI}".containerd.runtimes.runc]
      runtime_type = "{RUNC_V2}"
      [plugins."{CRI}".containerd.runtimes.runc.options]
        SystemdCgroup = true
"""
