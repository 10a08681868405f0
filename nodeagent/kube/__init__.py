"""Kubernetes: the API client (:mod:`~nodeagent.kube.client`), label key rules
(:mod:`~nodeagent.kube.keys`), a typed view of the Node parsed once
(:mod:`~nodeagent.kube.node`), the node's identity, the kubelet's extra args, the GPUReady
condition as a pure function (:mod:`~nodeagent.kube.readiness`), the patches and the report
that writes them, and the taint controller.

May import the host layer, the config, gpu and labels; never the runtime engines or the walk.
"""
