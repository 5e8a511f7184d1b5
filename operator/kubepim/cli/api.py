"""The few API calls ``kubectl pim`` makes, as the caller, over one HTTPS connection.

The same calls a user could make with kubectl (and nothing the chart's kubepim:requester and
approver roles do not allow): list/get/create/watch AccessRequests, patch their status, list
RoleEligibilities, and a SelfSubjectReview to learn who the API server says the caller is.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import time

from .kubeconfig import ConfigError, Connection

# Not typing, collections.abc or urllib.parse at run time: together a tenth of the start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

GROUP_PATH = "/apis/pim.kubepim.dev/v1alpha1"

# A kept-alive connection idle longer than this is reopened before a call rather than risked:
# the API server may have closed it (Go's default idle timeout is 90 s).
_IDLE_REUSE_SECONDS = 30


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH = _UNRESERVED | frozenset("/:@!$&'()*+,;=")  # RFC 3986 pchar and "/"
_QUERY = _UNRESERVED  # a key or value: everything else percent-encoded


def _quote(text: str, safe: frozenset[str]) -> str:
    """Percent-encode (UTF-8) every character of ``text`` not in ``safe``."""
    return "".join(c if c in safe else "".join(f"%{b:02X}" for b in c.encode())
                   for c in text)


def _split(server: str) -> tuple[bool, str, int, str]:
    """``https://host:port/prefix`` → (https?, host, port, prefix); IPv6 hosts in brackets."""
    scheme, sep, rest = server.partition("://")
    if not sep or scheme.lower() not in ("https", "http"):
        raise ConfigError(f"the kubeconfig's server {server!r} is not an http(s):// URL")
    https = scheme.lower() == "https"
    # The authority ends at the first of / ? # (as Go's url.Parse and urlsplit cut it): an "@"
    # after one of them is not userinfo ("https://good#@evil" is good's URL).
    end = min([at for at in map(rest.find, "/?#") if at >= 0], default=len(rest))
    authority, tail = rest[:end], rest[end:]
    authority = authority.rpartition("@")[2]
    if not authority.isprintable() or " " in authority:
        raise ConfigError(f"the kubeconfig's server {server!r} holds a space or a control "
                          "character in its host")
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigError(f"the kubeconfig's server {server!r} has a malformed IPv6 host")
        port_text = after[1:]
    else:
        host, _, port_text = authority.partition(":")
    if port_text and not (port_text.isascii() and port_text.isdigit()
                          and 0 < int(port_text) < 65536):
        raise ConfigError(f"the kubeconfig's server {server!r} has an invalid port "
                          f"{port_text!r} (1-65535)")
    port = int(port_text) if port_text else (443 if https else 80)
    prefix = tail.partition("?")[0].partition("#")[0].rstrip("/")
    return https, host or "localhost", port, prefix


