"""CustomResourceDefinitions generated from the pydantic models: the one source of the schema.

``python -m kubepim.api.crd`` writes ``crds/`` and the chart's copy; ``--check`` fails when
either differs from what the models generate (CI runs it through the test suite).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from .accessreview import EligibilityReview, EligibilityReviewRun
from .common import GROUP, VERSION, Model
from .eligibility import RoleEligibility
from .notification import NotificationRoute
from .request import AccessRequest

_DROP = {"title", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn pydantic's JSON schema into a structural OpenAPI v3 schema (no refs, no nulls)."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _structural({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and (value is None or value in ([], {}))):
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = _structural(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("format") == "date-time":
        out.pop("default", None)
    return out


def _without_defaults(node: Any) -> Any:
    """Status is written, never defaulted: a default would make an untouched status differ."""
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {k: _without_defaults(v) for k, v in node.items() if k != "default"}


def openapi_schema(model: type[Model]) -> dict[str, Any]:
    """The openAPIV3Schema of one kind."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    schema["properties"] = {
        "apiVersion": {"type": "string", "description": "APIVersion of this object."},
        "kind": {"type": "string", "description": "Kind of this object."},
        "metadata": {"type": "object"},
        **schema["properties"],
    }
    status = _without_defaults(schema["properties"]["status"])
    schema["properties"]["status"] = status
    # kopf keeps its progress and diff-base here, so nothing is written to user metadata.
    status["properties"]["kopf"] = {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "description": "Operator bookkeeping (kopf progress storage).",
    }
    return schema


_COMMON_COLUMNS: list[dict[str, Any]] = [
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

KINDS: dict[type[Model], dict[str, Any]] = {
    RoleEligibility: {
        "singular": "roleeligibility",
        "shortNames": ["relig", "elig"],
        "columns": [
            {"name": "Ready", "type": "string",
             "jsonPath": ".status.conditions[?(@.type=='Ready')].status"},
            {"name": "Max", "type": "string", "jsonPath": ".spec.maxDuration"},
            {"name": "Approvals", "type": "integer", "jsonPath": ".spec.approval.required"},
            {"name": "Reason", "type": "string", "priority": 1,
             "jsonPath": ".status.conditions[?(@.type=='Ready')].message"},
        ],
    },
    AccessRequest: {
        "singular": "accessrequest",
        "shortNames": ["areq", "ar"],
        "columns": [
            {"name": "Requester", "type": "string", "jsonPath": ".spec.requester.username"},
            {"name": "Role", "type": "string", "jsonPath": ".spec.role.name"},
            {"name": "Namespace", "type": "string", "jsonPath": ".spec.namespace"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            # string, not date: a date column shows the age of a time, "<invalid>" if future.
            {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt"},
            {"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.message"},
        ],
        # Server-side field selectors (kubectl get ar --field-selector status.phase=Active): the
        # operator watches and lists only status.settled!=true; the rest serve users.
        "selectable": [".status.settled", ".status.phase", ".status.eligibility",
                       ".spec.requester.username"],
    },
    EligibilityReview: {
        "singular": "eligibilityreview",
        "shortNames": ["ereview"],
        "columns": [
            {"name": "Every", "type": "string", "jsonPath": ".spec.every"},
            {"name": "Undecided", "type": "string", "jsonPath": ".spec.whenUndecided"},
            {"name": "Last", "type": "string", "jsonPath": ".status.lastRun"},
            {"name": "Next", "type": "string", "jsonPath": ".status.nextRunAt"},
            {"name": "Ready", "type": "string", "priority": 1,
             "jsonPath": ".status.conditions[?(@.type=='Ready')].message"},
        ],
    },
    EligibilityReviewRun: {
        "singular": "eligibilityreviewrun",
        "shortNames": ["ereviewrun", "erun"],
        "columns": [
            {"name": "Review", "type": "string", "jsonPath": ".spec.review"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Deadline", "type": "string", "jsonPath": ".spec.deadline"},
            {"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.message"},
        ],
        # kubectl get erun --field-selector spec.review=quarterly,status.phase=Open
        "selectable": [".spec.review", ".status.phase"],
    },
    NotificationRoute: {
        "singular": "notificationroute",
        "shortNames": ["nroute"],
        "columns": [
            {"name": "Channel", "type": "string", "jsonPath": ".spec.channel.type"},
            {"name": "Ready", "type": "string",
             "jsonPath": ".status.conditions[?(@.type=='Ready')].status"},
            {"name": "Reason", "type": "string",
             "jsonPath": ".status.conditions[?(@.type=='Ready')].reason"},
            {"name": "Message", "type": "string", "priority": 1,
             "jsonPath": ".status.conditions[?(@.type=='Ready')].message"},
        ],
    },
}


def crd(model: type[Model]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    meta = KINDS[model]
    plural = model.plural  # type: ignore[attr-defined]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": model.kind_name,  # type: ignore[attr-defined]
                "plural": plural,
                "singular": meta["singular"],
                "shortNames": meta["shortNames"],
                "categories": ["kubepim"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": meta["columns"] + _COMMON_COLUMNS,
                **({"selectableFields": [{"jsonPath": path} for path in meta["selectable"]]}
                   if meta.get("selectable") else {}),
                "schema": {"openAPIV3Schema": openapi_schema(model)},
            }],
        },
    }


def rendered() -> dict[str, str]:
    """File name → YAML text of every CRD."""
    header = "# Generated by `python -m kubepim.api.crd` from operator/kubepim/api; do not edit.\n"
    return {
        f"{GROUP}_{model.plural}.yaml": header  # type: ignore[attr-defined]
        + yaml.safe_dump(crd(model), sort_keys=False, width=100)
        for model in KINDS
    }


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def targets(root: Path) -> list[Path]:
    """Directories that hold a copy of the CRDs."""
    return [root / "crds", root / "charts" / "kubepim" / "crds"]


def drift(root: Path) -> list[str]:
    """Paths whose content differs from the generated CRDs (missing or stale)."""
    problems = []
    for directory in targets(root):
        for name, text in rendered().items():
            path = directory / name
            if not path.is_file() or path.read_text() != text:
                problems.append(str(path))
    return problems


def main(argv: list[str] | None = None) -> int:
    """Write the CRDs, or with ``--check`` report drift and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m kubepim.api.crd")
    parser.add_argument("--check", action="store_true", help="fail if files differ")
    parser.add_argument("--root", type=Path, default=_repo_root(), help="repository root")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift(args.root)
        for path in stale:
            print(f"stale: {path}; regenerate with `python -m kubepim.api.crd`", file=sys.stderr)
        return 1 if stale else 0
    for directory in targets(args.root):
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in rendered().items():
            (directory / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
