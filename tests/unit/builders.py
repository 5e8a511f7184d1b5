"""Builders for unit tests: a fixed clock, and valid objects that tests override field by field.

Overrides are camelCase, as a user writes them in YAML.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.api.request import (
    AccessRequest,
    AccessRequestSpec,
    AccessRequestStatus,
    Action,
    Approval,
    HistoryEntry,
)

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)

PAYMENTS_LABELS = {"kubernetes.io/metadata.name": "payments", "team": "payments", "tier": "prod"}


def eligibility(**fields: Any) -> RoleEligibilitySpec:
    """alice may request Role/db-reader in namespace payments, approved by bob."""
    base: dict[str, Any] = {
        "subjects": [{"kind": "User", "name": "alice"}],
        "roles": [{"kind": "Role", "name": "db-reader"}],
        "namespaces": ["payments"],
        "approval": {"users": ["bob"]},
    }
    return RoleEligibilitySpec.model_validate({**base, **fields})


def request(**fields: Any) -> AccessRequestSpec:
    """alice asks for Role/db-reader in namespace payments with a justification."""
    base: dict[str, Any] = {
        "role": {"kind": "Role", "name": "db-reader"},
        "namespace": "payments",
        "justification": "INC-42: look at stuck payments",
        "requester": {"username": "alice", "groups": ["dev", "system:authenticated"]},
    }
    return AccessRequestSpec.model_validate({**base, **fields})


def approve(*groups: str, comment: str = "") -> Approval:
    """An approval entry as admission stamps it (with the approver's groups)."""
    return Approval(decision="Approve", groups=list(groups), comment=comment)


def deny(*groups: str, comment: str = "") -> Approval:
    """A denial entry as admission stamps it (with the approver's groups)."""
    return Approval(decision="Deny", groups=list(groups), comment=comment)


def acknowledge(*groups: str, comment: str = "") -> Approval:
    """A break-glass acknowledgment as admission stamps it (with the approver's groups)."""
    return Approval(decision="Acknowledge", groups=list(groups), comment=comment)


def act(action: Literal["Withdraw", "End", "Revoke"], reason: str = "") -> Action:
    """A Withdraw, End or Revoke entry of status.actions."""
    return Action(action=action, reason=reason)


def entry(action: str, time: datetime.datetime, actor: str = "kubepim",
          reason: str = "") -> HistoryEntry:
    """One status.history entry: ``action`` by ``actor`` (the operator unless told) at ``time``."""
    return HistoryEntry(time=time, action=action, actor=actor, reason=reason)


def access_request(spec: AccessRequestSpec | None = None, **status: Any) -> AccessRequest:
    """A whole AccessRequest: ``spec`` (default :func:`request`) with a status of ``status``.

    Without status fields the request has never been reconciled (status is None).
    """
    return AccessRequest(
        spec=spec or request(),
        status=AccessRequestStatus.model_validate(status) if status else None,
    )
