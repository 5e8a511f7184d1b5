"""The control plane is real: RBAC, impersonation, garbage collection, namespace deletion."""

from __future__ import annotations

import json
import secrets

from tests.e2e.support import Kubectl, poll


def test_rbac_denies_a_user_without_bindings_and_allows_the_admin(kubectl: Kubectl) -> None:
    assert kubectl.can_i("get", "pods", as_user="nobody") is False
    result = kubectl("auth", "can-i", "get", "pods")
    assert result.stdout.strip() == "yes"


def test_rbac_allows_an_impersonated_user_once_bound(kubectl: Kubectl, namespace: str) -> None:
    assert kubectl.can_i("list", "configmaps", as_user="carol", namespace=namespace) is False
    kubectl("create", "rolebinding", "carol-view", "--clusterrole=view", "--user=carol",
            "-n", namespace)
    assert poll(
        lambda: kubectl.can_i("list", "configmaps", as_user="carol", namespace=namespace),
        timeout=10, what="carol allowed after binding",
    )
    assert kubectl.can_i("delete", "configmaps", as_user="carol", namespace=namespace) is False


def test_whoami_reports_the_impersonated_user_and_group(kubectl: Kubectl) -> None:
    review = kubectl.json("auth", "whoami", as_user="alice", groups=["sre"])
    user = review["status"]["userInfo"]
    assert user["username"] == "alice"
    assert "sre" in user["groups"]


def test_an_ordinary_user_may_not_impersonate(kubectl: Kubectl) -> None:
    assert kubectl.can_i("impersonate", "users", as_user="mallory") is False
    assert kubectl("auth", "can-i", "impersonate", "users").stdout.strip() == "yes"


def test_object_with_owner_reference_is_garbage_collected(kubectl: Kubectl, namespace: str) -> None:
    owner = kubectl.json("create", "configmap", "owner", "-n", namespace)
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": namespace,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap",
                "name": "owner", "uid": owner["metadata"]["uid"],
            }],
        },
    }
    kubectl("create", "-f", "-", stdin=json.dumps(child))
    kubectl("delete", "configmap", "owner", "-n", namespace)

    def child_gone() -> bool:
        result = kubectl("get", "configmap", "child", "-n", namespace, check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    assert poll(child_gone, timeout=60, what="child garbage-collected")


def test_namespace_deletion_completes(kubectl: Kubectl) -> None:
    doomed = f"doomed-{secrets.token_hex(3)}"
    kubectl("create", "namespace", doomed)
    kubectl("create", "configmap", "content", "-n", doomed)
    kubectl("delete", "namespace", doomed, "--wait=false")

    def namespace_gone() -> bool:
        result = kubectl("get", "namespace", doomed, check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    assert poll(namespace_gone, timeout=60, what="namespace deleted")


def test_new_namespace_gets_a_default_service_account(kubectl: Kubectl, namespace: str) -> None:
    def has_default_sa() -> bool:
        result = kubectl("get", "serviceaccount", "default", "-n", namespace, check=False)
        return result.returncode == 0

    assert poll(has_default_sa, timeout=30, what="default ServiceAccount")


def test_server_version_matches_the_pinned_build(kubectl: Kubectl) -> None:
    version = kubectl.json("version")
    server = version["serverVersion"]
    assert server["major"] == "1"
    # Same minor as the client from PyPI: no client/server skew.
    assert server["minor"] == version["clientVersion"]["minor"]
    assert server["gitVersion"].startswith(f"v1.{server['minor']}.")
