"""Notifications on the real control plane, to real receivers on 127.0.0.1.

A CloudEvents receiver checks every event's attributes and Standard Webhooks signature; an SMTP
server (aiosmtpd) takes the approvers' mail; a stand-in speaking Slack's Web API
(chat.postMessage, chat.update, thread_ts) records posts, edits and thread replies. Faults: a
receiver answering 500, a receiver down for a whole grant, the operator killed with a delivery
owed.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from kubepim.domain import notify
from tests.e2e import pim
from tests.e2e.conftest import IN_CLUSTER
from tests.e2e.support import Kubectl, OperatorProcess, free_port, poll

OPERATOR_NAMESPACE = "kubepim"

# The receivers listen on this machine's loopback, which an operator in a pod cannot reach.
pytestmark = pytest.mark.skipif(IN_CLUSTER, reason="receivers on the test runner's 127.0.0.1")


class _Receiver(ThreadingHTTPServer):
    """An HTTP receiver: records what it accepts; fails the first ``failures`` posts."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        self.failures = 0
        self.attempts = 0
        self.slack_ts = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.attempts += 1
            failing = self.server.failures > 0
            if failing:
                self.server.failures -= 1
            else:
                self.server.accepted.append(({k.lower(): v for k, v in self.headers.items()},
                                             body))
            answer: dict[str, Any] = {"ok": True}
            if self.path.endswith("/chat.postMessage"):
                self.server.slack_ts += 1
                answer["ts"] = f"1700000000.{self.server.slack_ts:06d}"
        data = json.dumps(answer).encode()
        self.send_response(500 if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    yield server
    server.stop()


def _secret(kubectl: Kubectl, name: str, **values: str) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}))


def _route(kubectl: Kubectl, name: str, channel: dict[str, Any], **spec: Any) -> None:
    pim.apply(kubectl, {"apiVersion": pim.API_VERSION, "kind": "NotificationRoute",
                        "metadata": {"name": name},
                        "spec": {"channel": channel, "match": {"eligibilities": [name]},
                                 **spec}})


def _ready(kubectl: Kubectl, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        route = kubectl.json("get", "notificationroute", name)
        found = [c for c in (route.get("status") or {}).get("conditions") or []
                 if c["type"] == "Ready"]
        return found[0] if found else None
    return poll(check, timeout=10, what=f"route {name} reports Ready")


@pytest.fixture
def cleanup(kubectl: Kubectl) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        kubectl("delete", "notificationroute", name, "--ignore-not-found", check=False)
        kubectl("delete", "secret", name, "-n", OPERATOR_NAMESPACE, "--ignore-not-found",
                check=False)


def _grant(kubectl: Kubectl, namespace: str, duration: str = "3s") -> str:
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration=duration, justification="INC-7: <!channel> look at pods"), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    pim.approve(kubectl, namespace, "bob")
    pim.wait_phase(kubectl, namespace, "Active")
    return namespace


def _events(received: list[tuple[dict[str, str], bytes]], key: bytes) -> list[dict[str, Any]]:
    """The CloudEvents received, each checked: Standard Webhooks signature, attributes."""
    events = []
    for headers, body in received:
        assert headers["content-type"] == "application/cloudevents+json"
        assert notify.verify(key, headers["webhook-id"], int(headers["webhook-timestamp"]),
                             body, headers["webhook-signature"]), "bad signature"
        event = json.loads(body)
        assert event["specversion"] == "1.0" and event["id"] == headers["webhook-id"]
        assert event["source"] == "urn:kubepim:kubernetes"
        assert event["type"].startswith("dev.kubepim.accessrequest.")
        assert event["datacontenttype"] == "application/json" and event["time"]
        events.append(event)
    return events


def test_a_signed_cloudevent_per_transition_reaches_the_receiver_once(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, receiver: _Receiver,
    cleanup: list[str],
) -> None:
    cleanup.append(namespace)
    key = secrets.token_urlsafe(24)
    _secret(kubectl, namespace, hmacKey=key)
    _route(kubectl, namespace, {"type": "Webhook", "url": receiver.url + "/events",
                                "secretRef": {"name": namespace}})
    assert _ready(kubectl, namespace)["status"] == "True"
    pim.pod_reader_for_alice(kubectl, namespace)
    notified = poll(lambda: _condition(kubectl, namespace, "Notified"), timeout=10,
                    what="the eligibility's Notified condition")
    assert (notified["status"], notified["message"]) == ("True", f"notified through {namespace}")
    name = _grant(kubectl, namespace)
    settled = poll(lambda: (body := pim.get_request(kubectl, name))["status"].get("settled")
                   and body, timeout=20, what="the request settled after its notifications")
    events = _events(receiver.accepted, key.encode())
    uid = settled["metadata"]["uid"]
    assert [(e["id"], e["type"].rsplit(".", 1)[-1]) for e in events] == [
        (f"{uid}/0", "requested"), (f"{uid}/1", "approved"), (f"{uid}/2", "activated"),
        (f"{uid}/3", "expired")]
    first = events[0]["data"]
    assert first["requester"] == "alice" and first["role"] == "Role/pod-reader"
    assert first["approve"] == f"kubectl pim approve {name}"
    assert settled["status"]["notifications"][namespace]["next"] == 4


