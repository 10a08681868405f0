"""The host: the agent's only ways to touch the machine it runs on — its files, its
services, and its clock.

* :mod:`nodeagent.host.paths` — host paths under ``--root``, resolved inside it;
* :mod:`nodeagent.host.reader` — the one reader of host files (regular files only, size
  capped, decoded with a clear error, line endings recorded);
* :mod:`nodeagent.host.change` — a planned change to one file (pure data, its diff);
* :mod:`nodeagent.host.writer` — the one writer (lock, backup, temp + fsync + rename,
  owner/mode kept, symlinks followed inside the root, errno turned into one line, a
  restore handle for every write);
* :mod:`nodeagent.host.service` — telling a runtime daemon to reload or restart;
* :mod:`nodeagent.host.clock` — time and waiting, injectable so tests need not sleep.

The lowest layer: it imports only :mod:`nodeagent.errors`, :mod:`nodeagent.log` and
:mod:`nodeagent.retry`, never the config or anything above it.
"""
