"""Container runtimes: one config-engine interface (:mod:`~nodeagent.runtime.engine`), the
choice of engine (:mod:`~nodeagent.runtime.select`), and one package per runtime
(:mod:`~nodeagent.runtime.docker`, :mod:`~nodeagent.runtime.containerd`).

May import the host layer and the config; never Kubernetes or the walk.
"""
