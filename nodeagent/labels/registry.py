"""The node's labels: every family, in order, as one pure function of the GPU inventory
and the label config (docs/labels.md).

A family is a function ``(inventory, healthy GPUs) -> labels`` and a switch in the config;
a new family is one module plus one :data:`FAMILIES` entry. Static labels from the config
come last, then ``labels.skip`` removes keys. Lost or failing GPUs are never counted.
"""

from __future__ import annotations

from typing import Callable

from nodeagent.config import LabelsConfig
from nodeagent.gpu.inventory import GPU, STATE_OK, Inventory
from nodeagent.kube.keys import is_valid_value, key_problem
from nodeagent.labels import clouds, gfd, own, simple

Family = Callable[[Inventory, tuple[GPU, ...], LabelsConfig], dict[str, str]]

# (name, the family) in the order they are merged; a later family wins a shared key.
FAMILIES: tuple[tuple[str, Family], ...] = (
    (
        "gfd",
        lambda inv, gpus, cfg: (
            gfd.labels(inv, gpus, cfg.mig_strategy, cfg.mps_sharing) if cfg.gfd else {}
        ),
    ),
    ("simple", lambda inv, gpus, cfg: simple.labels(inv, gpus) if cfg.simple else {}),
    ("own", lambda inv, gpus, cfg: own.labels(inv, gpus, cfg.prefix)),
    ("conventions", lambda inv, gpus, cfg: clouds.labels(gpus, cfg.conventions)),
)


def node_labels(inv: Inventory, cfg: LabelsConfig) -> dict[str, str]:
    """The labels this node should carry. Pure; keys sorted; every key and value valid."""
    labels: dict[str, str] = {}
    gpus = inv.healthy_gpus if inv.state == STATE_OK else ()
    if gpus:
        for _, family in FAMILIES:
            labels.update(family(inv, gpus, cfg))
    # A derived value the API server would reject is left out; the static labels need no
    # such filter: the config refuses an invalid one when it loads.
    labels = {k: v for k, v in labels.items() if is_valid_value(v) and not key_problem(k)}
    labels.update(cfg.static)
    for key in cfg.skip:
        labels.pop(key, None)
    return dict(sorted(labels.items()))
