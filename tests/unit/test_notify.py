"""Notifications without a cluster: routing, what is owed, signatures, retries, the notifier.

The notifier's deliveries go to a real HTTP server on 127.0.0.1 (aiohttp), which answers as a
test tells it to; the whole flow on the real control plane is tests/e2e/test_notifications.py.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import pytest
from aiohttp import web

from kubepim import metrics
from kubepim.api.common import LabelSelector
from kubepim.api.notification import NotificationRouteSpec
from kubepim.api.request import AccessRequest
from kubepim.domain import notify
from kubepim.notify import channels
from kubepim.notify.channels import Credentials
from kubepim.notify.notifier import Notifier, Route

from .builders import NOW, access_request, eligibility, entry, request


def _route(**fields: Any) -> NotificationRouteSpec:
    base: dict[str, Any] = {"channel": {"type": "Webhook", "url": "http://127.0.0.1:1/",
                                        "secretRef": {"name": "hook"}}}
    return NotificationRouteSpec.model_validate({**base, **fields})


def _history(*actions: str) -> list[dict[str, Any]]:
    return [entry(a, NOW + datetime.timedelta(seconds=i), actor="alice").wire()
            for i, a in enumerate(actions)]


def test_a_route_matches_on_every_criterion_it_gives() -> None:
    plain = access_request(eligibility="payments-db")
    glass = access_request(request(breakGlass=True), eligibility="payments-db")
    assert notify.matches(_route(), plain, "payments-db", None)
    assert not notify.matches(_route(match={"breakGlassOnly": True}), plain, "payments-db", None)
    assert notify.matches(_route(match={"breakGlassOnly": True}), glass, "payments-db", None)
    assert not notify.matches(_route(match={"eligibilities": ["other"]}), plain, "payments-db",
                              None)
    selector = {"eligibilitySelector": LabelSelector(match_labels={"team": "pay"}).wire()}
    assert notify.matches(_route(match=selector), plain, "payments-db", {"team": "pay"})
    assert not notify.matches(_route(match=selector), plain, "payments-db", {"team": "web"})
    assert not notify.matches(_route(match=selector), plain, "payments-db", None)
    assert not notify.matches(_route(match={"roles": [{"kind": "Role", "name": "admin"}]}),
                              plain, "payments-db", None)
    assert notify.matches(_route(match={"namespaces": ["payments"]}), plain, "x", None)
    assert not notify.matches(_route(match={"namespaces": ["web"]}), plain, "x", None)


def test_the_routes_of_an_eligibility_are_those_that_can_match_its_requests() -> None:
    routes = {"all": _route(), "named": _route(match={"eligibilities": ["pay"]}),
              "other": _route(match={"eligibilities": ["web"]}),
              "labelled": _route(match={"eligibilitySelector": {"matchLabels": {"t": "p"}}}),
              "narrowed": _route(match={"roles": [{"kind": "Role", "name": "x"}]})}
    assert notify.routes_for("pay", {"t": "p"}, routes) == ["all", "labelled", "named",
                                                            "narrowed"]
    assert notify.routes_for("web", {}, routes) == ["all", "narrowed", "other"]
    assert notify.routes_for("pay", {}, {}) == []


def test_what_is_owed_starts_where_delivery_stopped_and_after_the_route_was_made() -> None:
    req = access_request(history=_history("Requested", "Approved", "Activated", "Expired"))
    made_before = NOW - datetime.timedelta(days=1)
    assert [d.index for d in notify.due("r", _route(), made_before, req, 0)] == [0, 1, 2, 3]
    assert [d.index for d in notify.due("r", _route(), made_before, req, 2)] == [2, 3]
    # A route made after the first two transitions is not told of them.
    later = NOW + datetime.timedelta(seconds=1, milliseconds=500)
    assert [d.index for d in notify.due("r", _route(), later, req, 0)] == [2, 3]
    only = _route(events=["Requested", "Expired"])
    assert [d.entry.action for d in notify.due("r", only, made_before, req, 0)] == \
        ["Requested", "Expired"]


def test_retries_double_honour_retry_after_and_are_capped() -> None:
    second = datetime.timedelta(seconds=1)
    assert [notify.retry_delay(second, n).total_seconds() for n in (1, 2, 3, 4)] == \
        [1, 2, 4, 8]
    assert notify.retry_delay(second, 1, retry_after=30).total_seconds() == 30
    assert notify.retry_delay(second, 3, retry_after=1).total_seconds() == 4
    assert notify.retry_delay(second, 40) == notify.MAX_DELAY
    assert notify.retry_delay(second, 1, retry_after=10**9) == notify.MAX_DELAY


@pytest.mark.parametrize("url, allowed", [
    ("https://hooks.example.com/x", True), ("http://127.0.0.1:8080/x", True),
    ("http://localhost/x", True), ("http://[::1]:9/x", True),
    ("http://hooks.example.com/x", False), ("ftp://127.0.0.1/", False), ("https://", False),
    ("http://127.0.0.1:99999/", False)])
def test_endpoints_are_https_or_loopback_http(url: str, allowed: bool) -> None:
    problem = notify.endpoint_problem(url)
    assert (problem is None) == allowed, problem
    if problem and "example.com/x" in url:
        assert "/x" not in problem  # a webhook URL's path may be its secret: never in status


def test_the_signature_is_standard_webhooks_own_test_vector() -> None:
    """The example of the Standard Webhooks specification (standard-webhooks.com)."""
    key = notify.signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    header = notify.signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert header == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert notify.verify(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, header)
    assert not notify.verify(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body + b" ",
                             header)
    assert notify.signing_key("plain") == b"plain"


def _body(req: AccessRequest, name: str = "alice-db-1", uid: str = "u-1") -> dict[str, Any]:
    return {"apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": name, "uid": uid, "resourceVersion": "1"}, **req.wire()}


def test_a_cloudevent_carries_the_audit_id_and_clipped_text() -> None:
    req = access_request(request(justification="x" * 1000, ticket="INC-1"),
                         history=_history("Requested"), eligibility="payments-db")
    data = notify.facts(_body(req), req, eligibility(), 0, req.status.history[0])  # type: ignore[union-attr]
    event = notify.cloudevent("urn:kubepim:test", data)
    assert {k: event[k] for k in ("specversion", "id", "source", "type", "subject")} == {
        "specversion": "1.0", "id": "u-1/0", "source": "urn:kubepim:test",
        "type": "dev.kubepim.accessrequest.requested", "subject": "alice-db-1"}
    assert len(event["data"]["justification"]) == notify.TEXT_LIMIT
    assert event["data"]["approvals"] == {"given": [], "required": 1}
    assert event["data"]["approve"] == "kubectl pim approve alice-db-1"


def test_slack_text_cannot_mention_or_link_from_user_text() -> None:
    req = access_request(request(justification="<!channel> see <https://evil|here> & more"),
                         history=_history("Requested"))
    data = notify.facts(_body(req), req, None, 0, req.status.history[0])  # type: ignore[union-attr]
    text = channels._slack_text(data)
    assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt;" in text and "&amp; more" in text


def test_credentials_never_show_their_values() -> None:
    assert "s3cret" not in repr(Credentials({"token": "s3cret"}))
    assert "s3cret" not in str(Credentials({"token": "s3cret"}))


# The notifier against a real HTTP receiver


class _Receiver:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0

    async def handle(self, http: web.Request) -> web.Response:
        self.attempts += 1
        body = await http.read()
        if self.failures:
            self.failures -= 1
            return web.Response(status=500)
        self.seen.append((dict(http.headers), body))
        return web.Response(status=204)


async def _serve(receiver: _Receiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook"


def _counted(result: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "kubepim_notifications_total",
        {"channel_type": "Webhook", "event": "Expired", "result": result}) or 0.0


def test_a_failing_receiver_is_retried_then_delivered_once_and_the_request_settles() -> None:
    async def scenario() -> None:
        receiver = _Receiver(failures=3)
        runner, url = await _serve(receiver)
        settled: list[str] = []
        warnings: list[str] = []

        async def warn(_: dict[str, Any], reason: str, message: str) -> None:
            warnings.append(f"{reason}: {message}")

        notifier = Notifier("urn:kubepim:test", warn, settled.append, lambda: True)
        route = _route(channel={"type": "Webhook", "url": url, "secretRef": {"name": "h"}},
                       events=["Expired"], retry={"attempts": 5, "firstDelay": "1s"})
        notifier.set_route("ops", Route(route, NOW - datetime.timedelta(days=1),
                                        Credentials({"hmacKey": "k3y"})))
        req = access_request(history=_history("Requested", "Activated", "Expired"),
                             phase="Expired", eligibility="payments-db")
        retried = _counted("retried")
        try:
            notifier.observe(_body(req), req, eligibility(), None)
            assert notifier.owes("u-1")
            notifier.observe(_body(req), req, eligibility(), None)  # seen again: no repeat
            deadline = asyncio.get_running_loop().time() + 30
            while notifier.owes("u-1") and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            progress = notifier.progress("u-1")
        finally:
            await notifier.close()
            await runner.cleanup()
        assert receiver.attempts == 4 and len(receiver.seen) == 1
        headers, body = receiver.seen[0]
        event = json.loads(body)
        assert event["id"] == "u-1/2" and event["type"] == "dev.kubepim.accessrequest.expired"
        assert headers["webhook-id"] == "u-1/2"
        assert notify.verify(b"k3y", "u-1/2", int(headers["webhook-timestamp"]), body,
                             headers["webhook-signature"])
        assert _counted("retried") - retried == 3
        assert progress == {"ops": {"next": 3, "failed": 0, "reminders": 0, "warned": False}}
        assert settled == ["alice-db-1"] and warnings == []

    asyncio.run(scenario())


def test_a_receiver_that_never_answers_well_gets_a_warning_and_the_route_moves_on() -> None:
    async def scenario() -> None:
        receiver = _Receiver(failures=100)
        runner, url = await _serve(receiver)
        warnings: list[str] = []

        async def warn(_: dict[str, Any], reason: str, message: str) -> None:
            warnings.append(f"{reason}: {message}")

        notifier = Notifier("urn:kubepim:test", warn, lambda _: None, lambda: True)
        route = _route(channel={"type": "Webhook", "url": url, "secretRef": {"name": "h"}},
                       retry={"attempts": 2, "firstDelay": "1s"})
        notifier.set_route("ops", Route(route, NOW - datetime.timedelta(days=1),
                                        Credentials({"hmacKey": "k3y"})))
        req = access_request(history=_history("Requested"), phase="Pending")
        failed = metrics.REGISTRY.get_sample_value(
            "kubepim_notifications_total",
            {"channel_type": "Webhook", "event": "Requested", "result": "failed"}) or 0.0
        try:
            notifier.observe(_body(req), req, None, None)
            deadline = asyncio.get_running_loop().time() + 30
            while notifier.owes("u-1") and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            progress = notifier.progress("u-1")
        finally:
            await notifier.close()
            await runner.cleanup()
        assert receiver.attempts == 2 and receiver.seen == []
        assert len(warnings) == 1 and warnings[0].startswith("NotificationFailed: could not "
                                                             "notify route ops (Webhook)")
        assert "k3y" not in warnings[0]
        assert (metrics.REGISTRY.get_sample_value(
            "kubepim_notifications_total",
            {"channel_type": "Webhook", "event": "Requested", "result": "failed"}) or 0.0) \
            - failed == 1
        assert progress == {"ops": {"next": 1, "failed": 1, "reminders": 0, "warned": False}}

    asyncio.run(scenario())


def test_what_the_status_records_is_not_sent_again() -> None:
    async def scenario() -> None:
        receiver = _Receiver()
        runner, url = await _serve(receiver)
        notifier = Notifier("urn:kubepim:test", _no_warning, lambda _: None, lambda: True)
        route = _route(channel={"type": "Webhook", "url": url, "secretRef": {"name": "h"}})
        notifier.set_route("ops", Route(route, NOW - datetime.timedelta(days=1),
                                        Credentials({"hmacKey": "k"})))
        req = access_request(history=_history("Requested", "Approved", "Activated"),
                             phase="Active", notifications={"ops": {"next": 2}})
        try:
            notifier.observe(_body(req), req, None, None)
            deadline = asyncio.get_running_loop().time() + 30
            while notifier.owes("u-1") and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await notifier.close()
            await runner.cleanup()
        assert [json.loads(body)["id"] for _, body in receiver.seen] == ["u-1/2"]

    asyncio.run(scenario())


async def _no_warning(_: dict[str, Any], reason: str, message: str) -> None:
    raise AssertionError(f"unexpected warning {reason}: {message}")


def test_reminders_come_at_doubling_intervals_and_stop_at_the_count() -> None:
    route = _route(reminders={"after": "30m", "count": 3})
    at = [notify.reminder_at(route, NOW, sent) for sent in range(4)]
    assert [(a - NOW) if a else None for a in at] == [
        datetime.timedelta(minutes=30), datetime.timedelta(minutes=90),
        datetime.timedelta(minutes=210), None]
    assert notify.reminder_at(_route(), NOW, 0) is None  # no reminders asked for
    assert notify.reminder_at(_route(reminders={"after": "30m"}, events=["Requested"]),
                              NOW, 0) is None  # not among the events it wants
    warned = _route(expiryWarning="10m")
    assert notify.warning_at(warned, NOW) == NOW - datetime.timedelta(minutes=10)
    assert notify.warning_at(_route(), NOW) is None


def test_a_pending_request_is_reminded_and_an_active_one_warned_before_expiry() -> None:
    async def scenario() -> None:
        receiver = _Receiver()
        runner, url = await _serve(receiver)
        asked: list[str] = []
        notifier = Notifier("urn:kubepim:test", _no_warning, asked.append, lambda: True)
        route = _route(channel={"type": "Webhook", "url": url, "secretRef": {"name": "h"}},
                       events=["Reminder", "ExpiringSoon"],
                       reminders={"after": "1s", "count": 2}, expiryWarning="1s")
        notifier.set_route("ops", Route(route, NOW - datetime.timedelta(days=1),
                                        Credentials({"hmacKey": "k"})))
        now = datetime.datetime.now(datetime.UTC)
        pending = access_request(history=[entry("Requested", now, "alice").wire()],
                                 phase="Pending")
        active = access_request(history=[entry("Requested", now, "alice").wire()],
                                phase="Active", expiresAt=(now + datetime.timedelta(
                                    seconds=2)).isoformat())
        try:
            notifier.observe(_body(pending), pending, None, None)
            notifier.observe(_body(active, name="b", uid="u-2"), active, None, None)
            deadline = asyncio.get_running_loop().time() + 30
            while len(receiver.seen) < 3 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            progress = notifier.progress("u-1")
            await asyncio.sleep(1.5)  # no third reminder: the count is 2
        finally:
            await notifier.close()
            await runner.cleanup()
        ids = sorted(json.loads(body)["id"] for _, body in receiver.seen)
        assert ids == ["u-1/reminder-1", "u-1/reminder-2", "u-2/expiring"]
        assert progress["ops"]["reminders"] == 2 and "alice-db-1" in asked

    asyncio.run(scenario())


def _reminding_an_hour_from_now() -> Notifier:
    """A notifier whose route "ops" holds a Pending request with a reminder timer an hour away."""
    notifier = Notifier("urn:kubepim:test", _no_warning, lambda _: None, lambda: True)
    route = _route(events=["Reminder"], reminders={"after": "1h"})
    notifier.set_route("ops", Route(route, NOW - datetime.timedelta(days=1),
                                    Credentials({"hmacKey": "k"})))
    now = datetime.datetime.now(datetime.UTC)
    pending = access_request(history=[entry("Requested", now, "alice").wire()], phase="Pending")
    notifier.observe(_body(pending), pending, None, None)
    return notifier


def test_a_request_found_gone_by_name_leaves_no_work_or_timer_behind() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        notifier = _reminding_an_hour_from_now()
        waiting = notifier.busy()  # a reminder timer, an hour away
        notifier.forget_name("someone-else")
        kept = notifier.busy()
        notifier.forget_name("alice-db-1")  # read, and not found: gone without its event
        gone = not notifier.busy()
        await notifier.close()
        return waiting, kept, gone

    assert asyncio.run(scenario()) == (True, True, True)


def test_a_reminder_due_while_leadership_is_in_doubt_is_sent_once_it_is_not() -> None:
    async def scenario() -> list[str]:
        receiver = _Receiver()
        runner, url = await _serve(receiver)
        leading = [False]
        notifier = Notifier("urn:kubepim:test", _no_warning, lambda _: None,
                            lambda: leading[0])
        route = _route(channel={"type": "Webhook", "url": url, "secretRef": {"name": "h"}},
                       events=["Reminder"], reminders={"after": "1s", "count": 1})
        notifier.set_route("ops", Route(route, NOW - datetime.timedelta(days=1),
                                        Credentials({"hmacKey": "k"})))
        now = datetime.datetime.now(datetime.UTC)
        pending = access_request(history=[entry("Requested", now, "alice").wire()],
                                 phase="Pending")
        leading[0] = True
        notifier.observe(_body(pending), pending, None, None)
        leading[0] = False  # renewal late when the reminder falls due (after 1 s)
        loop = asyncio.get_running_loop()
        first = notifier._work["u-1"]["ops"].timer
        try:
            deadline = loop.time() + 10
            while notifier._work["u-1"]["ops"].timer is first and loop.time() < deadline:
                await asyncio.sleep(0.05)  # until it fell due, found no lease, and re-armed
            assert notifier._work["u-1"]["ops"].timer is not first and receiver.seen == []
            leading[0] = True  # renewed
            deadline = loop.time() + 10
            while not receiver.seen and loop.time() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await notifier.close()
            await runner.cleanup()
        return [json.loads(body)["id"] for _, body in receiver.seen]

    assert asyncio.run(scenario()) == ["u-1/reminder-1"]


@pytest.mark.parametrize(("route", "status", "due"), [
    ({"reviewMissingAfter": "24h"}, {"reviewRequired": True}, NOW + datetime.timedelta(hours=24)),
    ({"reviewMissingAfter": "24h"}, {"reviewRequired": True, "phase": "Expired"},
     NOW + datetime.timedelta(hours=24)),
    ({"reviewMissingAfter": "24h"}, {"reviewRequired": True, "reviewedBy": "bob"}, None),
    ({"reviewMissingAfter": "24h"}, {}, None),
    ({}, {"reviewRequired": True}, None),
    ({"reviewMissingAfter": "24h", "events": ["BreakGlass"]}, {"reviewRequired": True}, None),
], ids=["an unreviewed grant is told of its missing review after the route's delay",
        "also once it expired unreviewed", "not once an approver reviewed it",
        "not a grant that needs no review", "not by a route that did not ask",
        "not by a route whose events leave ReviewMissing out"])
def test_a_missing_break_glass_review_is_due_after_the_routes_delay_from_activation(
        route: dict[str, Any], status: dict[str, Any], due: datetime.datetime | None) -> None:
    req = access_request(request(breakGlass=True), **{"activatedAt": NOW.isoformat(),
                                                      "phase": "Active", **status})
    assert notify.review_missing_at(_route(**route), req) == due


def test_an_unreviewed_break_glass_grant_is_told_once_to_the_security_route() -> None:
    async def scenario() -> tuple[list[str], dict[str, Any], str]:
        receiver = _Receiver()
        runner, url = await _serve(receiver)
        asked: list[str] = []
        notifier = Notifier("urn:kubepim:test", _no_warning, asked.append, lambda: True)
        route = _route(channel={"type": "Webhook", "url": url, "secretRef": {"name": "h"}},
                       match={"breakGlassOnly": True}, events=["ReviewMissing"],
                       reviewMissingAfter="1s")
        notifier.set_route("security", Route(route, NOW - datetime.timedelta(days=1),
                                             Credentials({"hmacKey": "k"})))
        now = datetime.datetime.now(datetime.UTC)
        expired = access_request(request(breakGlass=True),
                                 history=[entry("BreakGlass", now, "alice").wire(),
                                          entry("Expired", now, "kubepim").wire()],
                                 phase="Expired", reviewRequired=True,
                                 activatedAt=now.isoformat())
        loop = asyncio.get_running_loop()
        try:
            notifier.observe(_body(expired), expired, None, None)
            deadline = loop.time() + 10
            while not (receiver.seen and asked) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            progress = notifier.progress("u-1")
            notifier.observe(_body(expired), expired, None, None)  # reconciled again: not twice
            timer = notifier._work["u-1"]["security"].timer
        finally:
            await notifier.close()
            await runner.cleanup()
        data = json.loads(receiver.seen[0][1])
        return ([json.loads(body)["id"] for _, body in receiver.seen], progress["security"],
                f"{data['type']} {timer}")

    ids, progress, rest = asyncio.run(scenario())
    assert ids == ["u-1/review-missing"]
    assert progress["reviewMissing"] is True
    assert rest == "dev.kubepim.accessrequest.reviewmissing None"  # nothing more to time


def test_teams_cards_render_no_markup_a_user_wrote() -> None:
    req = access_request(request(justification="[click](https://evil) **now** _x_",
                                 ticket="<at>all</at>"),
                         history=_history("Requested"))
    data = notify.facts(_body(req), req, None, 0, req.status.history[0])  # type: ignore[union-attr]
    card = channels._teams_card(data)["attachments"][0]["content"]
    # Free text only in TextRuns (no Markdown there); nothing of it in a Markdown field.
    marked = [b["text"] for b in card["body"] if b["type"] == "TextBlock"] + [
        f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]]
    assert not any("evil" in text or "<at>" in text for text in marked)
    runs = [r["text"] for b in card["body"] if b["type"] == "RichTextBlock" for r in b["inlines"]]
    assert "[click](https://evil) **now** _x_" in runs and "<at>all</at>" in runs
    assert channels._markdown_escaped("a_b [c](d)") == r"a\_b \[c\]\(d\)"
    assert channels._markdown_escaped("- team-a") == r"\- team-a"  # no list; names intact


@pytest.mark.parametrize(("username", "domain", "address"), [
    ("alice@example.com", None, "alice@example.com"),
    ("oidc:alice@example.com", None, "alice@example.com"),
    ("alice", "example.com", "alice@example.com"),
    ("alice", None, None),
    ("system:serviceaccount:ci:deployer", "example.com", None),
    ("alice\r\nBcc: all@example.com", "example.com", None),
    ("Alice Smith", "example.com", None),
], ids=["a username that is an address", "after an OIDC prefix",
        "a plain username with the route's domain", "a plain username without a domain",
        "never a service account", "no header injection", "no spaces"])
def test_the_requesters_address_comes_from_their_authenticated_username(
        username: str, domain: str | None, address: str | None) -> None:
    assert notify.requester_address(username, domain) == address


def test_a_route_deleted_while_a_reminder_is_timed_leaves_nothing_owed() -> None:
    async def scenario() -> tuple[bool, bool]:
        notifier = _reminding_an_hour_from_now()
        timed = notifier._work["u-1"]["ops"].timer is not None
        notifier.set_route("ops", None)  # deleted: its timer goes with it
        work = notifier._work.get("u-1", {}).get("ops")
        await notifier.close()
        return timed, work is None or (work.timer is None and not notifier.owes("u-1"))

    assert asyncio.run(scenario()) == (True, True)


def test_deliveries_wait_while_grants_wait_in_the_queue() -> None:
    async def scenario() -> tuple[float, float, int]:
        receiver = _Receiver()
        runner, url = await _serve(receiver)
        pressing = [True]
        notifier = Notifier("urn:kubepim:test", _no_warning, lambda _: None, lambda: True,
                            pressing=lambda: pressing[0])
        route = _route(channel={"type": "Webhook", "url": url, "secretRef": {"name": "h"}})
        notifier.set_route("ops", Route(route, NOW - datetime.timedelta(days=1),
                                        Credentials({"hmacKey": "k"})))
        req = access_request(history=_history("Requested"), phase="Pending")
        loop = asyncio.get_running_loop()
        try:
            notifier.observe(_body(req), req, None, None)
            waited = 0
            while waited < 10:  # ten polls of the notifier's: it is still holding back
                await asyncio.sleep(0.02)
                waited += 1
            held = len(receiver.seen)
            pressing[0] = False
            cleared = loop.time()
            deadline = cleared + 10
            while not receiver.seen and loop.time() < deadline:
                await asyncio.sleep(0.01)
            received = loop.time()
        finally:
            await notifier.close()
            await runner.cleanup()
        return cleared, received, held

    cleared, received, held = asyncio.run(scenario())
    assert held == 0 and received >= cleared  # sent once the queue had nothing waiting
