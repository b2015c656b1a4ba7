"""Schema-validates rendered Kubernetes manifests, offline.

Usage: check_manifests.py SCHEMA_DIR NAME=RENDERED.yaml [NAME=RENDERED.yaml ...]

Each RENDERED.yaml is the output of `kubectl kustomize` for one overlay.
Every object is checked against its schema:
  - built-in kinds against the Kubernetes OpenAPI schemas shipped with the
    `kubernetes-validate` package, strict (an unknown field is an error),
    for every Kubernetes minor version in KUBERNETES_VERSIONS;
  - custom resources against the JSON schemas kept in SCHEMA_DIR
    (<group>/<kind>_<version>.json, see k8s/schemas/README.md).
An object of a kind that has neither is an error, never skipped.

Then a few rules that a schema cannot express, checked across objects:
every Deployment has readiness and liveness probes, CPU and memory
requests, a memory limit, runs as non-root, and is covered by a
PodDisruptionBudget; every autoscaler targets a Deployment that exists and
no Deployment has two autoscalers; the production overlay pins its image
and runs a three-node broker and a three-instance database.
Exit status 1 with one line per problem when anything fails.
"""

import json
import os
import re
import sys

import jsonschema
import referencing
import yaml
from kubernetes_validate import utils as kv

# The oldest and the newest minor versions the manifests must be valid for.
KUBERNETES_VERSIONS = ["1.29", "1.33"]


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def crd_schema_path(schema_dir, obj):
    api = obj.get("apiVersion", "")
    if "/" not in api:
        return None
    group, version = api.split("/", 1)
    if "." not in group:
        return None  # a built-in group such as apps or batch
    if group.endswith(".k8s.io") and group != "metrics.k8s.io":
        return None  # built-in API groups (networking.k8s.io ...)
    return os.path.join(schema_dir, group, f"{obj['kind'].lower()}_{version}.json")


_crd_validators = {}


def crd_validator(path):
    if path not in _crd_validators:
        with open(path) as f:
            schema = json.load(f)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        _crd_validators[path] = cls(schema)
    return _crd_validators[path]


_k8s_validators = {}


def k8s_validator(obj, version):
    """The strict validator of kubernetes-validate's schema for this kind,
    built as its validate() does, so that every error is reported, not
    only the first."""
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    key = (obj["kind"].lower(), api, version)
    if key not in _k8s_validators:
        full = [v for v in kv.all_versions() if kv.major_minor(v) == version][-1]
        folder = f"kubernetes-json-schema/v{full}-local-strict"
        try:
            schema = kv.schema_contents(f"{folder}/{key[0]}-{api}.json", version)
        except FileNotFoundError:
            _k8s_validators[key] = None
            return None
        defs = kv.schema_contents(f"{folder}/_definitions.json", version)
        registry = referencing.Registry()
        registry = referencing.Resource.from_contents(schema) @ registry
        registry = referencing.Resource.from_contents(defs) @ registry
        _k8s_validators[key] = jsonschema.Draft202012Validator(schema, registry=registry)
    return _k8s_validators[key]


def where(err):
    return "/".join(str(p) for p in err.absolute_path) or "(top)"


def schema_problems(schema_dir, obj):
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    path = crd_schema_path(schema_dir, obj)
    if path is not None:
        if not os.path.exists(path):
            return [f"{name}: no schema for {obj['apiVersion']} {obj['kind']} "
                    f"(expected {os.path.relpath(path)}; add it, see k8s/schemas/README.md)"]
        errors = sorted(crd_validator(path).iter_errors(obj), key=lambda e: list(e.absolute_path))
        return [f"{name}: {where(e)}: {e.message}" for e in errors[:5]]
    problems = []
    for version in KUBERNETES_VERSIONS:
        validator = k8s_validator(obj, version)
        if validator is None:
            problems.append(f"{name}: no schema for {obj.get('apiVersion')} {obj.get('kind')} "
                            f"in Kubernetes {version}")
            continue
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        problems += [f"{name}: {where(e)}: {e.message} (Kubernetes {version})" for e in errors[:5]]
    return problems


