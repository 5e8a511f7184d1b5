"""Admission webhooks served by the operator (kopf), and their configuration.

The webhooks judge what CEL in the API server cannot: whether an eligibility covers a new
request, whether the caller is an approver of the request's eligibility, and whether an
eligibility's author could bind its roles (SubjectAccessReview). Everything they need from the
caller comes from the admission request's userInfo. The configuration has failurePolicy Fail
(no operator, no new access) and a matchCondition that exempts the operator's own writes, so a
restarting operator never waits on its own webhook.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from kubepim import metrics
from kubepim.api.common import GROUP
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequest, AccessRequestStatus
from kubepim.domain import admission
from kubepim.settings import Settings

from . import registry
from .reconcile import Reconciler, utcnow

logger = logging.getLogger(__name__)

WEBHOOK_CONFIGURATION = "kubepim"
_RBAC = "rbac.authorization.k8s.io"


def _user(userinfo: kopf.UserInfo) -> admission.User:
    info: dict[str, Any] = dict(userinfo)
    return admission.User(
        username=str(info.get("username", "")), uid=str(info.get("uid") or ""),
        groups=tuple(info.get("groups") or ()), extra=dict(info.get("extra") or {}))


def _refuse(message: str) -> kopf.AdmissionError:
    return kopf.AdmissionError(message, code=403)


def _pretty(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())


@kopf.on.validate(GROUP, "accessrequests", operations=["CREATE"], id="accessrequest-create",
                  registry=registry)
async def accessrequest_admit_create(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Refuse a request no eligibility covers; the message says what the user may request."""
    with metrics.admission_timer("accessrequest-create"):
        reconciler: Reconciler = memo.reconciler
        try:
            spec = AccessRequest.model_validate(dict(body)).spec
        except ValidationError as error:
            raise _refuse(f"invalid AccessRequest: {_pretty(error)}") from error
        labels = await reconciler.namespace_labels(spec.namespace) if spec.namespace else {}
        refusal = admission.check_new_request(spec, await reconciler.eligibilities(), labels,
                                              utcnow())
        if refusal:
            raise _refuse(refusal)


@kopf.on.validate(GROUP, "accessrequests", subresource="status", operations=["UPDATE"],
                  id="accessrequest-decide", registry=registry)
async def accessrequest_admit_status(
    body: kopf.Body, userinfo: kopf.UserInfo, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Allow a decision or action only from someone entitled to it on this request."""
    with metrics.admission_timer("accessrequest-decide"):
        reconciler: Reconciler = memo.reconciler
        old: kopf.Body | None = kwargs.get("old")
        try:
            request = AccessRequest.model_validate(dict(body))
            previous = dict(old.get("status") or {}) if old is not None else {}
            before = AccessRequestStatus.model_validate(previous)
        except ValidationError as error:
            raise _refuse(f"invalid status: {_pretty(error)}") from error
        user = _user(userinfo)
        new = request.status or AccessRequestStatus()
        revoking = user.username in new.actions and user.username not in before.actions and \
            new.actions[user.username].action == "Revoke"
        may_revoke = revoking and await reconciler.kube.may(
            dict(userinfo), "revoke", GROUP, "accessrequests", name=body.metadata.name)
        labels: dict[str, str] | None = {}
        if before.eligibility is None and request.spec.namespace:
            labels = await reconciler.namespace_labels(request.spec.namespace)
        refusal = admission.check_status_change(user, request.spec, before, new,
                                                await reconciler.eligibilities(), may_revoke,
                                                labels)
        if refusal:
            raise _refuse(refusal)


@kopf.on.validate(GROUP, "roleeligibilities", operations=["CREATE", "UPDATE"],
                  id="roleeligibility-guard", registry=registry)
async def roleeligibility_admit(
    body: kopf.Body, userinfo: kopf.UserInfo, memo: kopf.Memo, **_: Any
) -> None:
    """Refuse an eligibility for roles its author could not bind, or deny-listed roles."""
    with metrics.admission_timer("roleeligibility-guard"):
        reconciler: Reconciler = memo.reconciler
        try:
            spec = RoleEligibilitySpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as error:
            raise _refuse(f"invalid RoleEligibility: {_pretty(error)}") from error
        author = str(userinfo.get("username"))
        # Where the author must be able to bind: each listed namespace; cluster-wide otherwise.
        places: list[str | None] = list(spec.namespaces)
        if spec.cluster_wide or spec.namespace_selector is not None:
            places.append(None)
        for role in spec.roles:
            resource = "clusterroles" if role.kind == "ClusterRole" else "roles"
            for place in places:
                if role.kind == "Role" and place is None:
                    continue
                if not await reconciler.kube.may(dict(userinfo), "bind", _RBAC, resource,
                                                 name=role.name, namespace=place):
                    where = f"in namespace {place}" if place else "cluster-wide"
                    raise _refuse(f"{author} may not make {role} eligible {where}: they cannot "
                                  "bind it themselves (RBAC verb bind); an eligibility grants "
                                  "no more than its author could")
            if spec.allow_privileged_roles:
                continue
            for place in places or [None]:
                rules = await reconciler.kube.role_rules(role.kind, role.name, place)
                reason = admission.privileged(role.kind, role.name, rules or [])
                if reason:
                    raise _refuse(f"{reason}, which is on the deny-list: set "
                                  "spec.allowPrivilegedRoles: true to allow it explicitly")


def webhook_configuration(
    settings: Settings, ca_file: Path, handler_ids: list[str]
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration of the operator's webhooks."""
    rules = {
        "accessrequest-create": ("accessrequests", ["CREATE"]),
        "accessrequest-decide": ("accessrequests/status", ["UPDATE"]),
        "roleeligibility-guard": ("roleeligibilities", ["CREATE", "UPDATE"]),
    }
    ca_bundle = base64.b64encode(ca_file.read_bytes()).decode()
    webhooks = []
    for handler_id in handler_ids:
        resource, operations = rules[handler_id]
        webhooks.append({
            "name": f"{handler_id}.{GROUP}",
            "clientConfig": {
                "url": f"https://{settings.webhook_host}:{settings.webhook_port}/{handler_id}",
                "caBundle": ca_bundle,
            },
            "rules": [{"apiGroups": [GROUP], "apiVersions": ["*"], "resources": [resource],
                       "operations": operations, "scope": "*"}],
            "matchConditions": [{
                "name": "not-the-operator",
                "expression": f"request.userInfo.username != '{settings.operator_username}'",
            }],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "admissionReviewVersions": ["v1"],
        })
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION,
                     "labels": {"app.kubernetes.io/managed-by": "kubepim"}},
        "webhooks": webhooks,
    }


HANDLER_IDS = ["accessrequest-create", "accessrequest-decide", "roleeligibility-guard"]
