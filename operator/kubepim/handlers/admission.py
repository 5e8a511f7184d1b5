"""Admission webhooks served by the operator (kopf), and their configuration.

The webhooks judge what CEL in the API server cannot: whether an eligibility covers a new
request, whether the caller is an approver of the request's eligibility, and whether an
eligibility's author could bind its roles (SubjectAccessReview). Everything they need from the
caller comes from the admission request's userInfo. The configuration has failurePolicy Fail
(no operator, no new access) and a matchCondition that exempts the operator's own writes, so a
restarting operator never waits on its own webhook.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from kubepim import metrics
from kubepim.api.accessreview import EligibilityReviewRun, EligibilityReviewRunStatus
from kubepim.api.common import GROUP
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import AccessRequest, AccessRequestSpec, AccessRequestStatus
from kubepim.domain import admission, bindings, recertification
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
    # A decision, logged as one (kopf's own "failed permanently" ERROR is filtered out).
    logger.info("admission refused: %s", message)
    return kopf.AdmissionError(message, code=403)


def _pretty(error: ValidationError, prefix: str = "") -> str:
    return "; ".join(f"{prefix}{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                     for e in error.errors())


@kopf.on.validate(GROUP, "accessrequests", operations=["CREATE"], id="accessrequest-create",
                  registry=registry)
async def accessrequest_admit_create(
    body: kopf.Body, memo: kopf.Memo, dryrun: bool = False, **_: Any
) -> None:
    """Refuse a request that is not allowed, saying what is.

    Refused: one no eligibility covers (the message says what the user may request), one past
    its requester's limits, one whose metadata would let it outlive its record, and one whose
    binding name is taken by a binding kubepim did not make.
    """
    with metrics.admission_timer("accessrequest-create"):
        reconciler: Reconciler = memo.reconciler
        config: Settings = memo.settings
        try:
            spec = AccessRequest.model_validate(dict(body)).spec
        except ValidationError as error:
            raise _refuse(f"invalid AccessRequest: {_pretty(error, 'spec.')}") from error
        name = str(body.metadata.name or "")
        size = len(json.dumps(dict(body), separators=(",", ":")))
        refusal = admission.check_metadata(name, dict(body.get("metadata") or {}), size,
                                           config.max_request_bytes)
        if refusal:
            raise _refuse(refusal)
        if spec.requester is not None:
            # Checked and counted with no await in between: concurrent creates served by this
            # replica see each other (the leader's first reconcile checks again, authoritatively).
            held = reconciler.limits.counts(spec.requester.username)
            refusal = admission.check_limits(
                spec.requester.username, held.open, held.unreviewed_break_glass,
                spec.break_glass, config.max_open_requests, config.max_unreviewed_break_glass)
            if refusal:
                raise _refuse(refusal)
            if not dryrun:
                reconciler.limits.admit(name, spec)
        try:
            await _check_coverage_and_name(reconciler, name, spec)
        except kopf.AdmissionError:
            reconciler.limits.unadmit(name)
            raise


async def _check_coverage_and_name(
    reconciler: Reconciler, name: str, spec: AccessRequestSpec
) -> None:
    labels = await reconciler.namespace_labels(spec.namespace) if spec.namespace else {}
    eligibilities = await reconciler.eligibilities()
    refusal = admission.check_new_request(spec, eligibilities, labels, utcnow(),
                                          reconciler.state.privileged)
    if refusal:
        suspended = spec.requester and recertification.suspension_note(
            reconciler.state.suspensions(), eligibilities, spec.requester.username,
            spec.requester.groups, spec.role, reconciler.case)
        raise _refuse(f"{suspended}. {refusal}" if suspended else refusal)
    ref = bindings.binding_ref(name, spec)
    # Read, not looked up: the binding watch sees only bindings carrying kubepim's label.
    existing = await reconciler.kube.get_binding(ref.kind, ref.name, ref.namespace)
    if existing is not None and not bindings.made_by_kubepim(existing, None):
        where = f" in namespace {ref.namespace}" if ref.namespace else ""
        raise _refuse(f"{ref.kind} {ref.name} already exists{where} and was not made by "
                      "kubepim, which never replaces it: choose another name for this "
                      "request")


@kopf.on.validate(GROUP, "accessrequests", subresource="status", operations=["UPDATE"],
                  id="accessrequest-decide", registry=registry)
async def accessrequest_admit_status(
    body: kopf.Body, userinfo: kopf.UserInfo, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Allow a decision or action only from someone entitled to it on this request.

    A decision also only from someone the requester cannot act as.
    """
    with metrics.admission_timer("accessrequest-decide"):
        reconciler: Reconciler = memo.reconciler
        old: kopf.Body | None = kwargs.get("old")
        try:
            request = AccessRequest.model_validate(dict(body))
            previous = dict(old.get("status") or {}) if old is not None else {}
            before = AccessRequestStatus.model_validate(previous)
        except ValidationError as error:
            raise _refuse(f"invalid status: {_pretty(error, 'status.')}") from error
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
                                                labels, reconciler.case)
        if refusal:
            raise _refuse(refusal)
        deciding = user.username in new.approvals and user.username not in before.approvals
        requester = request.spec.requester
        if deciding and requester is not None:
            refusal = await _requester_can_act_as(reconciler, requester.wire(), user.username)
            if refusal:
                raise _refuse(refusal)


