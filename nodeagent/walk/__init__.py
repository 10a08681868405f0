"""The walk: ``apply`` and ``check`` over the parts, phase by phase.

* :mod:`nodeagent.walk.agent` — :class:`Agent`: detect → runtime → kubelet args → Node;
* :mod:`nodeagent.walk.steps` — what one step did (:class:`StepResult`) and a whole apply;
* :mod:`nodeagent.walk.check` — the read-only probes of ``nodeagent check``.

May import every layer below it (gpu, labels, runtime, kube, host); nothing below imports it.
"""
