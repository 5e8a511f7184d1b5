"""kubectl pim's HTTP/1.1 transport against a real local HTTP server (http.server).

The plugin talks HTTP on the socket module (start-up time: see cli/api.py); these tests pin the
parts of the protocol it relies on: lengths, chunked bodies split anywhere, a kept-alive
connection reused, a closed one reopened for a read but never for a create, and errors.
The commands themselves run against the real control plane in tests/e2e/test_plugin.py.
"""

from __future__ import annotations

import json
import select
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kubepim.cli.api import Api, ApiError, Unreachable
from kubepim.cli.kubeconfig import ConfigError, Connection


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    seen: list[tuple[str, str, dict[str, str], bytes]]
    close_after_next = False
    groups: list[list[str]]
    streamed: threading.Event


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        self.server.groups.append(self.headers.get_all("Impersonate-Group") or [])
        if self.path.startswith("/drop"):  # read the request, then close without an answer
            self.close_connection = True
            return
        if self.path.startswith("/denied"):
            data = b'{"kind":"Status","message":"watch is forbidden"}'
            self.send_response(403)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if self.path.startswith("/until-close"):  # HTTP/1.0 style: no length, no chunks
            self.wfile.write(b"HTTP/1.0 200 OK\r\n\r\n")
            self.wfile.flush()
            self.wfile.write(b'{"type":"ADDED","object":{"n":1}}\n')
            self.wfile.flush()
            self.server.streamed.wait(5)  # the first event is seen before the body ends
            self.wfile.write(b'{"type":"DELETED","object":{"n":1}}\n')
            self.close_connection = True
            return
        if "watch=true" in self.path:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            stream = b'{"type":"ADDED","object":{"n":1}}\n{"type":"MODI' \
                b'FIED","object":{"n":2}}\n\n{"type":"DELETED","object":{"n":3}}\n'
            for start in range(0, len(stream), 7):  # events split across chunks anywhere
                piece = stream[start:start + 7]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        status, answer = (404, {"kind": "Status", "message": "accessrequests \"x\" not found"}) \
            if self.path.endswith("/missing") else (200, {"method": self.command})
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.server.close_after_next:
            self.server.close_after_next = False
            self.close_connection = True  # closes without saying so, as an idle timeout does
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _answer


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.seen, httpd.groups, httpd.streamed = [], [], threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _api(server: _Server, **kwargs: Any) -> Api:
    connection = Connection(f"http://127.0.0.1:{server.server_address[1]}", None)
    connection.headers["Authorization"] = "Bearer t0ken"
    return Api(connection, timeout=5, **kwargs)


def test_calls_share_one_kept_alive_connection_and_send_who_we_act_as(server: _Server) -> None:
    api = _api(server, as_user="alice", as_groups=["team-a", "oncall"])
    assert api.call("GET", "/a") == {"method": "GET"}
    assert api.call("POST", "/b", {"x": 1}) == {"method": "POST"}
    assert api.call("PATCH", "/c", {"y": 2}, content_type="application/merge-patch+json") \
        == {"method": "PATCH"}
    assert server.connections == 1
    method, path, headers, body = server.seen[2]
    assert (method, path, json.loads(body)) == ("PATCH", "/c", {"y": 2})
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["Impersonate-User"] == "alice"
    first = server.seen[0][2]
    assert first["Impersonate-User"] == "alice" and first["Host"].startswith("127.0.0.1:")
    assert server.groups == [["team-a", "oncall"]] * 3


def test_a_line_break_in_a_credential_is_refused_before_any_call(server: _Server) -> None:
    connection = Connection(f"http://127.0.0.1:{server.server_address[1]}", None)
    connection.headers["Authorization"] = "Bearer t0ken\r\nX-Evil: 1"
    with pytest.raises(ConfigError, match="line break"):
        Api(connection)
    assert server.seen == []


def test_names_are_sent_percent_encoded(server: _Server) -> None:
    _api(server).call("GET", "/accessrequests/a b?c")
    assert server.seen[0][1] == "/accessrequests/a%20b%3Fc"


def test_a_connection_the_server_closed_while_idle_is_not_reused(server: _Server) -> None:
    api = _api(server)
    server.close_after_next = True
    api.call("GET", "/a", params={"fieldSelector": "status.phase=Pending"})
    assert api._kept is not None
    kept = api._kept[0]
    deadline = time.monotonic() + 5  # the server's close reaches us: the connection is idle
    while not select.select([kept], [], [], 0.05)[0] and time.monotonic() < deadline:
        pass
    assert api.call("POST", "/b", {"x": 1}) == {"method": "POST"}
    assert server.connections == 2
    assert [(s[0], s[1]) for s in server.seen] == [
        ("GET", "/a?fieldSelector=status.phase%3DPending"), ("POST", "/b")]


def test_a_write_dropped_unanswered_is_never_sent_again(server: _Server) -> None:
    api = _api(server)
    api.call("GET", "/a")
    with pytest.raises(Unreachable, match=r"cannot reach the API server at http://127\.0\.0\.1"):
        api.call("POST", "/drop", {"x": 1})
    assert [s[0] for s in server.seen] == ["GET", "POST"]
    assert api.call("POST", "/c", {"x": 1}) == {"method": "POST"}  # a fresh connection works


def test_a_read_dropped_unanswered_on_a_kept_connection_is_sent_once_more(
    server: _Server,
) -> None:
    api = _api(server)
    api.call("GET", "/a")
    with pytest.raises(Unreachable, match="closed before an answer"):
        api.call("GET", "/drop")
    assert [s[1] for s in server.seen] == ["/a", "/drop", "/drop"]


def test_the_servers_refusal_is_raised_with_its_own_message(server: _Server) -> None:
    with pytest.raises(ApiError) as refused:
        _api(server).call("GET", "/missing")
    assert (refused.value.status, refused.value.message) == (404, 'accessrequests "x" not found')


def test_a_watch_yields_each_event_however_the_chunks_fall(server: _Server) -> None:
    api = _api(server)
    events = list(api.watch("/w", {"resourceVersion": "7"}))
    assert [(e["type"], e["object"]["n"]) for e in events] == [
        ("ADDED", 1), ("MODIFIED", 2), ("DELETED", 3)]
    assert server.seen[0][1] == "/w?resourceVersion=7&watch=true"
    assert api.call("GET", "/after") == {"method": "GET"}  # the watch had its own connection


def test_a_body_without_length_is_streamed_until_the_server_closes(server: _Server) -> None:
    events = _api(server).watch("/until-close", {})
    assert next(events)["type"] == "ADDED"  # before the server has finished the body
    server.streamed.set()
    assert [e["type"] for e in events] == ["DELETED"]


def test_a_refused_watch_raises_the_servers_message(server: _Server) -> None:
    with pytest.raises(ApiError, match="watch is forbidden"):
        list(_api(server).watch("/denied", {}))


def test_nothing_listening_is_unreachable_not_a_traceback() -> None:
    api = Api(Connection("http://127.0.0.1:1", None), timeout=5)
    with pytest.raises(Unreachable, match=r"cannot reach the API server at http://127\.0\.0\.1:1\b"):
        api.call("GET", "/a")
    with pytest.raises(Unreachable):
        list(api.watch("/w", {}))