def labels_match(selector, labels):
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        value = labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr.get("values", []):
            return False
        if op == "NotIn" and value in expr.get("values", []):
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def rule_problems(overlay, objs):
    problems = []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    pdbs = by_kind.get("PodDisruptionBudget", [])

    for name, d in deployments.items():
        pod = d["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        spec = pod["spec"]
        if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
            problems.append(f"Deployment/{name}: pod securityContext.runAsNonRoot is not true")
        for c in spec["containers"]:
            cname = f"Deployment/{name} container {c['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{cname}: no {probe}")
            res = c.get("resources") or {}
            req = res.get("requests") or {}
            for k in ("cpu", "memory"):
                if k not in req:
                    problems.append(f"{cname}: no {k} request")
            if "memory" not in (res.get("limits") or {}):
                problems.append(f"{cname}: no memory limit")
        if not any(labels_match(p["spec"].get("selector", {}), labels) for p in pdbs):
            problems.append(f"Deployment/{name}: no PodDisruptionBudget selects its pods")

    targets = {}
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        targets.setdefault(ref["name"], []).append(f"HorizontalPodAutoscaler/{h['metadata']['name']}")
    for s in by_kind.get("ScaledObject", []):
        ref = s["spec"]["scaleTargetRef"]
        if ref.get("kind", "Deployment") == "Deployment":
            targets.setdefault(ref["name"], []).append(f"ScaledObject/{s['metadata']['name']}")
    for target, scalers in targets.items():
        if target not in deployments:
            problems.append(f"{', '.join(scalers)}: targets Deployment/{target}, which does not exist")
        if len(scalers) > 1:
            problems.append(f"Deployment/{target}: more than one autoscaler ({', '.join(scalers)})")
    auths = {a["metadata"]["name"] for a in by_kind.get("TriggerAuthentication", [])}
    for s in by_kind.get("ScaledObject", []):
        for t in s["spec"].get("triggers", []):
            ref = (t.get("authenticationRef") or {}).get("name")
            if ref and ref not in auths:
                problems.append(f"ScaledObject/{s['metadata']['name']}: TriggerAuthentication/{ref} does not exist")

    if overlay == "production":
        for name, d in deployments.items():
            for c in d["spec"]["template"]["spec"]["containers"]:
                image = c["image"]
                if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                    problems.append(f"Deployment/{name}: image {image} is not pinned to a tag")
        for r in by_kind.get("RabbitmqCluster", []) or [None]:
            if r is None or not isinstance(r["spec"].get("replicas"), int) or r["spec"]["replicas"] < 3:
                problems.append("production: needs a RabbitmqCluster of at least 3 nodes (quorum queues)")
        for c in by_kind.get("Cluster", []) or [None]:
            if c is None or not isinstance(c["spec"].get("instances"), int) or c["spec"]["instances"] < 3:
                problems.append("production: needs a CloudNativePG Cluster of at least 3 instances")
    return problems


def main():
    schema_dir = sys.argv[1]
    failed = False
    for arg in sys.argv[2:]:
        overlay, path = arg.split("=", 1)
        try:
            objs = load_docs(path)
        except yaml.YAMLError as e:
            print(f"check-deploy: {overlay}: not YAML: {e}", file=sys.stderr)
            failed = True
            continue
        problems = []
        for obj in objs:
            problems += schema_problems(schema_dir, obj)
        try:
            problems += rule_problems(overlay, objs)
        except (KeyError, TypeError, AttributeError) as e:
            # Only an object that failed its schema gets here.
            problems.append(f"cross-object rules could not run: {type(e).__name__} {e}")
        if problems:
            failed = True
            for p in problems:
                print(f"check-deploy: {overlay}: {p}", file=sys.stderr)
        else:
            kinds = sorted({o["kind"] for o in objs})
            print(f"check-deploy: {overlay}: {len(objs)} objects valid ({', '.join(kinds)})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
