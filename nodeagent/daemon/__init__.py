"""``nodeagent run``: the long-running agent.

* :mod:`~nodeagent.daemon.loop` — the :class:`Daemon`: its threads, signals, reloads;
* :mod:`~nodeagent.daemon.reporter` — the one thread that talks to the API server;
* :mod:`~nodeagent.daemon.schedule` — when the reporter wakes, when a failed apply is re-run
  (pure);
* :mod:`~nodeagent.daemon.state` — what the threads share, under one lock, and the XID state
  file;
* :mod:`~nodeagent.daemon.telemetry` — the daemon's metrics and ``STATUS=`` lines;
* :mod:`~nodeagent.daemon.metrics` — a Prometheus registry, served and written as a textfile;
* :mod:`~nodeagent.daemon.sdnotify` — systemd's notify protocol.

The XID memory's rules are :mod:`nodeagent.gpu.health`'s; time comes from an injected
:class:`nodeagent.host.clock.Clock`. Built on :mod:`nodeagent.walk`; nothing outside the CLI
imports it.
"""