def _condition(kubectl: Kubectl, eligibility: str, kind: str) -> dict[str, Any] | None:
    body = kubectl.json("get", "roleeligibility", eligibility)
    found = [c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == kind]
    return found[0] if found else None


def test_an_eligibility_no_route_matches_says_nobody_is_told(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str,
) -> None:
    pim.pod_reader_for_alice(kubectl, namespace)
    notified = poll(lambda: _condition(kubectl, namespace, "Notified"), timeout=10,
                    what="the eligibility's Notified condition")
    assert (notified["status"], notified["reason"]) == ("False", "NoRoute")
    assert "nobody is told of its requests" in notified["message"]


def test_a_route_without_its_secret_says_so_and_a_fixed_one_delivers(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, receiver: _Receiver,
    cleanup: list[str],
) -> None:
    cleanup.append(namespace)
    _route(kubectl, namespace, {"type": "Webhook", "url": receiver.url,
                                "secretRef": {"name": namespace}})
    missing = _ready(kubectl, namespace)
    assert (missing["status"], missing["reason"]) == ("False", "SecretMissing")
    assert f"Secret {namespace} does not exist in namespace kubepim" in missing["message"]
    refused = kubectl("apply", "-f", "-", check=False, stdin=json.dumps({
        "apiVersion": pim.API_VERSION, "kind": "NotificationRoute",
        "metadata": {"name": namespace + "-x"},
        "spec": {"channel": {"type": "Carrier-Pigeon"}}}))
    assert refused.returncode != 0 and "Unsupported value" in refused.stderr
    assert '"Webhook"' in refused.stderr  # the message lists what is allowed

    _secret(kubectl, namespace, hmacKey="k")
    kubectl("annotate", "notificationroute", namespace, "touched=1")  # a route event: re-check
    poll(lambda: _ready(kubectl, namespace)["status"] == "True", timeout=10,
         what="Ready once the Secret exists")


def test_a_receiver_failing_three_times_gets_the_event_once_counted_as_retried(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, receiver: _Receiver,
    cleanup: list[str],
) -> None:
    cleanup.append(namespace)
    _secret(kubectl, namespace, hmacKey="k")
    _route(kubectl, namespace, {"type": "Webhook", "url": receiver.url,
                                "secretRef": {"name": namespace}},
           events=["Requested"], retry={"attempts": 5, "firstDelay": "1s"})
    _ready(kubectl, namespace)
    pim.pod_reader_for_alice(kubectl, namespace)
    before = _metric(operator, "Requested", "retried")
    receiver.failures = 3
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        justification="INC-8"), as_user="alice")
    poll(lambda: len(receiver.accepted) >= 1, timeout=20,
         what="the event delivered after 3 failures")
    assert (receiver.attempts, len(receiver.accepted)) == (4, 1)
    assert _metric(operator, "Requested", "retried") - before == 3


def _metric(operator: OperatorProcess, event: str, result: str) -> float:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("kubepim_notifications_total{") and f'event="{event}"' in line \
                    and f'result="{result}"' in line and 'channel_type="Webhook"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_receiver_down_for_the_whole_grant_leaves_a_warning_and_the_grant_unaffected(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, cleanup: list[str],
) -> None:
    cleanup.append(namespace)
    _secret(kubectl, namespace, hmacKey="k")
    down = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    _route(kubectl, namespace, {"type": "Webhook", "url": down,
                                "secretRef": {"name": namespace}},
           events=["Activated"], retry={"attempts": 2, "firstDelay": "1s"})
    _ready(kubectl, namespace)
    pim.pod_reader_for_alice(kubectl, namespace)
    before = _metric(operator, "Activated", "failed")
    name = _grant(kubectl, namespace, duration="1h")
    assert kubectl.can_i("list", "pods", as_user="alice", namespace=namespace)
    poll(lambda: "NotificationFailed" in pim.event_reasons(kubectl, name), timeout=20,
         what="a NotificationFailed Warning Event")
    assert _metric(operator, "Activated", "failed") - before == 1
    assert pim.phase_of(kubectl, name) == "Active"


class _Mailbox:
    def __init__(self) -> None:
        self.mail: list[Message] = []

    async def handle_DATA(self, _: Any, __: Any, envelope: Any) -> str:
        self.mail.append(message_from_bytes(envelope.content))
        return "250 OK"


