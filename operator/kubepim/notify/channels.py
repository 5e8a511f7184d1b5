"""The channels' wire formats: one ``send`` per channel type, each one delivery attempt.

An attempt ends in one of three ways: delivered (returns the channel's thread reference, if it
has one), :class:`Retry` (a timeout, a refused connection, 5xx, 429: worth another attempt, with
the receiver's Retry-After when it gave one), or :class:`GiveUp` (the receiver refused what was
sent: 4xx other than 429; another attempt would be refused the same way). Messages carry no
secret: the credentials go in headers or the SMTP login only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.message
import email.utils
import html
import json
import smtplib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubepim.api.notification import Channel
from kubepim.domain import notify

_TIMEOUT = aiohttp.ClientTimeout(total=10)
_SLACK_API = "https://slack.com/api"
# Slack Web API errors worth another attempt (its documented transient ones).
_SLACK_TRANSIENT = {"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                    "request_timeout"}


class Retry(Exception):
    """Worth another attempt (``retry_after``: seconds the receiver asked for, if it did)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GiveUp(Exception):
    """The receiver refused the notification itself: retrying would not help."""


@dataclass(frozen=True)
class Credentials:
    """A route's Secret, read in the operator's namespace (values never logged)."""

    values: Mapping[str, str]

    def get(self, key: str) -> str | None:
        """One value, or None.

        Surrounding whitespace and line breaks are stripped: a Secret made with echo or
        --from-file ends in one.
        """
        value = (self.values.get(key) or "").strip()
        return value or None

    def __repr__(self) -> str:  # never the values
        return f"Credentials(keys={sorted(self.values)})"


async def send(session: aiohttp.ClientSession, channel: Channel, credentials: Credentials,
               source: str, data: Mapping[str, Any], thread: str | None,
               mail: concurrent.futures.Executor | None = None) -> str | None:
    """Deliver one notification; the thread reference to keep (Slack), else ``thread``.

    ``mail``: the executor SMTP (blocking smtplib) runs on.
    """
    if channel.type == "Webhook":
        await _webhook(session, channel, credentials, source, data)
    elif channel.type == "Email":
        await asyncio.get_running_loop().run_in_executor(mail, _email, channel, credentials,
                                                         data)
    elif channel.type == "SlackWebhook":
        await _post_json(session, credentials.get("url") or channel.url or "",
                         {"text": _slack_text(data)}, {})
    elif channel.type == "Teams":
        await _post_json(session, credentials.get("url") or channel.url or "",
                         _teams_card(data), {})
    elif channel.type == "Slack":
        return await _slack(session, channel, credentials, data, thread)
    return thread


def endpoint(channel: Channel, credentials: Credentials) -> str | None:
    """The URL a channel posts to (a Secret's ``url`` wins: a webhook URL is often a secret)."""
    if channel.type == "Slack":
        return credentials.get("url") or channel.url or _SLACK_API
    if channel.type == "Email":
        return None
    return credentials.get("url") or channel.url


# Webhook: CloudEvents 1.0, structured mode, signed per Standard Webhooks


async def _webhook(session: aiohttp.ClientSession, channel: Channel, credentials: Credentials,
                   source: str, data: Mapping[str, Any]) -> None:
    key = credentials.get("hmacKey")
    if key is None:
        raise GiveUp("the route's Secret has no hmacKey")
    event = notify.cloudevent(source, data)
    body = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/cloudevents+json",
        "webhook-id": event["id"],
        "webhook-timestamp": str(stamp),
        "webhook-signature": notify.signature(notify.signing_key(key), event["id"], stamp,
                                              body),
    }
    await _post(session, endpoint(channel, credentials) or "", body, headers)


async def _post_json(session: aiohttp.ClientSession, url: str, payload: Any,
                     headers: Mapping[str, str]) -> Any:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return await _post(session, url, body, {"Content-Type": "application/json", **headers})


async def _post(session: aiohttp.ClientSession, url: str, body: bytes,
                headers: Mapping[str, str]) -> Any:
    problem = notify.endpoint_problem(url)
    if problem:
        raise GiveUp(problem)
    try:
        async with session.post(url, data=body, headers=dict(headers), timeout=_TIMEOUT,
                                allow_redirects=False) as response:
            # At most 64 KiB of the answer is read (a receiver is not trusted with memory).
            text = (await response.content.read(65536)).decode("utf-8", "replace")
            if response.status in (408, 425, 429) or response.status >= 500:
                raise Retry(f"HTTP {response.status}", _retry_after(response.headers))
            if response.status >= 300:
                raise GiveUp(f"HTTP {response.status}: {notify.clip(text, 200)}")
            try:
                return json.loads(text) if text else None
            except ValueError:
                return None
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        raise Retry(f"{type(error).__name__}: {error}") from error
    except ValueError as error:  # e.g. a control character in a header value
        raise GiveUp(f"the request could not be sent: {error}") from error


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


