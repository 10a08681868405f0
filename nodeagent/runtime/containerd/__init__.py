"""containerd: the config engine (:mod:`~nodeagent.runtime.containerd.engine`) and the pure
TOML editing it plans with (:mod:`~nodeagent.runtime.containerd.tomledit`)."""
