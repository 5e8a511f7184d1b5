"""The operator's log format: one record, one line, whatever text a user managed to put in it.

Refusal messages, reasons and names can carry text from users; a newline in one would start a
line of the attacker's choosing (a forged JSON audit line, say). Every formatted record has its
control characters escaped, so a line on the log is always one record of this process.
"""

from __future__ import annotations

import logging
import re

from kubepim.api.common import CONTROL

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def escape(text: str) -> str:
    r"""``text`` with every control character as a visible escape (\n, \x1b, \u202e)."""
    def visible(match: re.Match[str]) -> str:
        char = match.group()
        named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
        if named:
            return named
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return CONTROL.sub(visible, text)


class OneLineFormatter(logging.Formatter):
    """A formatter whose output never spans lines (tracebacks included, escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record formatted as usual, then its control characters escaped."""
        return escape(super().format(record))


_REFUSAL = re.compile(r"^Handler '(?P<webhook>[a-z-]+)' failed permanently: ")


class AdmissionRefusals(logging.Filter):
    """Drops kopf's ERROR "failed permanently" for a webhook's refusal.

    A refusal is a decision, not a failure: the webhook logs it itself, at INFO.
    """

    def __init__(self, webhooks: frozenset[str]) -> None:
        super().__init__()
        self.webhooks = webhooks

    def filter(self, record: logging.LogRecord) -> bool:
        """False for kopf's record of one of our webhooks refusing."""
        if not record.name.startswith("kopf") or record.levelno != logging.ERROR:
            return True
        match = _REFUSAL.match(str(record.msg))
        return not (match and match.group("webhook") in self.webhooks)


def configure(level: str, webhooks: frozenset[str] = frozenset()) -> None:
    """Log to stderr at ``level``, one line per record."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    handler.addFilter(AdmissionRefusals(webhooks))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
