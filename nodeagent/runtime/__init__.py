"""Container runtimes: one config-engine interface (:mod:`~nodeagent.runtime.engine`), the
registry of engines by name (:mod:`~nodeagent.runtime.registry`), the choice of engine
(:mod:`~nodeagent.runtime.select`), and one package per runtime
(:mod:`~nodeagent.runtime.docker`, :mod:`~nodeagent.runtime.containerd`).

Engines edit and plan; writing, reloading and restarting go through the host layer
(:mod:`nodeagent.host.service`). May import the host layer and the config; never
Kubernetes, the walk, the daemon or the CLI.
"""
