"""The `retry-after` header of an app's error answer: seconds or a date sets the earliest retry;
anything else leaves the backoff alone, and nothing in it can break applying the answer."""

from __future__ import annotations

import pytest

from durable_core.orchestrator.moments import MAX_RETRY_AFTER_S, retry_at

NOW = 1_700_000_000_000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("30", NOW + 30_000),
        (" 5 ", NOW + 5_000),
        ("0", NOW),
        ("2023-11-14T22:13:50Z", 1_700_000_030_000),
        ("Tue, 14 Nov 2023 22:13:50 GMT", 1_700_000_030_000),
        ("9" * 400, NOW + MAX_RETRY_AFTER_S * 1000),  # capped: a bigint column holds it
        ("9999-12-31T00:00:00Z", NOW + MAX_RETRY_AFTER_S * 1000),
        ("", None),
        ("²", None),  # a digit to str.isdigit(), not to int()
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_retry_after_gives_the_earliest_retry_or_none(header: str, expected: int | None) -> None:
    assert retry_at(header, NOW) == expected
