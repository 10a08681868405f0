"""The host: where the agent reads and writes files, and nothing else.

* :mod:`nodeagent.host.reader` — the one reader of host files (regular files only, size
  capped, decoded with a clear error, line endings recorded);
* :mod:`nodeagent.host.change` — a planned change to one file (pure data, its diff);
* :mod:`nodeagent.host.writer` — the one writer (lock, backup, temp + fsync + rename,
  owner/mode kept, symlinks followed inside the root, errno turned into one line, a
  restore handle for every write).
"""
