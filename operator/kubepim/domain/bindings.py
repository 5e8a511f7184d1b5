"""The RoleBinding or ClusterRoleBinding a grant should have, and how to recognise ours.

Names are deterministic (``kubepim-<request name>``), so creating is idempotent and a restart
finds what it made. Labels mark the operator's bindings for the orphan sweep; an ownerReference
to the AccessRequest lets the garbage collector remove the binding with its request.
"""

from __future__ import annotations

import hashlib
from typing import Any

from kubepim.api.common import API_VERSION
from kubepim.api.request import AccessRequestSpec, BindingRef

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubepim"
REQUEST_LABEL = "pim.kubepim.dev/request"
_RBAC = "rbac.authorization.k8s.io"
_MAX_NAME = 253
_MAX_LABEL_VALUE = 63


def binding_name(request_name: str) -> str:
    """Deterministic binding name for a request: ``kubepim-<name>``, never shortened.

    Admission refuses request names longer than 245 characters, so two requests never share a
    binding name. Should a longer one exist anyway, its name is hashed behind a ``:`` (which no
    request name holds), so it cannot reach another request's binding either.
    """
    name = f"kubepim-{request_name}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(request_name.encode()).hexdigest()
    return f"kubepim:{digest}"


def request_label(request_name: str) -> str:
    """Label value naming the request (label values are at most 63 characters)."""
    if len(request_name) <= _MAX_LABEL_VALUE:
        return request_name
    digest = hashlib.sha256(request_name.encode()).hexdigest()[:10]
    return f"{request_name[:_MAX_LABEL_VALUE - 11].rstrip('-.')}-{digest}"


def binding_ref(request_name: str, spec: AccessRequestSpec) -> BindingRef:
    """Where the binding of this request lives."""
    return binding_ref_in(request_name, spec.namespace)


def binding_ref_in(request_name: str, namespace: str | None) -> BindingRef:
    """Where the binding of a request for ``namespace`` (None: cluster-wide) lives."""
    if namespace is None:
        return BindingRef(kind="ClusterRoleBinding", name=binding_name(request_name))
    return BindingRef(kind="RoleBinding", name=binding_name(request_name), namespace=namespace)


def subject_for(username: str) -> dict[str, str]:
    """The RBAC subject of an authenticated username (ServiceAccounts by their own kind)."""
    parts = username.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return {"kind": "ServiceAccount", "name": parts[3], "namespace": parts[2]}
    return {"kind": "User", "apiGroup": _RBAC, "name": username}


def desired_binding(request_name: str, request_uid: str, spec: AccessRequestSpec) -> dict[str, Any]:
    """The full manifest of the binding that grants this request."""
    if spec.requester is None:
        raise ValueError("a request without a requester cannot be granted")
    ref = binding_ref(request_name, spec)
    metadata: dict[str, Any] = {
        "name": ref.name,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY, REQUEST_LABEL: request_label(request_name)},
        "ownerReferences": [{
            "apiVersion": API_VERSION, "kind": "AccessRequest", "name": request_name,
            "uid": request_uid, "controller": True,
        }],
    }
    if ref.namespace:
        metadata["namespace"] = ref.namespace
    return {
        "apiVersion": f"{_RBAC}/v1",
        "kind": ref.kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": _RBAC, "kind": spec.role.kind, "name": spec.role.name},
        "subjects": [subject_for(spec.requester.username)],
    }


def marked(binding: dict[str, Any]) -> bool:
    """Whether the binding carries kubepim's managed-by label."""
    labels = binding.get("metadata", {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY


def made_by_kubepim(binding: dict[str, Any], request_uid: str | None) -> bool:
    """Whether kubepim may replace or delete this binding.

    It may if the binding is owned by the request (ownerReference with the request's uid), or
    carries kubepim's managed-by label: whoever put the mark on it handed it to kubepim (a
    binding made to look like ours is removed, never adopted). Any other binding is someone
    else's and is never touched, whatever its name.
    """
    metadata = binding.get("metadata", {})
    owners = [o for o in metadata.get("ownerReferences") or [] if o.get("kind") == "AccessRequest"]
    if request_uid is not None and owners:
        # Owned by a request: this one's only if the uid is this request's (a request of the
        # same name, deleted and made again, does not take its predecessor's binding).
        return any(owner.get("uid") == request_uid for owner in owners)
    return marked(binding)


def _normal_subjects(subjects: list[dict[str, Any]] | None) -> list[tuple[str, str, str]]:
    return sorted(
        (s.get("kind", ""), s.get("name", ""), s.get("namespace") or "") for s in subjects or []
    )


def matches(actual: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether an existing binding grants exactly what the desired one does, with our marks."""
    labels = actual.get("metadata", {}).get("labels") or {}
    wanted_labels = desired["metadata"]["labels"]
    return (
        actual.get("roleRef", {}).get("kind") == desired["roleRef"]["kind"]
        and actual.get("roleRef", {}).get("name") == desired["roleRef"]["name"]
        and _normal_subjects(actual.get("subjects")) == _normal_subjects(desired["subjects"])
        and all(labels.get(k) == v for k, v in wanted_labels.items())
    )