# Slack


def _slack_text(data: Mapping[str, Any]) -> str:
    """Slack mrkdwn, with &, < and > escaped (Slack's own rule).

    So no text a user wrote can mention @channel or forge a link.
    """
    def esc(value: Any) -> str:
        return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    lines = [esc(notify.summary(data))]
    if data["action"] in ("Requested", "BreakGlass"):
        lines.append(f"*Why:* {esc(data['justification']) or '-'}"
                     + (f"  *Ticket:* {esc(data['ticket'])}" if data.get("ticket") else ""))
    command = _COMMAND.get(str(data["action"]))
    if command is not None:
        lines.append(f"`{esc(data[command])}`")
    return "\n".join(lines)


async def _slack(session: aiohttp.ClientSession, channel: Channel, credentials: Credentials,
                 data: Mapping[str, Any], thread: str | None) -> str | None:
    """Post the first message; edit it (chat.update) and reply in its thread after that.

    The channel shows one line per request with its current state; the thread, its story.
    """
    token = credentials.get("token")
    if token is None:
        raise GiveUp("the route's Secret has no token")
    base = (endpoint(channel, credentials) or _SLACK_API).rstrip("/")
    auth = {"Authorization": f"Bearer {token}"}
    text = _slack_text(data)
    if thread is None:
        answer = await _slack_call(session, f"{base}/chat.postMessage",
                                   {"channel": channel.slack_channel, "text": text}, auth)
        return str(answer.get("ts") or "") or None
    try:
        await _slack_call(session, f"{base}/chat.update",
                          {"channel": channel.slack_channel, "ts": thread, "text": text}, auth)
    except GiveUp:
        # The message is gone or cannot be edited (deleted, channel changed): a new one
        # becomes the request's message from here on.
        answer = await _slack_call(session, f"{base}/chat.postMessage",
                                   {"channel": channel.slack_channel, "text": text}, auth)
        return str(answer.get("ts") or "") or None
    await _slack_call(session, f"{base}/chat.postMessage",
                      {"channel": channel.slack_channel, "thread_ts": thread, "text": text},
                      auth)
    return thread


async def _slack_call(session: aiohttp.ClientSession, url: str, payload: Any,
                      auth: Mapping[str, str]) -> dict[str, Any]:
    answer = await _post_json(session, url, payload, auth)
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else "no answer"
        if error in _SLACK_TRANSIENT:
            raise Retry(f"Slack: {error}")
        raise GiveUp(f"Slack refused {url.rsplit('/', 1)[-1]}: {error}")
    return answer


# Teams: a workflow webhook taking a message with one Adaptive Card


