"""Types shared by both kinds: role references, subjects, label selectors, conditions."""

from __future__ import annotations

import datetime
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "pim.kubepim.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Names that fit a RoleBinding / ClusterRoleBinding name (a DNS subdomain).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# Characters free text may not hold: C0 and C1 controls (newlines, tabs and ESC among them), the
# line and paragraph separators and the bidirectional overrides, so no log line, Event, history
# entry or terminal line can be split or redrawn by text a user wrote. RE2 syntax: CEL in the
# API server evaluates it.
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f-\x9f\x{2028}-\x{202e}\x{2066}-\x{2069}]"
# The same in Python's syntax: log lines (kubepim.logs) and texts checked outside CEL.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069]")


def plain_text_rule(field: str, path: str) -> dict[str, str]:
    """A CEL rule (for x-kubernetes-validations) refusing control characters in ``field``."""
    return {
        "rule": f"!has(self.{field}) || !self.{field}.matches(r'{CONTROL_CHARACTERS}')",
        "message": f"{path} must not contain control characters (newlines, tabs, escapes): "
                   "write it on one line",
        "fieldPath": f".{field}",
    }


class Model(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields ignored when read."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict as the API server stores it (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class RoleRef(Model):
    """A Role or ClusterRole, as a RoleBinding's roleRef names it."""

    kind: Literal["Role", "ClusterRole"] = Field(
        description="Role (namespaced, must exist in each target namespace) or ClusterRole."
    )
    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the role."
    )

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


class Subject(Model):
    """Someone who may be eligible: a user, a group, or a ServiceAccount."""

    kind: Literal["User", "Group", "ServiceAccount"] = Field(
        description="User and Group are names as the API server authenticates them."
    )
    name: str = Field(min_length=1, max_length=253, description="User, group or SA name.")
    namespace: str | None = Field(
        default=None, max_length=63, description="Namespace of a ServiceAccount subject."
    )

    def username(self) -> str | None:
        """The username the API server gives this subject, or None for a group."""
        if self.kind == "User":
            return self.name
        if self.kind == "ServiceAccount":
            return f"system:serviceaccount:{self.namespace}:{self.name}"
        return None


class LabelSelectorRequirement(Model):
    """One matchExpressions entry of a label selector."""

    key: str = Field(description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key's value is compared with values."
    )
    values: list[str] = Field(default_factory=list, description="Values for In and NotIn.")


class LabelSelector(Model):
    """A Kubernetes label selector; empty selects nothing here (explicit is safer)."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels that must all be present with these values."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Requirements that must all hold."
    )


class Condition(Model):
    """A condition per the Kubernetes API conventions."""

    type: str = Field(description="CamelCase type, e.g. Ready, Approved, Granted.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase machine-readable reason of the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime.datetime = Field(
        description="When status last changed (RFC 3339)."
    )
    observed_generation: int = Field(
        default=0, description="metadata.generation this condition was computed from."
    )


def cel_rules(rules: list[dict[str, str]]) -> ConfigDict:
    """Model config carrying CEL rules into the generated CRD (x-kubernetes-validations)."""
    extra: dict[str, Any] = {"x-kubernetes-validations": rules}
    return ConfigDict(**Model.model_config, json_schema_extra=extra)
