"""The GPUs as NVML sees them: detection (:mod:`~nodeagent.gpu.nvml`) into typed records
(:mod:`~nodeagent.gpu.inventory`), architecture names (:mod:`~nodeagent.gpu.arch`), the XID
event watcher (:mod:`~nodeagent.gpu.events`), which XIDs are critical
(:mod:`~nodeagent.gpu.xid`) and the memory of the critical ones (:mod:`~nodeagent.gpu.health`).

May import the host layer and the config; never the runtime, Kubernetes or the walk.
"""