async def _requester_can_act_as(
    reconciler: Reconciler, requester: dict[str, Any], approver: str
) -> str | None:
    """Ask the API server whether the requester could authenticate as the approver."""
    checks = admission.acting_as(approver)
    answers = await asyncio.gather(*(
        reconciler.kube.may(requester, check.verb, check.group, check.resource,
                            name=check.name or None, namespace=check.namespace)
        for check in checks))
    for check, allowed in zip(checks, answers, strict=True):
        if allowed:
            return admission.acting_as_refusal(str(requester.get("username")), approver,
                                               check.says)
    return None


@kopf.on.validate(GROUP, "eligibilityreviewruns", subresource="status", operations=["UPDATE"],
                  id="eligibilityreviewrun-decide", registry=registry)
async def review_run_admit_status(
    body: kopf.Body, userinfo: kopf.UserInfo, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Allow a reviewer's new decisions only on subjects they may review, while they may.

    (The CEL policy of files/admission/review.yaml already refused changes to others' entries
    and to the rest of the status, and stamped the entry: docs/reviews.md.)
    """
    with metrics.admission_timer("eligibilityreviewrun-decide"):
        reconciler: Reconciler = memo.reconciler
        old: kopf.Body | None = kwargs.get("old")
        try:
            run = EligibilityReviewRun.model_validate(dict(body))
            previous = dict(old.get("status") or {}) if old is not None else {}
            before = EligibilityReviewRunStatus.model_validate(previous)
        except ValidationError as error:
            raise _refuse(f"invalid status: {_pretty(error, 'status.')}") from error
        user = _user(userinfo)
        new = run.status or EligibilityReviewRunStatus()
        refusal = recertification.check_decisions(
            run.spec, before.phase, before.decisions, new.decisions,
            user.username, user.groups, utcnow(), before.outcomes, reconciler.case)
        if refusal:
            raise _refuse(refusal)


@kopf.on.validate(GROUP, "roleeligibilities", operations=["CREATE", "UPDATE"],
                  id="roleeligibility-guard", registry=registry)
async def roleeligibility_admit(
    body: kopf.Body, userinfo: kopf.UserInfo, memo: kopf.Memo, **_: Any
) -> None:
    """Refuse an eligibility its author could not bind wherever it reaches, or deny-listed."""
    with metrics.admission_timer("roleeligibility-guard"):
        reconciler: Reconciler = memo.reconciler
        try:
            spec = RoleEligibilitySpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as error:
            raise _refuse(f"invalid RoleEligibility: {_pretty(error, 'spec.')}") from error
        author = str(userinfo.get("username"))
        checks = admission.bind_checks(spec)
        answers = await asyncio.gather(*(
            reconciler.kube.may(dict(userinfo), "bind", _RBAC,
                                "clusterroles" if c.role.kind == "ClusterRole" else "roles",
                                name=c.role.name, namespace=c.namespace)
            for c in checks))
        for check, allowed in zip(checks, answers, strict=True):
            if not allowed:
                raise _refuse(f"{author} may not make {check.role} eligible {check.where}: "
                              "they cannot bind it themselves (RBAC verb bind); an eligibility "
                              "grants no more than its author could")
        if spec.allow_privileged_roles:
            return
        for role in spec.roles:
            places: list[str | None] = [None] if role.kind == "ClusterRole" else \
                list(spec.namespaces)
            for namespace in places:
                rules = await reconciler.kube.role_rules(role.kind, role.name, namespace)
                reason = admission.privileged(role.kind, role.name, rules or [], namespace)
                if reason:
                    raise _refuse(f"{reason}, which is on the deny-list: set "
                                  "spec.allowPrivilegedRoles: true to allow it explicitly")
            if role.kind == "Role" and spec.namespace_selector is not None:
                reasons = reconciler.state.privileged_where_selected(role.name,
                                                               spec.namespace_selector)
                if reasons:
                    raise _refuse(f"{reasons[0]}, which is on the deny-list: set "
                                  "spec.allowPrivilegedRoles: true to allow it explicitly")


def webhook_configuration(
    settings: Settings, ca_file: Path, handler_ids: list[str]
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration of the operator's webhooks."""
    rules = {
        "accessrequest-create": ("accessrequests", ["CREATE"]),
        "accessrequest-decide": ("accessrequests/status", ["UPDATE"]),
        "roleeligibility-guard": ("roleeligibilities", ["CREATE", "UPDATE"]),
        "eligibilityreviewrun-decide": ("eligibilityreviewruns/status", ["UPDATE"]),
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


HANDLER_IDS = ["accessrequest-create", "accessrequest-decide", "roleeligibility-guard",
               "eligibilityreviewrun-decide"]
