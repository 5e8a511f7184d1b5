"""The few API calls ``kubectl pim`` makes, as the caller, over one HTTPS connection.

The same calls a user could make with kubectl (and nothing the chart's kubepim:requester and
approver roles do not allow): list/get/create/watch AccessRequests, patch their status, list
RoleEligibilities, and a SelfSubjectReview to learn who the API server says the caller is.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Any

from .kubeconfig import Connection

GROUP_PATH = "/apis/pim.kubepim.dev/v1alpha1"


class ApiError(Exception):
    """The API server refused or failed a call; ``message`` is its own message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Unreachable(Exception):
    """The API server could not be reached."""


class Api:
    """Calls as the kubeconfig's user, impersonating ``as_user``/``as_groups`` if given."""

    def __init__(self, connection: Connection, as_user: str | None = None,
                 as_groups: list[str] | None = None, timeout: float = 30) -> None:
        self.connection = connection
        self.timeout = timeout
        self.headers = {"Accept": "application/json", "User-Agent": "kubectl-pim",
                        **connection.headers}
        if as_user:
            self.headers["Impersonate-User"] = as_user
        self.groups = list(as_groups or [])
        parsed = urllib.parse.urlsplit(connection.server)
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname or "localhost"
        self._port = parsed.port or (443 if self._https else 80)
        self._prefix = parsed.path.rstrip("/")

    def _open(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=self.connection.context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _send(self, method: str, path: str, body: Any, params: dict[str, str] | None,
              content_type: str, timeout: float | None) -> http.client.HTTPResponse:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        connection = self._open(timeout)
        try:
            connection.putrequest(method, self._prefix + path + query, skip_accept_encoding=True)
            for key, value in headers.items():
                connection.putheader(key, value)
            for group in self.groups:
                connection.putheader("Impersonate-Group", group)
            if data is not None:
                connection.putheader("Content-Length", str(len(data)))
            connection.endheaders(data)
            return connection.getresponse()
        except (OSError, ssl.SSLError, http.client.HTTPException) as error:
            connection.close()
            reason = "timed out" if isinstance(error, socket.timeout) else str(error)
            raise Unreachable(f"cannot reach the API server at {self.connection.server}: "
                              f"{reason}") from error

    def call(self, method: str, path: str, body: Any = None,
             params: dict[str, str] | None = None,
             content_type: str = "application/json") -> Any:
        """One call; the decoded answer, or :class:`ApiError` with the server's message."""
        response = self._send(method, path, body, params, content_type, self.timeout)
        raw = response.read()
        try:
            answer = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            answer = None
        if response.status >= 400:
            message = answer.get("message") if isinstance(answer, dict) else None
            if response.status == 401:
                message = "Unauthorized: the credentials were refused (an expired token?) " \
                    "— log in again, then retry"
            raise ApiError(response.status, str(message or raw.decode(errors="replace")[:200]
                                                 or response.reason))
        return answer

    def watch(self, path: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Events of a watch (``{"type", "object"}``) until the server ends it."""
        response = self._send("GET", path, None, {**params, "watch": "true"},
                              "application/json", None)
        if response.status >= 400:
            raw = response.read()
            try:
                message = json.loads(raw).get("message")
            except (json.JSONDecodeError, AttributeError):
                message = raw.decode(errors="replace")[:200]
            raise ApiError(response.status, str(message or response.reason))
        for line in response:
            if line.strip():
                yield json.loads(line)

    # The calls themselves.

    def whoami(self) -> dict[str, Any]:
        """The caller's userInfo, as the API server authenticates it (SelfSubjectReview)."""
        review = self.call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           {"apiVersion": "authentication.k8s.io/v1",
                            "kind": "SelfSubjectReview"})
        return dict((review.get("status") or {}).get("userInfo") or {})

    def requests(self, field_selector: str | None = None) -> list[dict[str, Any]]:
        """AccessRequests (optionally server-side field-selected), every page."""
        items: list[dict[str, Any]] = []
        params = {"limit": "500", **({"fieldSelector": field_selector} if field_selector else {})}
        while True:
            page = self.call("GET", f"{GROUP_PATH}/accessrequests", params=params)
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params["continue"] = token

    def request(self, name: str) -> dict[str, Any]:
        """One AccessRequest."""
        found: dict[str, Any] = self.call("GET", f"{GROUP_PATH}/accessrequests/{name}")
        return found

    def eligibilities(self) -> list[dict[str, Any]]:
        """Every RoleEligibility."""
        return list(self.call("GET", f"{GROUP_PATH}/roleeligibilities").get("items") or [])

    def create(self, body: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """Create an AccessRequest (admission decides; its refusal is raised as it is)."""
        created: dict[str, Any] = self.call("POST", f"{GROUP_PATH}/accessrequests", body,
                                            params={"dryRun": "All"} if dry_run else None)
        return created

    def patch_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the request's status (the caller's own approval or action)."""
        patched: dict[str, Any] = self.call(
            "PATCH", f"{GROUP_PATH}/accessrequests/{name}/status", {"status": status},
            content_type="application/merge-patch+json")
        return patched