def test_approvers_and_then_the_requester_get_mail_from_a_real_smtp_server(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, cleanup: list[str],
) -> None:
    requester_route = f"{namespace}-requester"
    cleanup += [namespace, requester_route]
    mailbox = _Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    server = {"host": "127.0.0.1", "port": smtp.port, "starttls": False,
              "from": "kubepim@example.com"}
    try:
        _route(kubectl, namespace, {"type": "Email", "smtp": {
            **server, "to": ["approvers@example.com"]}}, events=["Requested"])
        # The requester's own route: their address from their authenticated username.
        pim.apply(kubectl, {"apiVersion": pim.API_VERSION, "kind": "NotificationRoute",
                            "metadata": {"name": requester_route},
                            "spec": {"channel": {"type": "Email", "smtp": {
                                **server, "toRequester": True,
                                "requesterDomain": "example.com"}},
                                "match": {"eligibilities": [namespace]},
                                "events": ["Activated"]}})
        assert _ready(kubectl, namespace)["status"] == "True"
        assert _ready(kubectl, requester_route)["status"] == "True"
        pim.pod_reader_for_alice(kubectl, namespace)
        pim.apply(kubectl, pim.access_request(
            namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
            justification="INC-9: <b>pods</b>"), as_user="alice")
        poll(lambda: len(mailbox.mail) >= 1, timeout=20, what="the approvers' mail")
        # Still Pending: the progress is written alone, on the version decided, with its uid.
        poll(lambda: ((pim.get_request(kubectl, namespace)["status"].get("notifications")
                       or {}).get(namespace) or {}).get("next") == 1, timeout=20,
             what="the route's progress recorded while Pending")
        pim.approve(kubectl, namespace, "bob")
        poll(lambda: len(mailbox.mail) >= 2, timeout=20, what="the requester's mail")
    finally:
        smtp.stop()
    mail = mailbox.mail[0]
    assert mail["To"] == "approvers@example.com" and "Requested" in mail["Subject"]
    parts = {part.get_content_type(): part.get_payload(decode=True).decode()
             for part in mail.walk() if not part.is_multipart()}
    assert f"kubectl pim approve {namespace}" in parts["text/plain"]
    assert "&lt;b&gt;pods&lt;/b&gt;" in parts["text/html"]  # escaped in HTML
    told = mailbox.mail[1]
    assert told["To"] == "alice@example.com" and "Activated" in told["Subject"]
    assert len(mailbox.mail) == 2


def test_an_email_route_without_recipients_is_refused_at_apply(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str,
) -> None:
    refused = kubectl("apply", "-f", "-", check=False, stdin=json.dumps({
        "apiVersion": pim.API_VERSION, "kind": "NotificationRoute",
        "metadata": {"name": f"{namespace}-nobody"},
        "spec": {"channel": {"type": "Email", "smtp": {
            "host": "127.0.0.1", "from": "kubepim@example.com"}}}}))
    assert refused.returncode != 0
    assert "smtp needs recipients: to (addresses), toRequester: true, or both" in refused.stderr


def test_slack_gets_one_message_edited_in_place_with_a_thread_reply_per_transition(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, receiver: _Receiver,
    cleanup: list[str],
) -> None:
    cleanup.append(namespace)
    _secret(kubectl, namespace, token="xoxb-test")
    _route(kubectl, namespace, {"type": "Slack", "url": receiver.url + "/api",
                                "slackChannel": "C0PIM", "secretRef": {"name": namespace}})
    _ready(kubectl, namespace)
    pim.pod_reader_for_alice(kubectl, namespace)
    name = _grant(kubectl, namespace)
    body = poll(lambda: (b := pim.get_request(kubectl, name))["status"].get("settled") and b,
                timeout=20, what="settled")
    calls = [(h["authorization"], json.loads(b)) for h, b in receiver.accepted]
    assert all(auth == "Bearer xoxb-test" for auth, _ in calls)
    posts = [c for _, c in calls if "ts" not in c]
    updates = [c for _, c in calls if "ts" in c]
    assert len(posts) == 1 + 3 and posts[0].get("thread_ts") is None  # the message, 3 replies
    thread = "1700000000.000001"
    assert all(p["thread_ts"] == thread for p in posts[1:])
    assert [u["ts"] for u in updates] == [thread] * 3
    assert "&lt;!channel&gt;" in posts[0]["text"]  # the requester cannot page the channel
    assert body["status"]["notifications"][namespace]["thread"] == thread


def test_a_notification_owed_when_the_operator_dies_is_sent_after_the_restart(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, cleanup: list[str],
) -> None:
    cleanup.append(namespace)
    port = free_port()
    _secret(kubectl, namespace, hmacKey="k")
    _route(kubectl, namespace, {"type": "Webhook", "url": f"http://127.0.0.1:{port}/",
                                "secretRef": {"name": namespace}},
           events=["Requested"], retry={"attempts": 20, "firstDelay": "1s"})
    _ready(kubectl, namespace)
    pim.pod_reader_for_alice(kubectl, namespace)
    pim.apply(kubectl, pim.access_request(
        namespace, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        justification="INC-10"), as_user="alice")
    pim.wait_phase(kubectl, namespace, "Pending")
    operator.kill()  # the receiver was down: the delivery was owed, not recorded
    receiver = _Receiver(port)
    try:
        operator.start()
        poll(lambda: len(receiver.accepted) >= 1, timeout=30, what="delivered after the restart")
        ids = {json.loads(b)["id"] for _, b in receiver.accepted}
        uid = pim.get_request(kubectl, namespace)["metadata"]["uid"]
        assert ids == {f"{uid}/0"}
    finally:
        receiver.stop()