def _teams_card(data: Mapping[str, Any]) -> dict[str, Any]:
    """An Adaptive Card in which no text a user wrote is read as markup.

    TextBlock and Fact values render a Markdown subset (links, emphasis, lists): free text (the
    summary with its reason, the justification, the ticket) goes in a RichTextBlock's TextRuns,
    which render no Markdown; the fact values (names and enums) are escaped as well.
    """
    def run(text: Any, **style: Any) -> dict[str, Any]:
        return {"type": "TextRun", "text": str(text), **style}

    def block(*runs: dict[str, Any]) -> dict[str, Any]:
        return {"type": "RichTextBlock", "inlines": list(runs)}

    facts = [{"title": title, "value": _markdown_escaped(str(data.get(key) or "-"))}
             for title, key in (("Requester", "requester"), ("Role", "role"),
                                ("Namespace", "namespace"), ("Duration", "duration"),
                                ("Phase", "phase"))]
    body: list[dict[str, Any]] = [
        block(run(notify.summary(data), weight="Bolder")),
        {"type": "FactSet", "facts": facts},
        block(run("Why: ", weight="Bolder"), run(data.get("justification") or "-")),
    ]
    if data.get("ticket"):
        body.append(block(run("Ticket: ", weight="Bolder"), run(data["ticket"])))
    command = _COMMAND.get(str(data["action"]))
    if command is not None:
        body.append(block(run(data[command], fontType="Monospace")))
    return {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard", "version": "1.4", "body": body}}]}


# What the reader of a card may do about it: the kubectl command shown (facts' key).
# (Reminders and missing reviews say theirs in their summary line.)
_COMMAND = {"Requested": "approve", "BreakGlass": "acknowledge"}


def _markdown_escaped(text: str) -> str:
    """``text`` on one line with the characters that make Markdown backslash-escaped.

    Emphasis, links, code and a leading list marker: not every punctuation character, as
    CommonMark would allow, since some Teams clients show the backslashes.
    """
    line = "".join(f"\\{c}" if c in _MARKUP else c for c in text.replace("\n", " "))
    return f"\\{line}" if line[:1] in ("-", "+") else line


_MARKUP = frozenset("\\`*_[]()<>#~{}")


# Email over SMTP


def _email(channel: Channel, credentials: Credentials, data: Mapping[str, Any]) -> None:
    smtp = channel.smtp
    if smtp is None:
        raise GiveUp("an Email channel needs smtp")
    recipients = list(smtp.to)
    if smtp.to_requester:
        address = notify.requester_address(data.get("requester"), smtp.requester_domain)
        if address is None and not recipients:
            raise GiveUp(f"the requester {data.get('requester')!r} has no mail address: their "
                         "username is not one and the route gives no requesterDomain")
        if address is not None and address not in recipients:
            recipients.append(address)
    if any(c in value for value in (smtp.sender, *recipients) for c in "\r\n"):
        raise GiveUp("an address holds a line break")
    message = email.message.EmailMessage()
    message["From"] = smtp.sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = notify.clip(f"[kubepim] {data['action']}: {data['requester']} → "
                                     f"{data['role']}", 150)
    # The notification's id: a mail client (or a deduplicating relay) sees a repeat as one.
    message["Message-ID"] = f"<{str(data['id']).replace('/', '.')}@kubepim>"
    message["Date"] = email.utils.formatdate(localtime=False)
    text = _email_text(data)
    message.set_content(text)
    message.add_alternative(_email_html(data), subtype="html")
    loopback = notify.endpoint_problem(f"http://{smtp.host}/") is None
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
            client.ehlo()
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            elif not loopback:
                raise GiveUp("SMTP without STARTTLS is allowed only to a loopback address")
            user, password = credentials.get("username"), credentials.get("password")
            if user and password:
                client.login(user, password)
            refused = client.send_message(message)
            if refused:  # some recipients took it, these did not: not worth resending to all
                raise GiveUp(f"SMTP refused {len(refused)} of {len(recipients)} recipient(s)")
    except smtplib.SMTPRecipientsRefused as error:
        codes = {code for code, _ in error.recipients.values()}
        if all(400 <= code < 500 for code in codes):
            raise Retry(f"SMTP recipients refused for now: {sorted(codes)}") from error
        raise GiveUp(f"SMTP refused every recipient: {sorted(codes)}") from error
    except smtplib.SMTPResponseException as error:
        if 400 <= error.smtp_code < 500:
            raise Retry(f"SMTP {error.smtp_code}") from error
        raise GiveUp(f"SMTP {error.smtp_code}: {error.smtp_error!r}") from error
    except smtplib.SMTPNotSupportedError as error:
        raise GiveUp(f"SMTP: {error} (the server offers no STARTTLS?)") from error
    except (smtplib.SMTPException, OSError) as error:
        raise Retry(f"SMTP: {type(error).__name__}: {error}") from error


def _email_text(data: Mapping[str, Any]) -> str:
    rows = [notify.summary(data), ""]
    for title, key in (("Request", "request"), ("Requester", "requester"), ("Role", "role"),
                       ("Namespace", "namespace"), ("Duration", "duration"),
                       ("Why", "justification"), ("Ticket", "ticket"), ("Phase", "phase"),
                       ("By", "actor"), ("Detail", "reason")):
        rows.append(f"{title + ':':11} {data.get(key) or '-'}")
    rows += ["", f"Approve: {data['approve']}", f"Deny:    {data['deny']}",
             "", f"Notification id: {data['id']}"]
    return "\n".join(rows) + "\n"


def _email_html(data: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th align='left'>{html.escape(title)}</th>"
                   f"<td>{html.escape(str(data.get(key) or '-'))}</td></tr>"
                   for title, key in (("Request", "request"), ("Requester", "requester"),
                                      ("Role", "role"), ("Namespace", "namespace"),
                                      ("Duration", "duration"), ("Why", "justification"),
                                      ("Ticket", "ticket"), ("Phase", "phase")))
    return (f"<p>{html.escape(notify.summary(data))}</p><table>{rows}</table>"
            f"<p><code>{html.escape(str(data['approve']))}</code></p>")
