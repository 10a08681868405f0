"""``nodeagent run``: the long-running agent (:mod:`~nodeagent.daemon.loop`), its memory of
XIDs (:mod:`~nodeagent.gpu.health`), Prometheus metrics (:mod:`~nodeagent.daemon.metrics`)
and systemd's notify protocol (:mod:`~nodeagent.daemon.sdnotify`).

Built on :mod:`nodeagent.walk`; nothing outside the CLI imports it.
"""
