"""The conventions operators already select on: ``gpu=true``, ``gpu-type=<short model>``
(``V100``, ``H100``; ``mixed`` when the GPUs disagree). Pure."""

from __future__ import annotations

from nodeagent.gpu.arch import short_model
from nodeagent.gpu.inventory import GPU, Inventory
from nodeagent.labels.values import MIXED, sanitize_value


def labels(inv: Inventory, gpus: tuple[GPU, ...]) -> dict[str, str]:
    out = {"gpu": "true"}
    models = {sanitize_value(short_model(g.name)) for g in gpus}
    if len(models) == 1 and None not in models:
        (model,) = models
        assert model is not None
        out["gpu-type"] = model
    else:
        out["gpu-type"] = MIXED
    return out
