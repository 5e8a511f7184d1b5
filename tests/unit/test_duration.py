"""Durations: what parse accepts and refuses, and how format_duration writes them back."""

from __future__ import annotations

import datetime

import pytest

from kubepim.api import duration

S = datetime.timedelta(seconds=1)
M = datetime.timedelta(minutes=1)
H = datetime.timedelta(hours=1)


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("90s", 90 * S, id="ninety seconds are ninety seconds, not normalised away"),
    pytest.param("15m", 15 * M, id="minutes alone are accepted"),
    pytest.param("2h", 2 * H, id="hours alone are accepted"),
    pytest.param("1h30m", 90 * M, id="hours and minutes add up"),
    pytest.param("1h0m5s", H + 5 * S, id="all three units with a zero in the middle add up"),
    pytest.param("0h1s", S, id="a zero unit is fine while the total is positive"),
    pytest.param("240h", 10 * 24 * H, id="ten days are written in hours"),
])
def test_parse_accepts_positive_go_style_durations(text: str, expected: datetime.timedelta) -> None:
    assert duration.parse(text) == expected


@pytest.mark.parametrize("text", [
    pytest.param("", id="an empty string is refused"),
    pytest.param("0s", id="zero seconds are refused because a duration must be positive"),
    pytest.param("0h0m0s", id="all-zero units are refused because the total is zero"),
    pytest.param("-5m", id="a negative duration is refused"),
    pytest.param("+5m", id="an explicit plus sign is refused"),
    pytest.param("1.5h", id="a fraction is refused"),
    pytest.param("10d", id="days are refused because only h, m and s exist"),
    pytest.param("100ms", id="milliseconds are refused"),
    pytest.param("30m1h", id="units out of order are refused"),
    pytest.param("1h 30m", id="a space between units is refused"),
    pytest.param(" 5m", id="leading whitespace is refused"),
    pytest.param("5", id="a number without a unit is refused"),
    pytest.param("h", id="a unit without a number is refused"),
    pytest.param("5M", id="an upper-case unit is refused"),
    pytest.param("1h1h", id="a repeated unit is refused"),
])
def test_parse_refuses_anything_else_and_says_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration like 90s.*units h, m, s; positive"):
        duration.parse(text)


@pytest.mark.parametrize("text", [
    pytest.param("90s\n", id="a trailing newline is refused as the CRD pattern refuses it"),
    pytest.param("\uff11h", id="full-width digits are refused as the CRD pattern refuses them"),
    pytest.param("\u0661\u0660m",
                 id="arabic-indic digits are refused as the CRD pattern refuses them"),
])
def test_parse_refuses_what_the_crd_pattern_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        duration.parse(text)


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param(90 * S, "1m30s", id="ninety seconds are written as a minute and thirty seconds"),
    pytest.param(2 * H, "2h", id="whole hours omit zero minutes and seconds"),
    pytest.param(H + 5 * S, "1h5s", id="a zero minute part is left out"),
    pytest.param(datetime.timedelta(days=1), "24h", id="a day is written as twenty-four hours"),
    pytest.param(datetime.timedelta(seconds=1.9), "1s", id="fractions of a second are truncated"),
    pytest.param(datetime.timedelta(0), "0s", id="zero is written as 0s rather than nothing"),
])
def test_format_duration_writes_whole_seconds_in_h_m_s(
    value: datetime.timedelta, expected: str
) -> None:
    assert duration.format_duration(value) == expected


@pytest.mark.parametrize("text", [
    pytest.param("45s", id="seconds round-trip"),
    pytest.param("15m", id="minutes round-trip"),
    pytest.param("8h", id="hours round-trip"),
    pytest.param("1h30m", id="hours and minutes round-trip"),
    pytest.param("2h3m4s", id="all three units round-trip"),
])
def test_canonical_durations_survive_format_after_parse(text: str) -> None:
    assert duration.format_duration(duration.parse(text)) == text
