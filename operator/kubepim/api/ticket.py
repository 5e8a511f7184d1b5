r"""Ticket patterns: compiled by RE2, which matches in time linear in the ticket's length.

A pattern like ``INC-(\d+,?)+`` backtracks exponentially in Python's ``re``; RE2 has no
backtracking, so a crafted ticket cannot freeze the operator's event loop. RE2 refuses what it
cannot match in linear time (backreferences, lookarounds): such a pattern is refused when the
eligibility is written.
"""

from __future__ import annotations

import functools
from typing import Any

import re2


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Any:
    """The compiled pattern; ValueError naming what RE2 refused."""
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as error:
        why = error.args[0] if error.args else error
        why = why.decode(errors="replace") if isinstance(why, bytes) else str(why)
        raise ValueError(f"ticketPattern {pattern!r} is not a valid RE2 regular expression "
                         f"({why}); backreferences and lookarounds are not supported") from error


def matches(pattern: str, ticket: str) -> bool:
    """Whether the whole ticket matches the pattern (pattern already validated)."""
    return compile_pattern(pattern).fullmatch(ticket) is not None
