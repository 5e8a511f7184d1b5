"""The API-server adapter: every call the operator makes, with verbs that read like kubectl.

Built on the official kubernetes client, run in worker threads so handlers stay async. 404
becomes :class:`NotFound` (or ``None`` from getters, success from deletes), 409 :class:`Conflict`;
nothing else leaks the client's exception types.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import (
    AdmissionregistrationV1Api,
    ApiClient,
    AuthorizationV1Api,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    RbacAuthorizationV1Api,
)
from kubernetes.client.exceptions import ApiException

from kubepim.api.common import GROUP, VERSION

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=kubepim"


class NotFound(Exception):
    """The object does not exist."""


class Conflict(Exception):
    """The object changed since it was read (409): read it again and retry."""


class Forbidden(Exception):
    """The operator's own RBAC does not allow the call (403)."""


class Kube:
    """Typed access to the objects kubepim reads and writes."""

    def __init__(self, api_client: ApiClient) -> None:
        self._api = api_client
        self._custom = CustomObjectsApi(api_client)
        self._rbac = RbacAuthorizationV1Api(api_client)
        self._core = CoreV1Api(api_client)
        self._authz = AuthorizationV1Api(api_client)
        self._admission = AdmissionregistrationV1Api(api_client)
        self._coordination = CoordinationV1Api(api_client)

    @classmethod
    def connect(cls, kubeconfig: Path | None = None) -> Kube:
        """Connect with ``kubeconfig``; else in-cluster in a pod; else the default kubeconfig."""
        if kubeconfig is not None:
            kubernetes.config.load_kube_config(str(kubeconfig))
        else:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
        configuration = kubernetes.client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = 32  # the executor has 32 threads
        return cls(ApiClient(configuration))

    async def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except ApiException as error:
            if error.status == 404:
                raise NotFound(str(error.reason)) from error
            if error.status == 409:
                raise Conflict(str(error.reason)) from error
            if error.status == 403:
                raise Forbidden(str(error.body or error.reason)) from error
            raise

    def _plain(self, obj: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._api.sanitize_for_serialization(obj)
        return result

    # AccessRequests and RoleEligibilities (cluster-scoped custom objects)

    async def get_request(self, name: str) -> dict[str, Any] | None:
        """The AccessRequest, or None."""
        try:
            obj: dict[str, Any] = await self._call(
                self._custom.get_cluster_custom_object, GROUP, VERSION, "accessrequests", name)
        except NotFound:
            return None
        return obj

    async def list_requests(self) -> list[dict[str, Any]]:
        """Every AccessRequest."""
        result = await self._call(
            self._custom.list_cluster_custom_object, GROUP, VERSION, "accessrequests")
        items: list[dict[str, Any]] = result["items"]
        return items

    async def list_eligibilities(self) -> list[dict[str, Any]]:
        """Every RoleEligibility."""
        result = await self._call(
            self._custom.list_cluster_custom_object, GROUP, VERSION, "roleeligibilities")
        items: list[dict[str, Any]] = result["items"]
        return items

    async def delete_request(self, name: str, uid: str) -> bool:
        """Delete an AccessRequest, only if it is still the object with ``uid``."""
        try:
            await self._call(self._custom.delete_cluster_custom_object, GROUP, VERSION,
                             "accessrequests", name,
                             body={"preconditions": {"uid": uid}})
        except NotFound:
            return False
        return True

    async def patch_request_status(
        self, name: str, status: dict[str, Any], resource_version: str
    ) -> dict[str, Any]:
        """Merge-patch the status, failing with Conflict if the object changed since read."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        obj: dict[str, Any] = await self._call(
            self._custom.patch_cluster_custom_object_status,
            GROUP, VERSION, "accessrequests", name, body,
        )
        return obj

    async def patch_eligibility_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a RoleEligibility's status (only its status: GitOps owns the rest)."""
        await self._call(
            self._custom.patch_cluster_custom_object_status,
            GROUP, VERSION, "roleeligibilities", name, {"status": status},
        )

    async def post_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str,
        when: datetime.datetime, sequence: int,
    ) -> None:
        """Post a core/v1 Event about a cluster-scoped object (stored in namespace default).

        ``sequence`` (the transition's index in status.history) names the Event, so a listing
        sorts in history order and a repeated post of the same transition is refused (409).
        """
        metadata = involved.get("metadata", {})
        when = when + datetime.timedelta(microseconds=sequence % 1000)
        stamp = when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        uid = str(metadata.get("uid", ""))[:8]
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{str(metadata.get('name'))[:180]}.{uid}.{sequence:06d}",
                         "namespace": "default"},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                "name": metadata.get("name"), "uid": metadata.get("uid"),
            },
            "type": event_type, "reason": reason, "message": message[:1024],
            "source": {"component": "kubepim"}, "reportingComponent": "kubepim",
            "reportingInstance": "kubepim", "firstTimestamp": stamp, "lastTimestamp": stamp,
            "eventTime": when.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z"),
            "action": reason, "count": 1,
        }
        await self._call(self._core.create_namespaced_event, "default", event)

    # Namespaces and roles

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        """Labels of a namespace, or None when it does not exist."""
        try:
            namespace = await self._call(self._core.read_namespace, name)
        except NotFound:
            return None
        return dict(namespace.metadata.labels or {}) if namespace.metadata else {}

    async def role_exists(self, kind: str, name: str, namespace: str | None) -> bool:
        """Whether the Role (in ``namespace``) or ClusterRole exists."""
        try:
            if kind == "ClusterRole":
                await self._call(self._rbac.read_cluster_role, name)
            else:
                await self._call(self._rbac.read_namespaced_role, name, namespace)
        except NotFound:
            return False
        return True

    async def role_rules(
        self, kind: str, name: str, namespace: str | None
    ) -> list[dict[str, Any]] | None:
        """The rules of a Role or ClusterRole, or None when it does not exist."""
        try:
            if kind == "ClusterRole":
                role = await self._call(self._rbac.read_cluster_role, name)
            else:
                role = await self._call(self._rbac.read_namespaced_role, name, namespace)
        except NotFound:
            return None
        rules: list[dict[str, Any]] = self._plain(role).get("rules") or []
        return rules

    async def may(
        self, user: dict[str, Any], verb: str, group: str, resource: str,
        name: str | None = None, namespace: str | None = None,
    ) -> bool:
        """Ask the API server's authorizer (SubjectAccessReview) whether ``user`` may do it.

        ``user`` is an admission request's userInfo (username, uid, groups, extra).
        """
        attributes = {"verb": verb, "group": group, "resource": resource}
        if name:
            attributes["name"] = name
        if namespace:
            attributes["namespace"] = namespace
        review = {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user.get("username"), "uid": user.get("uid"),
                     "groups": user.get("groups") or [], "extra": user.get("extra") or {},
                     "resourceAttributes": attributes},
        }
        result = await self._call(self._authz.create_subject_access_review, review)
        return bool(result.status.allowed)

    async def i_may(
        self, verb: str, group: str, resource: str, name: str | None = None,
        namespace: str | None = None,
    ) -> bool:
        """Whether the operator itself may do it (SelfSubjectAccessReview)."""
        attributes = {"verb": verb, "group": group, "resource": resource}
        if name:
            attributes["name"] = name
        if namespace:
            attributes["namespace"] = namespace
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": attributes}}
        result = await self._call(self._authz.create_self_subject_access_review, review)
        return bool(result.status.allowed)

    async def apply_validating_webhooks(self, configuration: dict[str, Any]) -> None:
        """Create or replace a ValidatingWebhookConfiguration."""
        name = configuration["metadata"]["name"]
        try:
            await self._call(self._admission.create_validating_webhook_configuration,
                             configuration)
        except Conflict:
            await self._call(self._admission.patch_validating_webhook_configuration,
                             name, configuration)

    async def delete_validating_webhooks(self, name: str) -> None:
        """Delete a ValidatingWebhookConfiguration; absent is fine."""
        with contextlib.suppress(NotFound):
            await self._call(self._admission.delete_validating_webhook_configuration, name)

    # Leader election

    async def get_lease(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The Lease, or None."""
        try:
            lease = await self._call(self._coordination.read_namespaced_lease, name, namespace)
        except NotFound:
            return None
        return self._plain(lease)

    async def write_lease(
        self, name: str, namespace: str, spec: dict[str, Any], resource_version: str | None
    ) -> None:
        """Create the Lease (``resource_version`` None) or replace the version read.

        Conflict when someone else wrote it first: they won this round.
        """
        metadata: dict[str, str] = {"name": name, "namespace": namespace}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": spec}
        if resource_version is None:
            await self._call(self._coordination.create_namespaced_lease, namespace, body)
        else:
            metadata["resourceVersion"] = resource_version
            await self._call(self._coordination.replace_namespaced_lease, name, namespace, body)

    # Bindings

    async def get_binding(
        self, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        """The RoleBinding or ClusterRoleBinding, or None."""
        try:
            if kind == "ClusterRoleBinding":
                obj = await self._call(self._rbac.read_cluster_role_binding, name)
            else:
                obj = await self._call(self._rbac.read_namespaced_role_binding, name, namespace)
        except NotFound:
            return None
        return self._plain(obj)

    async def create_binding(self, manifest: dict[str, Any]) -> str:
        """Create a binding and return its resourceVersion; Conflict if the name exists."""
        if manifest["kind"] == "ClusterRoleBinding":
            made = await self._call(self._rbac.create_cluster_role_binding, manifest)
        else:
            namespace = manifest["metadata"]["namespace"]
            made = await self._call(self._rbac.create_namespaced_role_binding, namespace, manifest)
        return str(made.metadata.resource_version)

    async def delete_binding(self, kind: str, name: str, namespace: str | None) -> bool:
        """Delete a binding; False when it was already gone."""
        try:
            if kind == "ClusterRoleBinding":
                await self._call(self._rbac.delete_cluster_role_binding, name)
            else:
                await self._call(self._rbac.delete_namespaced_role_binding, name, namespace)
        except NotFound:
            return False
        return True

    async def list_managed_bindings(self) -> list[dict[str, Any]]:
        """Every RoleBinding and ClusterRoleBinding that carries the operator's label."""
        namespaced, cluster = await asyncio.gather(
            self._call(self._rbac.list_role_binding_for_all_namespaces,
                       label_selector=MANAGED_SELECTOR),
            self._call(self._rbac.list_cluster_role_binding, label_selector=MANAGED_SELECTOR),
        )
        items = []
        for listing, kind in ((namespaced, "RoleBinding"), (cluster, "ClusterRoleBinding")):
            for item in listing.items:
                plain = self._plain(item)
                plain["kind"] = kind
                items.append(plain)
        return items


def parse_time(value: str | None) -> datetime.datetime | None:
    """An RFC 3339 timestamp from the API server, timezone-aware."""
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
