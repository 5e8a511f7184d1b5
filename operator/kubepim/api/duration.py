"""Durations as users write them: Go-style strings such as ``90s``, ``15m``, ``1h30m``.

The same syntax the API server's CEL ``duration()`` accepts, so the CRD's rules and the operator
agree on what a duration is. Only h, m and s units are allowed; no sign, no fractions.
"""

from __future__ import annotations

import datetime
import re

_DURATION = re.compile(r"(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?")
PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
ALLOWED = "a duration like 90s, 15m, 2h or 1h30m (units h, m, s; positive)"


def parse(text: str) -> datetime.timedelta:
    """Parse ``text`` into a positive timedelta, or raise ValueError saying what is allowed."""
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not {ALLOWED}")
    value = datetime.timedelta(
        hours=int(match["h"] or 0), minutes=int(match["m"] or 0), seconds=int(match["s"] or 0)
    )
    if value <= datetime.timedelta(0):
        raise ValueError(f"{text!r} is not {ALLOWED}")
    return value


def format_duration(value: datetime.timedelta) -> str:
    """Format a timedelta the way :func:`parse` reads it (whole seconds)."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "",
             f"{seconds}s" if seconds else ""]
    return "".join(parts) or "0s"
