"""The API-server adapter: every call the operator makes, with verbs that read like kubectl.

Plain JSON over one asyncio HTTP session (aiohttp, which kopf already runs on): no worker
threads and no typed models in between, which is most of what a call cost with the official
synchronous client (docs/performance.md has the profile). The operator connects with the
credentials of its kopf login (ServiceAccount in a pod, else the kubeconfig); command-line
tools with the official ``kubernetes.config`` loader, which understands exec plugins. 404
becomes :class:`NotFound` (or ``None`` from getters, success from deletes), 409
:class:`Conflict`, 403 :class:`Forbidden`, any other failure :class:`ApiError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import ssl
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from kubepim.api.common import GROUP, VERSION

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=kubepim"
# Every binding kubepim did not make (also those with no such label at all).
FOREIGN_SELECTOR = "app.kubernetes.io/managed-by!=kubepim"
# The requests the operator watches and lists: those not settled (a CRD selectable field).
UNSETTLED = "status.settled!=true"
_CUSTOM = f"/apis/{GROUP}/{VERSION}"
_RBAC = "/apis/rbac.authorization.k8s.io/v1"
_MERGE = "application/merge-patch+json"
# How long a bearer token is reused before the loader is asked again (it re-reads a rotated
# in-cluster token about once a minute; asking on every call cost 8% of the operator's CPU).
_TOKEN_SECONDS = 10.0


class ApiError(Exception):
    """The API server refused or failed a call (other than 403, 404 and 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class NotFound(ApiError):
    """The object does not exist."""


class Conflict(ApiError):
    """The object changed since it was read, or already exists (409): read it again."""


class Forbidden(ApiError):
    """The operator's own RBAC does not allow the call (403)."""


def namespace_going(namespace: Mapping[str, Any]) -> bool:
    """Whether a namespace object is being deleted (kubepim counts it as gone)."""
    return bool((namespace.get("metadata") or {}).get("deletionTimestamp")) or \
        (namespace.get("status") or {}).get("phase") == "Terminating"


class Gone(ApiError):
    """A list's continue token or a watch's resourceVersion is too old (410): list again."""


class BadRequest(ApiError):
    """The API server refused the call as malformed (400), e.g. an unknown field selector."""


class NotLeading(Exception):
    """A write was stopped before it was sent: this replica's lease may have passed."""


_ERRORS: dict[int, type[ApiError]] = {400: BadRequest, 403: Forbidden, 404: NotFound,
                                      409: Conflict, 410: Gone}
_READS_BY_POST = ("subjectaccessreviews", "selfsubjectaccessreviews")


class Kube:
    """Typed access to the objects kubepim reads and writes."""

    def __init__(self, server: str, tls: ssl.SSLContext | bool,
                 authorization: Callable[[], str | None]) -> None:
        self._server = server.rstrip("/")
        self._tls = tls
        self._authorization = authorization
        self._session: aiohttp.ClientSession | None = None
        # Each TLS connection holds a 256 KiB read buffer: enough of them to keep the API server
        # busy, not one per concurrent reconcile.
        self.connections = 32
        # Asked before every write (not reads, not access reviews): the seconds this replica
        # may still write; none left stops the write unsent, and a write that cannot be sent
        # within them is given up (a timeout), so none lands after the lease deadline.
        self.fence: Callable[[], float] | None = None
        # Named in managedFields of what this client writes: which replica wrote what, when.
        self.field_manager: str | None = None
        self._manager: Callable[[], str | None] = lambda: self.field_manager

    def sibling(self, connections: int = 32, fenced: bool = False) -> Kube:
        """Another client with the same credentials on its own ``connections``.

        No fence, unless ``fenced``: then this client's fence and field manager, as they are
        when each write is sent (a sibling made before the election is fenced by it too).
        """
        other = Kube(self._server, self._tls, self._authorization)
        other.connections = connections
        if fenced:
            other.fence = lambda: self.fence() if self.fence is not None else float("inf")
            other._manager = lambda: self.field_manager
        return other

    @classmethod
    def connect(cls, kubeconfig: Path | None = None) -> Kube:
        """Connect with ``kubeconfig``; else in-cluster in a pod; else the default kubeconfig.

        For command-line tools: the official loader understands every kubeconfig (exec
        plugins included). The operator does not load it (see :meth:`from_credentials`).
        """
        import kubernetes  # 35 MiB of generated models: imported only where used

        configuration = kubernetes.client.Configuration()
        if kubeconfig is not None:
            kubernetes.config.load_kube_config(str(kubeconfig),
                                               client_configuration=configuration)
        else:
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=configuration)
        tls: ssl.SSLContext | bool = False
        if configuration.host.startswith("https"):
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
            if not configuration.verify_ssl:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file)
            tls = context

        def authorization() -> str | None:
            # Calls the loader's refresh hook: a rotated in-cluster token is picked up.
            bearer: dict[str, Any] = dict(configuration.auth_settings().get("BearerToken") or {})
            value: str | None = bearer.get("value")
            return value

        return cls.from_credentials(configuration.host, tls, authorization)

    @classmethod
    def from_credentials(
        cls, server: str, tls: ssl.SSLContext | bool, authorization: Callable[[], str | None]
    ) -> Kube:
        """Connect to ``server`` with ``tls``; ``authorization`` gives the current header.

        It is asked again every few seconds, so a rotated token is picked up.
        """
        return cls(server, tls, _every(_TOKEN_SECONDS, authorization))

    async def close(self) -> None:
        """Close the HTTP session (the next call opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, ssl=self._tls),
                timeout=aiohttp.ClientTimeout(total=60),
                json_serialize=_dumps,
            )
        return self._session

    async def _request(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One call; the decoded JSON answer, or the error it maps to."""
        timeout = None
        if method != "GET" and self.fence is not None and not path.endswith(_READS_BY_POST):
            left = self.fence()
            if left <= 0:
                raise NotLeading(f"{method} {path} not sent: this replica is not leading")
            timeout = aiohttp.ClientTimeout(total=min(60.0, left))
        headers = {"Accept": "application/json", "Content-Type": content_type}
        manager = self._manager()
        if manager and method in ("POST", "PATCH", "PUT") and not path.endswith(_READS_BY_POST):
            params = dict(params or {}, fieldManager=manager)
        token = self._authorization()
        if token:
            headers["Authorization"] = token
        async with self._open().request(
            method, self._server + path, json=body, params=params, headers=headers,
            timeout=timeout or aiohttp.helpers.sentinel,
        ) as response:
            answer = await response.json(content_type=None) if response.content_length != 0 \
                else None
            if response.status >= 400:
                message = answer.get("message") if isinstance(answer, dict) else None
                error = _ERRORS.get(response.status, ApiError)
                raise error(response.status, str(message or response.reason))
            return answer

    # AccessRequests and RoleEligibilities (cluster-scoped custom objects)

    async def get_request(self, name: str) -> dict[str, Any] | None:
        """The AccessRequest, or None."""
        try:
            obj: dict[str, Any] = await self._request("GET", f"{_CUSTOM}/accessrequests/{name}")
        except NotFound:
            return None
        return obj

    async def list_requests(self, unsettled: bool = False) -> list[dict[str, Any]]:
        """Every AccessRequest; with ``unsettled``, only those the operator is not done with."""
        return await self._list(f"{_CUSTOM}/accessrequests",
                                {"fieldSelector": UNSETTLED} if unsettled else None)

    async def check_selectable_fields(self) -> None:
        """Raise :class:`BadRequest` unless ``status.settled`` is a selectable field.

        (A CRD older than this operator: Helm installs crds/ but never upgrades them.)
        """
        await self._request("GET", f"{_CUSTOM}/accessrequests",
                            params={"fieldSelector": UNSETTLED, "limit": "1"})

    async def settled_request_pages(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Settled AccessRequests, one page (500) at a time: none is held longer than its page."""
        async for page in self.request_pages("status.settled=true"):
            yield page

    async def request_pages(self, selector: str = UNSETTLED
                            ) -> AsyncIterator[list[dict[str, Any]]]:
        """AccessRequests matching the field ``selector``, one page (500) at a time."""
        query = {"fieldSelector": selector, "limit": "500"}
        while True:
            page = await self._request("GET", f"{_CUSTOM}/accessrequests", params=query)
            yield page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            query["continue"] = token

    async def get_eligibility(self, name: str) -> dict[str, Any] | None:
        """The RoleEligibility, or None."""
        try:
            obj: dict[str, Any] = await self._request(
                "GET", f"{_CUSTOM}/roleeligibilities/{name}")
        except NotFound:
            return None
        return obj

    async def list_eligibilities(self) -> list[dict[str, Any]]:
        """Every RoleEligibility."""
        return await self._list(f"{_CUSTOM}/roleeligibilities")

    async def list_eligibilities_at(self) -> tuple[list[dict[str, Any]], int]:
        """Every RoleEligibility, and the resourceVersion the list was served at."""
        return await self._list_at(f"{_CUSTOM}/roleeligibilities")

    async def list_namespaces_at(self) -> tuple[list[dict[str, Any]], int]:
        """Every namespace, and the resourceVersion the list was served at."""
        return await self._list_at("/api/v1/namespaces")

    async def _list(self, path: str, params: dict[str, str] | None = None
                    ) -> list[dict[str, Any]]:
        """Every item, fetched in pages so a large list does not time out or balloon."""
        items, _ = await self._list_at(path, params)
        return items

    async def _list_at(self, path: str, params: dict[str, str] | None = None
                       ) -> tuple[list[dict[str, Any]], int]:
        items: list[dict[str, Any]] = []
        query = dict(params or {}, limit="500")
        version = 0
        while True:
            page = await self._request("GET", path, params=query)
            items += page.get("items") or []
            metadata = page.get("metadata") or {}
            if not version and str(metadata.get("resourceVersion") or "").isdigit():
                version = int(metadata["resourceVersion"])
            token = metadata.get("continue")
            if not token:
                return items, version
            query["continue"] = token

    async def delete_request(self, name: str, uid: str) -> bool:
        """Delete an AccessRequest, only if it is still the object with ``uid``."""
        try:
            await self._request("DELETE", f"{_CUSTOM}/accessrequests/{name}",
                                {"preconditions": {"uid": uid}})
        except NotFound:
            return False
        return True

    async def patch_request_status(
        self, name: str, status: dict[str, Any], resource_version: str, uid: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch the status, failing with Conflict if the object changed since read.

        ``uid``: refused (Conflict or Invalid) unless the object is that one.
        """
        metadata = {"resourceVersion": resource_version, **({"uid": uid} if uid else {})}
        body = {"metadata": metadata, "status": status}
        obj: dict[str, Any] = await self._request(
            "PATCH", f"{_CUSTOM}/accessrequests/{name}/status", body, content_type=_MERGE)
        return obj

    async def patch_eligibility_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a RoleEligibility's status (only its status: GitOps owns the rest)."""
        await self._request("PATCH", f"{_CUSTOM}/roleeligibilities/{name}/status",
                            {"status": status}, content_type=_MERGE)

    # EligibilityReviews and their runs (docs/reviews.md)

    async def get_custom(self, plural: str, name: str) -> dict[str, Any] | None:
        """A cluster-scoped kubepim object of kind ``plural``, or None."""
        try:
            obj: dict[str, Any] = await self._request("GET", f"{_CUSTOM}/{plural}/{name}")
        except NotFound:
            return None
        return obj

    async def list_custom(self, plural: str, field_selector: str | None = None
                          ) -> list[dict[str, Any]]:
        """Every cluster-scoped kubepim object of kind ``plural`` (matching the selector)."""
        return await self._list(f"{_CUSTOM}/{plural}",
                                {"fieldSelector": field_selector} if field_selector else None)

    async def create_custom(self, plural: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a cluster-scoped kubepim object (Conflict: the name is taken)."""
        obj: dict[str, Any] = await self._request("POST", f"{_CUSTOM}/{plural}", manifest)
        return obj

    async def patch_custom_status(self, plural: str, name: str, status: dict[str, Any],
                                  resource_version: str | None = None) -> dict[str, Any]:
        """Merge-patch an object's status; with ``resource_version``, Conflict if it changed."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        obj: dict[str, Any] = await self._request(
            "PATCH", f"{_CUSTOM}/{plural}/{name}/status", body, content_type=_MERGE)
        return obj

    @staticmethod
    def event_name(involved: dict[str, Any], sequence: int) -> str:
        """The name of the Event of history entry ``sequence`` of an object."""
        metadata = involved.get("metadata", {})
        uid = str(metadata.get("uid", ""))[:8]
        return f"{str(metadata.get('name'))[:180]}.{uid}.{sequence:06d}"

    async def get_event(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        """An Event (in default: where Events about cluster-scoped objects go), or None."""
        try:
            obj: dict[str, Any] = await self._request(
                "GET", f"/api/v1/namespaces/{namespace}/events/{name}")
        except NotFound:
            return None
        return obj

    async def post_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str,
        when: datetime.datetime, sequence: int, generate_name: bool = False,
    ) -> None:
        """Post a core/v1 Event about an object (in its namespace; cluster-scoped: default).

        ``sequence`` (the transition's index in status.history) names the Event, so a listing
        sorts in history order and a repeated post of the same transition is refused (409).
        ``generate_name``: let the API server add a random suffix (the name was taken).
        """
        metadata = involved.get("metadata", {})
        namespace = metadata.get("namespace") or "default"
        when = when + datetime.timedelta(microseconds=sequence % 1000)
        stamp = when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        name = self.event_name(involved, sequence)
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {("generateName" if generate_name else "name"):
                         f"{name}-" if generate_name else name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                "name": metadata.get("name"), "uid": metadata.get("uid"),
                **({"namespace": namespace} if metadata.get("namespace") else {}),
            },
            "type": event_type, "reason": reason, "message": message[:1024],
            "source": {"component": "kubepim"}, "reportingComponent": "kubepim",
            "reportingInstance": "kubepim", "firstTimestamp": stamp, "lastTimestamp": stamp,
            "eventTime": when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action": reason, "count": 1,
        }
        await self._request("POST", f"/api/v1/namespaces/{namespace}/events", event)

    # Secrets (only in the operator's namespace: the chart's Role allows no other)

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, decoded (UTF-8), or None when it does not exist."""
        try:
            obj: dict[str, Any] = await self._request(
                "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except NotFound:
            return None
        data = obj.get("data") or {}
        return {key: base64.b64decode(value).decode("utf-8", "replace")
                for key, value in data.items()}

    async def list_routes(self) -> list[dict[str, Any]]:
        """Every NotificationRoute."""
        return await self._list(f"{_CUSTOM}/notificationroutes")

    async def patch_route_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a NotificationRoute's status (only its status: GitOps owns the rest)."""
        await self._request("PATCH", f"{_CUSTOM}/notificationroutes/{name}/status",
                            {"status": status}, content_type=_MERGE)

    # Namespaces and roles

    async def namespace(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(uid, labels) of a namespace; None when it does not exist or is being deleted."""
        try:
            namespace = await self._request("GET", f"/api/v1/namespaces/{name}")
        except NotFound:
            return None
        if namespace_going(namespace):
            return None
        metadata = namespace.get("metadata") or {}
        return str(metadata.get("uid") or ""), dict(metadata.get("labels") or {})

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        """Labels of a namespace; None when it does not exist or is being deleted."""
        found = await self.namespace(name)
        return found[1] if found is not None else None

    async def role_exists(self, kind: str, name: str, namespace: str | None) -> bool:
        """Whether the Role (in ``namespace``) or ClusterRole exists."""
        return await self.role_rules(kind, name, namespace) is not None

    async def role_rules(
        self, kind: str, name: str, namespace: str | None
    ) -> list[dict[str, Any]] | None:
        """The rules of a Role or ClusterRole, or None when it does not exist."""
        # Quoted: a role's name may hold "?" or "#" (a path segment name), which must not be
        # read as a query or a fragment (another role's rules).
        name = urllib.parse.quote(name, safe="")
        path = (f"{_RBAC}/clusterroles/{name}" if kind == "ClusterRole"
                else f"{_RBAC}/namespaces/{namespace}/roles/{name}")
        try:
            role = await self._request("GET", path)
        except NotFound:
            return None
        rules: list[dict[str, Any]] = role.get("rules") or []
        return rules

    async def may(
        self, user: dict[str, Any], verb: str, group: str, resource: str,
        name: str | None = None, namespace: str | None = None,
    ) -> bool:
        """Ask the API server's authorizer (SubjectAccessReview) whether ``user`` may do it.

        ``user`` is an admission request's userInfo (username, uid, groups, extra).
        """
        review = {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user.get("username"), "uid": user.get("uid"),
                     "groups": user.get("groups") or [], "extra": user.get("extra") or {},
                     "resourceAttributes": _attributes(verb, group, resource, name, namespace)},
        }
        result = await self._request(
            "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        return bool((result.get("status") or {}).get("allowed"))

    async def i_may(
        self, verb: str, group: str, resource: str, name: str | None = None,
        namespace: str | None = None,
    ) -> bool:
        """Whether the operator itself may do it (SelfSubjectAccessReview)."""
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": _attributes(verb, group, resource, name,
                                                             namespace)}}
        result = await self._request(
            "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
        return bool((result.get("status") or {}).get("allowed"))

    async def apply_validating_webhooks(self, configuration: dict[str, Any]) -> None:
        """Create or replace a ValidatingWebhookConfiguration."""
        path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
        try:
            await self._request("POST", path, configuration)
        except Conflict:
            await self._request("PATCH", f"{path}/{configuration['metadata']['name']}",
                                configuration, content_type=_MERGE)

    async def delete_validating_webhooks(self, name: str) -> None:
        """Delete a ValidatingWebhookConfiguration; absent is fine."""
        with contextlib.suppress(NotFound):
            await self._request(
                "DELETE",
                f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{name}")

    # Leader election

    async def get_lease(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The Lease, or None."""
        try:
            lease: dict[str, Any] = await self._request("GET", _lease_path(namespace, name))
        except NotFound:
            return None
        return lease

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
            await self._request("POST", _lease_path(namespace, None), body)
        else:
            metadata["resourceVersion"] = resource_version
            await self._request("PUT", _lease_path(namespace, name), body)

    # Bindings

    async def get_binding(
        self, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        """The RoleBinding or ClusterRoleBinding, or None."""
        try:
            obj: dict[str, Any] = await self._request("GET", _binding_path(kind, namespace, name))
        except NotFound:
            return None
        return obj

    async def create_binding(self, manifest: dict[str, Any]) -> str:
        """Create a binding and return its resourceVersion; Conflict if the name exists."""
        path = _binding_path(manifest["kind"], manifest["metadata"].get("namespace"), None)
        made = await self._request("POST", path, manifest)
        return str(made["metadata"]["resourceVersion"])

    async def delete_binding(self, kind: str, name: str, namespace: str | None,
                             uid: str | None = None, resource_version: str | None = None
                             ) -> bool:
        """Delete a binding; False when it was already gone.

        With ``uid``: only that object; with ``resource_version``: only that version of it
        (Conflict if it was replaced or changed in between).
        """
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version))
                         if v}
        body = {"preconditions": preconditions} if preconditions else None
        try:
            await self._request("DELETE", _binding_path(kind, namespace, name), body)
        except NotFound:
            return False
        return True

    async def list_managed_bindings(self) -> list[dict[str, Any]]:
        """Every RoleBinding and ClusterRoleBinding that carries the operator's label."""
        selector = {"labelSelector": MANAGED_SELECTOR}
        namespaced, cluster = await asyncio.gather(
            self._list(f"{_RBAC}/rolebindings", selector),
            self._list(f"{_RBAC}/clusterrolebindings", selector),
        )
        for listing, kind in ((namespaced, "RoleBinding"), (cluster, "ClusterRoleBinding")):
            for item in listing:
                item["kind"] = kind  # a list's items carry no kind
        return namespaced + cluster


    async def rbac_pages(self, plural: str, selector: str | None = None
                         ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        """Roles, ClusterRoles, RoleBindings or ClusterRoleBindings (``plural``) cluster-wide.

        One page (500) at a time, each with the list's resourceVersion (a watch from it misses
        nothing the list did not show). A list's items carry no kind: it is set on each.
        """
        kind = {"roles": "Role", "clusterroles": "ClusterRole", "rolebindings": "RoleBinding",
                "clusterrolebindings": "ClusterRoleBinding"}[plural]
        query = {"limit": "500", **({"labelSelector": selector} if selector else {})}
        while True:
            page = await self._request("GET", f"{_RBAC}/{plural}", params=query)
            metadata = page.get("metadata") or {}
            items = page.get("items") or []
            for item in items:
                item["kind"], item["apiVersion"] = kind, "rbac.authorization.k8s.io/v1"
            yield items, str(metadata.get("resourceVersion") or "")
            token = metadata.get("continue")
            if not token:
                return
            query["continue"] = token

    async def watch_rbac(self, plural: str, version: str, selector: str | None = None,
                         seconds: int = 300) -> AsyncGenerator[dict[str, Any], None]:
        """The watch events of ``plural`` from ``version`` (bookmarks included), as they come.

        Ends when the API server ends the watch (after about ``seconds``); raises :class:`Gone`
        when ``version`` is too old (list again) and :class:`ApiError` for any other refusal.
        Read in chunks, split on newlines: no line-length limit on a large object.
        """
        params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(seconds),
                  **({"labelSelector": selector} if selector else {})}
        headers = {"Accept": "application/json"}
        token = self._authorization()
        if token:
            headers["Authorization"] = token
        async with self._open().get(
            f"{self._server}{_RBAC}/{plural}", params=params, headers=headers,
            # Bookmarks come about once a minute: a connection silent for two is dead.
            timeout=aiohttp.ClientTimeout(total=seconds + 60, sock_connect=30, sock_read=120),
        ) as response:
            if response.status >= 400:
                answer = await response.json(content_type=None)
                message = answer.get("message") if isinstance(answer, dict) else None
                raise _ERRORS.get(response.status, ApiError)(
                    response.status, str(message or response.reason))
            buffer = bytearray()
            async for chunk in response.content.iter_any():
                buffer += chunk
                end = buffer.rfind(b"\n")
                if end < 0:
                    continue
                lines, buffer = bytes(buffer[:end]).split(b"\n"), buffer[end + 1:]
                for line in lines:
                    if not line.strip():
                        continue
                    event: dict[str, Any] = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        code = int(status.get("code") or 500)
                        raise _ERRORS.get(code, ApiError)(code, str(status.get("message")))
                    yield event


def _every(seconds: float, fetch: Callable[[], str | None]) -> Callable[[], str | None]:
    """``fetch``, its answer reused for ``seconds``."""
    cached: list[tuple[float, str | None]] = []

    def current() -> str | None:
        moment = time.monotonic()
        if not cached or moment - cached[0][0] >= seconds:
            cached[:] = [(moment, fetch())]
        return cached[0][1]

    return current


def _attributes(verb: str, group: str, resource: str, name: str | None,
                namespace: str | None) -> dict[str, str]:
    resource, _, subresource = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": resource}
    if subresource:
        attributes["subresource"] = subresource
    if name:
        attributes["name"] = name
    if namespace:
        attributes["namespace"] = namespace
    return attributes


def _lease_path(namespace: str, name: str | None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{path}/{name}" if name else path


def _binding_path(kind: str, namespace: str | None, name: str | None) -> str:
    path = (f"{_RBAC}/clusterrolebindings" if kind == "ClusterRoleBinding"
            else f"{_RBAC}/namespaces/{namespace}/rolebindings")
    return f"{path}/{name}" if name else path


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def parse_time(value: str | None) -> datetime.datetime | None:
    """An RFC 3339 timestamp from the API server, timezone-aware."""
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
