"""docker: the config engine (:mod:`~nodeagent.runtime.docker.engine`), the daemon.json
editor (:mod:`~nodeagent.runtime.docker.jsonedit`) and where dockerd takes its flags from
(:mod:`~nodeagent.runtime.docker.flags`)."""