class ApiError(Exception):
    """The API server refused or failed a call; ``message`` is its own message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Unreachable(Exception):
    """The API server could not be reached."""


class _NoAnswer(OSError):
    """The connection ended before the first byte of a response: nothing was answered."""


class _Response:
    """One HTTP/1.1 response read from a socket file: status line, headers, then the body."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        line = stream.readline(65537)
        if not line:
            raise _NoAnswer("the connection closed before an answer")
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise OSError(f"not an HTTP response: {line[:60]!r}")
        self.status = int(parts[1])
        self.reason = parts[2].strip() if len(parts) > 2 else ""
        self.headers: dict[str, str] = {}
        while True:
            header = stream.readline(65537)
            if not header:
                raise OSError("the connection closed in the middle of a response")
            if header in (b"\r\n", b"\n"):
                break
            key, _, value = header.decode("latin-1").partition(":")
            self.headers[key.strip().lower()] = value.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.keep_alive = (parts[0] == "HTTP/1.1"
                           and self.headers.get("connection", "").lower() != "close"
                           and (self.chunked or "content-length" in self.headers
                                or self.status in (204, 304)))

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives (a watch is one long chunked body)."""
        if self.status in (204, 304):
            return
        if not self.chunked:
            length = self.headers.get("content-length")
            if length is None:  # until the server closes; streamed, as a watch may be
                while data := self._stream.read1(65536):
                    yield data
                return
            data = self._stream.read(int(length))
            if len(data) != int(length):
                raise OSError("the connection closed in the middle of a response")
            yield data
            return
        while True:
            size_line = self._stream.readline(1026).split(b";")[0].strip()
            if not size_line:
                raise OSError("the connection closed in the middle of a response")
            size = int(size_line, 16)
            if size == 0:
                while self._stream.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            data = self._stream.read(size)
            self._stream.readline(3)
            if len(data) != size:
                raise OSError("the connection closed in the middle of a response")
            yield data

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self.chunks())

    def lines(self) -> Iterator[bytes]:
        """The body line by line (a watch sends one JSON event per line)."""
        pending = b""
        for data in self.chunks():
            pending += data
            *complete, pending = pending.split(b"\n")
            yield from complete
        if pending:
            yield pending


def _decoded(raw: bytes) -> Any:
    """The JSON of a body, or None when it is empty, not JSON or not UTF-8."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _refusal(status: int, reason: str, raw: bytes, answer: Any) -> ApiError:
    """The server's refusal in its own words (a Status message), or the start of the body."""
    message = answer.get("message") if isinstance(answer, dict) else None
    if status == 401:
        message = "Unauthorized: the credentials were refused (an expired token?) " \
            "— log in again, then retry"
    return ApiError(status, str(message or raw.decode(errors="replace")[:200] or reason))


