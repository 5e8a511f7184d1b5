"""A reader for the plain block YAML kubectl writes its kubeconfig in, or nothing.

Importing PyYAML is a sixth of ``kubectl pim``'s start-up. A kubeconfig written by kubectl
(client-go's ``clientcmd.WriteToFile``, through go-yaml) uses a small part of YAML: block
mappings and sequences, plain and single-quoted scalars, ``{}``, ``[]``, booleans and null.
:func:`read` reads exactly that part and answers ``None`` for anything else — comments, anchors,
tags, flow collections, block scalars, double-quoted escapes, multi-line scalars, tabs, and any
plain scalar YAML 1.1 might resolve to a number, a timestamp or another type — so the caller
falls back to PyYAML, and the answer is always PyYAML's own (tests/unit/test_cli.py compares
the two on generated documents).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Plain scalars YAML 1.1 (PyYAML's SafeLoader) resolves to a boolean or null.
_BOOLEANS = {v: b for b, vs in ((True, "yes Yes YES true True TRUE on On ON"),
                                (False, "no No NO false False FALSE off Off OFF"))
             for v in vs.split()}
_NULLS = {"~", "null", "Null", "NULL"}
# A plain scalar starting with one of these is an indicator, or may be a number, timestamp,
# merge key or value key: not read here.
_UNSURE_FIRST = set("&*!|>%@`{}[]?,\"'#:.<=~0123456789")


class _Unsupported(Exception):
    """Outside the part of YAML read here: PyYAML reads it."""


def read(text: str) -> Any:
    """The document, or ``None`` when it is not in the subset (then use PyYAML)."""
    # ASCII printable only (PyYAML refuses some other characters and reads others as line
    # breaks); no comments, tabs, carriage returns or directives.
    if not text.isascii() or not text.replace("\n", "").isprintable() or "#" in text:
        return None
    lines: list[tuple[int, str]] = []
    for raw in text.split("\n"):
        line = raw.rstrip(" ")
        if not line:
            continue
        if line.startswith(("---", "...", "%")):
            return None
        content = line.lstrip(" ")
        lines.append((len(line) - len(content), content))
    if not lines:
        return None
    try:
        value, end = _block(lines, 0, lines[0][0])
    except (_Unsupported, RecursionError):  # deep nesting: PyYAML's own limits decide
        return None
    return value if end == len(lines) else None


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1] == "-":
        raise _Unsupported  # an item whose value starts on the next line
    if lines[i][1].startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
        content = lines[i][1][2:].lstrip(" ")
        inner = indent + len(lines[i][1]) - len(content)
        if _split_key(content) is not None:  # "- key: value": a mapping at the item's column
            lines[i] = (inner, content)
            value, i = _mapping(lines, i, inner)
        else:
            value, i = _scalar(content), i + 1
        items.append(value)
    if i < len(lines) and lines[i][0] > indent:
        raise _Unsupported
    return items, i


def _mapping(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        split = _split_key(lines[i][1])
        if split is None:
            raise _Unsupported
        key, rest = split
        if key in mapping:
            raise _Unsupported  # duplicate keys: PyYAML's rule, not re-implemented
        i += 1
        if rest:
            mapping[key] = _scalar(rest)
        elif i < len(lines) and (lines[i][0] > indent or (
                lines[i][0] == indent and lines[i][1].startswith("- "))):
            mapping[key], i = _block(lines, i, lines[i][0])
        else:
            mapping[key] = None
    if i < len(lines) and lines[i][0] > indent:
        raise _Unsupported
    return mapping, i


def _split_key(content: str) -> tuple[str, str] | None:
    if content.endswith(":"):
        key, rest = content[:-1], ""
    elif ": " in content:
        key, _, rest = content.partition(": ")
        rest = rest.lstrip(" ")
    else:
        return None
    if not key or ": " in key or key.endswith(" "):
        return None
    if len(key) > 1000:
        raise _Unsupported  # YAML refuses simple keys over 1024 characters: PyYAML says so
    value = _scalar(key)
    if not isinstance(value, str):
        raise _Unsupported
    return value, rest


def _scalar(text: str) -> Any:
    if text in ("{}", "[]"):
        return {} if text == "{}" else []
    if text.startswith("'"):
        inner = text[1:-1]
        if len(text) < 2 or not text.endswith("'") or "'" in inner.replace("''", ""):
            raise _Unsupported
        return inner.replace("''", "'")
    if text in _BOOLEANS:
        return _BOOLEANS[text]
    if text in _NULLS:
        return None
    if text.isascii() and text.isdigit() and (text == "0" or text[0] != "0"):
        return int(text)
    first = text[0]
    if (first in _UNSURE_FIRST or ": " in text or text.endswith(":")
            or (first in "-+" and (len(text) < 2 or text[1] in "0123456789._ "))):
        raise _Unsupported
    return text
