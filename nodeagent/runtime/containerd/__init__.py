"""containerd: the config engine (:mod:`~nodeagent.runtime.containerd.engine`)."""
