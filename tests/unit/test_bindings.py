"""Desired bindings: deterministic names, the manifest a grant needs, and recognising ours."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from kubepim.domain.bindings import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    REQUEST_LABEL,
    binding_name,
    binding_ref,
    desired_binding,
    matches,
    request_label,
)

from .builders import request

RBAC = "rbac.authorization.k8s.io"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONG = "a" * 240 + ".b" * 6  # a 252-character request name, a valid DNS subdomain


def test_a_short_request_name_gives_a_prefixed_binding_name() -> None:
    assert binding_name("alice-db-reader-x7k2p") == "kubepim-alice-db-reader-x7k2p"


def test_a_request_name_that_just_fits_with_the_prefix_is_kept_whole() -> None:
    assert binding_name("r" * 245) == "kubepim-" + "r" * 245
    assert len(binding_name("r" * 245)) == 253


@pytest.mark.parametrize("name", [
    pytest.param("r" * 246, id="a name one character too long"),
    pytest.param(LONG, id="a maximal request name"),
])
def test_too_long_names_are_hashed_behind_a_colon_no_request_name_can_hold(name: str) -> None:
    # Admission refuses such names; one that exists anyway can reach no other request's binding.
    result = binding_name(name)
    assert re.fullmatch(r"kubepim:[0-9a-f]{64}", result)
    assert result == binding_name(name)


def test_no_request_name_maps_to_the_binding_name_of_another() -> None:
    first, second = LONG[:-1] + "c", LONG[:-1] + "d"
    assert binding_name(first) != binding_name(second)
    crafted = ("kubepim-" + first)[8:245 + 8]  # a 245-character name with the same prefix
    assert binding_name(crafted) not in (binding_name(first), binding_name(second))


@pytest.mark.parametrize(("name", "expected"), [
    pytest.param("alice-db-reader-x7k2p", "alice-db-reader-x7k2p",
                 id="a short request name is its own label value"),
    pytest.param("r" * 63, "r" * 63, id="a 63-character request name is kept whole"),
])
def test_request_label_keeps_names_that_fit(name: str, expected: str) -> None:
    assert request_label(name) == expected


@pytest.mark.parametrize("name", [
    pytest.param("r" * 64, id="a 64-character request name is hashed to fit a label value"),
    pytest.param("r" * 51 + "-." + "r" * 20, id="a cut at a dash or dot is trimmed"),
    pytest.param(LONG, id="a maximal request name is hashed to fit a label value"),
])
def test_request_label_hashes_long_names_into_a_valid_label_value(name: str) -> None:
    result = request_label(name)
    assert len(result) <= 63
    assert LABEL_VALUE.fullmatch(result)
    assert result == request_label(name)
    assert result != request_label(name + "x")


def test_namespaced_request_gets_a_rolebinding_owned_by_its_accessrequest() -> None:
    assert desired_binding("areq-1", "uid-1", request()) == {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": "kubepim-areq-1",
            "namespace": "payments",
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, REQUEST_LABEL: "areq-1"},
            "ownerReferences": [{
                "apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "AccessRequest",
                "name": "areq-1", "uid": "uid-1", "controller": True,
            }],
        },
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "db-reader"},
        "subjects": [{"kind": "User", "apiGroup": RBAC, "name": "alice"}],
    }


def test_cluster_wide_request_gets_a_clusterrolebinding_without_a_namespace() -> None:
    spec = request(namespace=None, role={"kind": "ClusterRole", "name": "view"})
    binding = desired_binding("areq-1", "uid-1", spec)
    assert binding["kind"] == "ClusterRoleBinding"
    assert "namespace" not in binding["metadata"]
    assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole", "name": "view"}
    assert binding_ref("areq-1", spec).model_dump() == {
        "kind": "ClusterRoleBinding", "name": "kubepim-areq-1", "namespace": None}


def test_a_clusterrole_granted_in_a_namespace_gets_a_rolebinding() -> None:
    spec = request(role={"kind": "ClusterRole", "name": "view"})
    binding = desired_binding("areq-1", "uid-1", spec)
    assert (binding["kind"], binding["metadata"]["namespace"]) == ("RoleBinding", "payments")
    assert binding["roleRef"]["kind"] == "ClusterRole"


@pytest.mark.parametrize(("username", "subject"), [
    pytest.param("system:serviceaccount:ci:deployer",
                 {"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"},
                 id="a ServiceAccount requester becomes a ServiceAccount subject"),
    pytest.param("alice@example.com",
                 {"kind": "User", "apiGroup": RBAC, "name": "alice@example.com"},
                 id="a user requester becomes a User subject"),
    pytest.param("system:serviceaccount:ci", {"kind": "User", "apiGroup": RBAC,
                                              "name": "system:serviceaccount:ci"},
                 id="a username that only looks like a ServiceAccount stays a User"),
    pytest.param("oidc:system:serviceaccount:ci",
                 {"kind": "User", "apiGroup": RBAC, "name": "oidc:system:serviceaccount:ci"},
                 id="a prefixed username is a User even with four parts"),
])
def test_requester_becomes_the_single_subject_of_its_kind(
    username: str, subject: dict[str, str],
) -> None:
    spec = request(requester={"username": username})
    assert desired_binding("areq-1", "uid-1", spec)["subjects"] == [subject]


def test_a_request_without_a_requester_cannot_be_granted() -> None:
    with pytest.raises(ValueError, match="without a requester cannot be granted"):
        desired_binding("areq-1", "uid-1", request(requester=None))


def _tamper(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    binding = copy.deepcopy(desired_binding("areq-1", "uid-1", request()))
    change(binding)
    return binding


def _add_subject(b: dict[str, Any]) -> None:
    b["subjects"].append({"kind": "User", "apiGroup": RBAC, "name": "mallory"})


def _add_label(b: dict[str, Any]) -> None:
    b["metadata"]["labels"]["extra"] = "yes"


@pytest.mark.parametrize(("change", "expected"), [
    pytest.param(lambda b: None, True, id="the desired binding itself matches"),
    pytest.param(_add_label, True, id="an extra label added by someone else still matches"),
    pytest.param(lambda b: b["metadata"].update(annotations={"note": "x"}), True,
                 id="an added annotation still matches"),
    pytest.param(lambda b: b["subjects"].insert(0, b["subjects"].pop()), True,
                 id="subjects in another order still match"),
    pytest.param(_add_subject, False, id="a binding with a subject added does not match"),
    pytest.param(lambda b: b.update(subjects=[]), False,
                 id="a binding with its subject removed does not match"),
    pytest.param(lambda b: b.pop("subjects"), False,
                 id="a binding without subjects does not match"),
    pytest.param(lambda b: b["subjects"][0].update(name="bob"), False,
                 id="a binding for someone else does not match"),
    pytest.param(lambda b: b["roleRef"].update(name="db-admin"), False,
                 id="a binding whose roleRef names another role does not match"),
    pytest.param(lambda b: b["roleRef"].update(kind="ClusterRole"), False,
                 id="a binding whose roleRef kind changed does not match"),
    pytest.param(lambda b: b["metadata"].pop("labels"), False,
                 id="a binding with its labels removed does not match"),
    pytest.param(lambda b: b["metadata"]["labels"].pop(MANAGED_BY_LABEL), False,
                 id="a binding without the managed-by label does not match"),
    pytest.param(lambda b: b["metadata"]["labels"].update({REQUEST_LABEL: "areq-2"}), False,
                 id="a binding labelled for another request does not match"),
])
def test_matches_only_a_binding_that_grants_exactly_the_same_with_our_labels(
    change: Callable[[dict[str, Any]], Any], expected: bool,
) -> None:
    desired = desired_binding("areq-1", "uid-1", request())
    assert matches(_tamper(change), desired) is expected