def _idle_closed(sock: socket.socket) -> bool:
    """Whether a kept connection that should be silent has something to read.

    The server's close (or a stray byte): either way it must not carry the next request.
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class Api:
    """Calls as the kubeconfig's user, impersonating ``as_user``/``as_groups`` if given.

    HTTP/1.1 over one kept-alive TLS connection, written on the socket module: ``http.client``
    imports the ``email`` package, a third of the plugin's start-up, and ignores the
    kubeconfig's ``tls-server-name``. A watch gets a connection of its own.
    """

    def __init__(self, connection: Connection, as_user: str | None = None,
                 as_groups: list[str] | None = None, timeout: float = 30) -> None:
        self.connection = connection
        self.timeout = timeout
        self.headers = {"Accept": "application/json", "User-Agent": "kubectl-pim",
                        **connection.headers}
        if as_user:
            self.headers["Impersonate-User"] = as_user
        self.groups = list(as_groups or [])
        for value in [*self.headers.values(), *self.groups]:
            if any(c in value for c in "\r\n\0"):
                raise ConfigError("a credential or --as/--as-group value holds a line break; "
                                  "check the kubeconfig's token (or the credential plugin)")
        self._https, self._host, self._port, self._prefix = _split(connection.server)
        self._kept: tuple[socket.socket, Any] | None = None
        self._kept_since = 0.0

    def _open(self, timeout: float | None) -> tuple[socket.socket, Any]:
        sock = socket.create_connection((self._host, self._port), timeout=timeout)
        try:
            if self._https:
                # Never plaintext for https: a verifying default when no context was given.
                context = self.connection.context or ssl.create_default_context()
                sock = context.wrap_socket(
                    sock, server_hostname=self.connection.server_name or self._host)
        except BaseException:
            sock.close()
            raise
        return sock, sock.makefile("rb")

    def close(self) -> None:
        """Close the kept-alive connection, if any."""
        if self._kept is not None:
            sock, stream = self._kept
            self._kept = None
            stream.close()
            sock.close()

    def _request_bytes(self, method: str, path: str, params: dict[str, str] | None,
                       data: bytes | None, content_type: str, keep: bool) -> bytes:
        query = ("?" + "&".join(f"{_quote(str(k), _QUERY)}={_quote(str(v), _QUERY)}"
                                for k, v in params.items())) if params else ""
        target = _quote(self._prefix + path, _PATH)
        host = self._host if ":" not in self._host else f"[{self._host}]"
        lines = [f"{method} {target + query} HTTP/1.1", f"Host: {host}:{self._port}",
                 f"Connection: {'keep-alive' if keep else 'close'}"]
        lines += [f"{key}: {value}" for key, value in self.headers.items()]
        lines += [f"Impersonate-Group: {group}" for group in self.groups]
        if data is not None:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(data)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + (data or b"")

    def _unreachable(self, error: BaseException) -> Unreachable:
        reason = "timed out" if isinstance(error, socket.timeout) else str(error)
        return Unreachable(f"cannot reach the API server at {self.connection.server}: {reason}")

    def _exchange(self, method: str, path: str, body: Any, params: dict[str, str] | None,
                  content_type: str) -> tuple[int, str, bytes]:
        """One call over the kept-alive connection: status, reason, body."""
        data = json.dumps(body).encode() if body is not None else None
        request = self._request_bytes(method, path, params, data, content_type, keep=True)
        if self._kept is not None and (
                time.monotonic() - self._kept_since > _IDLE_REUSE_SECONDS
                or _idle_closed(self._kept[0])):
            self.close()
        for attempt in (1, 2):
            reused = self._kept is not None
            try:
                if self._kept is None:
                    self._kept = self._open(self.timeout)
                sock, stream = self._kept
                sock.sendall(request)
                response = _Response(stream)
                raw = response.read()
            except (OSError, ValueError) as error:
                self.close()
                # A kept connection the server closed just now ends before any answer: a read
                # is sent again once on a new one; a write never is (it may have been done).
                if (reused and attempt == 1 and method == "GET"
                        and isinstance(error, (_NoAnswer, ConnectionResetError,
                                               BrokenPipeError))):
                    continue
                raise self._unreachable(error) from error
            if response.keep_alive:
                self._kept_since = time.monotonic()
            else:
                self.close()
            return response.status, response.reason, raw
        raise AssertionError("unreachable")  # pragma: no cover

    def call(self, method: str, path: str, body: Any = None,
             params: dict[str, str] | None = None,
             content_type: str = "application/json") -> Any:
        """One call; the decoded answer, or :class:`ApiError` with the server's message."""
        status, reason, raw = self._exchange(method, path, body, params, content_type)
        answer = _decoded(raw)
        if status >= 400:
            raise _refusal(status, reason, raw, answer)
        if not isinstance(answer, dict):
            raise Unreachable(f"the API server at {self.connection.server} answered {method} "
                              f"{path} with no JSON object (a proxy in between?)")
        return answer

    def watch(self, path: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Events of a watch (``{"type", "object"}``) until the server ends it.

        On a connection of its own, closed when the caller stops iterating. Silence longer than
        the watch's own timeout (or an hour) is a dead connection, reported as unreachable.
        """
        request = self._request_bytes("GET", path, {**params, "watch": "true"}, None,
                                      "application/json", keep=False)
        try:
            sock, stream = self._open(self.timeout)
        except (OSError, ValueError) as error:
            raise self._unreachable(error) from error
        try:
            try:
                sock.sendall(request)
                response = _Response(stream)
                if response.status >= 400:
                    raw = response.read()
                    raise _refusal(response.status, response.reason, raw, _decoded(raw))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.settimeout(float(params.get("timeoutSeconds") or 3600) + 60)
                for line in response.lines():
                    if line.strip():
                        yield json.loads(line)
            except (OSError, ValueError) as error:
                raise self._unreachable(error) from error
        finally:
            stream.close()
            sock.close()

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

    def list_all(self, path: str) -> list[dict[str, Any]]:
        """Every object of a collection, a page (500) at a time."""
        items: list[dict[str, Any]] = []
        params = {"limit": "500"}
        while True:
            page = self.call("GET", path, params=params)
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

    def patch_run_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of an EligibilityReviewRun's status (the caller's own decisions)."""
        patched: dict[str, Any] = self.call(
            "PATCH", f"{GROUP_PATH}/eligibilityreviewruns/{name}/status", {"status": status},
            content_type="application/merge-patch+json")
        return patched
