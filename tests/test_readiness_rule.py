"""deploy/node-readiness-rule.yaml against the Node Readiness Controller's own CRD (v0.5.0).

The CRD (tests/data/node-readiness-controller, source noted there) is checked the two ways an
API server checks a custom resource: its ``openAPIV3Schema`` (with jsonschema) and every
``x-kubernetes-validations`` CEL rule of it (with cel-python, a CEL evaluator; ``split`` is
Kubernetes' CEL strings extension, which cel-python lacks, so it is added here as documented:
https://pkg.go.dev/github.com/google/cel-go/ext#Strings). Transition rules (``oldSelf``) apply
to updates only and are skipped. Each broken copy of the rule must fail for its own reason, so
the checks are shown to bite.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from nodeagent.config import KubeConfig

REPO = Path(__file__).resolve().parents[1]
RULE = REPO / "deploy" / "node-readiness-rule.yaml"
CRD = REPO / "tests" / "data" / "node-readiness-controller" / "nodereadinessrules.yaml"
CONTROLLER = REPO / "deploy" / "controller.yaml"


def _split(s: celtypes.StringType, sep: celtypes.StringType, *limit: Any) -> celtypes.ListType:
    """CEL strings extension ``split``: ``'a/b'.split('/')`` → ``['a', 'b']``; an optional
    limit n > 0 keeps at most n parts, 0 gives none, a negative one all."""
    if limit:
        n = int(limit[0])
        if n == 0:
            return celtypes.ListType([])
        parts = str(s).split(str(sep), n - 1) if n > 0 else str(s).split(str(sep))
    else:
        parts = str(s).split(str(sep))
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def cel_rules(schema: dict[str, Any], obj: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, rule, message, self) for each CEL rule of ``schema`` that applies to ``obj``."""
    for v in schema.get("x-kubernetes-validations", ()):
        if "oldSelf" not in v["rule"]:
            yield path or ".", v["rule"], (v.get("message", v["rule"]), obj)
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                yield from cel_rules(sub, obj[key], f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            yield from cel_rules(schema["items"], item, f"{path}[{i}]")


def problems(doc: dict[str, Any]) -> list[str]:
    """What an API server with this CRD would refuse in ``doc`` (empty: accepted)."""
    schema = crd_schema()
    out = [
        f"schema {e.validator}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft4Validator(schema).iter_errors(doc)
    ]
    env = celpy.Environment()
    for path, rule, (message, value) in cel_rules(schema, doc):
        program = env.program(env.compile(rule), functions={"split": _split})
        try:
            result = program.evaluate({"self": json_to_cel(value)})
        except CELEvalError as e:  # e.g. a required key missing: refused as well
            out.append(f"cel: {path}: {rule!r} cannot be evaluated: {e.args[0]}")
            continue
        if not result:
            out.append(f"cel: {path}: {message}")
    return out


def rule() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(RULE.read_text())
    return doc


def test_the_shipped_rule_is_accepted_and_every_cel_rule_ran() -> None:
    doc = rule()
    assert doc["apiVersion"] == "readiness.node.x-k8s.io/v1alpha1"
    assert doc["kind"] == "NodeReadinessRule"
    assert problems(doc) == []
    ran = [r for _, r, _ in cel_rules(crd_schema(), doc)]
    assert any("startsWith('readiness.k8s.io/')" in r for r in ran)  # the taint's rules ran
    assert len(ran) >= 7


def test_the_rule_names_what_the_agent_reports_and_taints() -> None:
    """The rule lifts the taint the agent registers once the condition it reports is True,
    on the nodes its labels mark, with the names the controller's config uses too."""
    spec = rule()["spec"]
    defaults = KubeConfig()
    assert spec["conditions"] == [{"type": defaults.condition_type, "requiredStatus": "True"}]
    assert spec["taint"]["key"] == defaults.startup_taint_key
    assert spec["taint"]["effect"] == "NoSchedule"
    assert spec["nodeSelector"] == {"matchLabels": {"nvidia.com/gpu.present": "true"}}
    controller_cfg = next(
        yaml.safe_load(d["data"]["config.yaml"])
        for d in yaml.safe_load_all(CONTROLLER.read_text())
        if d and d.get("kind") == "ConfigMap"
    )
    assert controller_cfg["kube"]["condition_type"] == defaults.condition_type
    assert controller_cfg["kube"]["startup_taint_key"] == defaults.startup_taint_key


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "refused"),
    [
        ("spec.taint.key", "nodeagent.io/gpu-not-ready", "taint key must start with"),
        ("spec.taint.key", "readiness.k8s.io/a/b", "exactly one '/'"),
        ("spec.taint.key", "readiness.k8s.io/-bad", "alphanumeric"),
        ("spec.taint.value", "x" * 64, "at most 63"),
        ("spec.taint.effect", "NoScheduling", "taint effect must be one of"),
        ("spec.enforcementMode", "always", "schema enum: spec.enforcementMode"),
        ("spec.conditions.0.requiredStatus", "true", "schema enum: spec.conditions.0"),
        ("spec.conditions", [], "schema minItems: spec.conditions"),
        ("spec.nodeSelector", DELETE, "schema required: spec: 'nodeSelector'"),
        ("spec.taint.effect", DELETE, "schema required: spec.taint: 'effect'"),
    ],
)
def test_a_broken_rule_is_refused_for_its_own_reason(path: str, value: Any, refused: str) -> None:
    doc = copy.deepcopy(rule())
    _set(doc, path, value)
    found = problems(doc)
    assert any(refused in p for p in found), found
