"""CEL expressions of triggers and waits: evaluation, and the index terms that narrow the
pending waits an incoming event is checked against."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable_core import ConfigError
from durable_core.orchestrator.expressions import (
    check,
    evaluate,
    event_value,
    index_term,
    matches,
)

from .conftest import sqlite_only

pytestmark = sqlite_only  # the store does not matter here

TRIGGER = {"name": "shop/order", "data": {"order": 7, "user": {"id": "u1"}, "tags": [1], "f": 2.0}}


@pytest.mark.parametrize(
    ("source", "term"),
    [
        ("async.data.order == event.data.order", ("data.order", "7")),
        ("event.data.order == async.data.order", ("data.order", "7")),
        ("(async.data.order == event.data.order)", ("data.order", "7")),
        ("async.data.uid == event.data.user.id", ("data.uid", '"u1"')),
        ("async.data.n == event.data.f", ("data.n", "2")),
        ('async.data.kind == "gold"', ("data.kind", '"gold"')),
        ("async.data.kind == 'gold'", ("data.kind", '"gold"')),
        ("'gold' == async.data.kind", ("data.kind", '"gold"')),
        ("async.data.n == 3", ("data.n", "3")),
        ("async.data.n == -1.5", ("data.n", "-1.5")),
        ("async.data.ok == true", ("data.ok", "true")),
        ("async.data.gone == null", ("data.gone", "null")),
        ("async.data.x > 1 && async.data.order == event.data.order", ("data.order", "7")),
        ("async.data.order == event.data.order && async.data.x > 1", ("data.order", "7")),
        ('async.data.s == "a && b"', ("data.s", '"a && b"')),
        ('async.data.s == "a || b"', ("data.s", '"a || b"')),
        ("(async.data.a == 1 || async.data.b == 2) && async.data.c == 3", ("data.c", "3")),
    ],
)
def test_index_term_found(source: str, term: tuple[str, str]) -> None:
    assert index_term(source, TRIGGER) == term


@pytest.mark.parametrize(
    "source",
    [
        None,
        "",
        "async.data.order == event.data.order || async.data.x == 1",
        "async.data.x == 1 || async.data.order == event.data.order",
        "async.data.x == 1 ? true : false",
        "async.data.order == event.data.missing",
        "async.data.tags == event.data.tags",
        "async.data.user == event.data.user",
        "async.data.a == async.data.b",
        "event.data.order == 7",
        "async.data.order > event.data.order",
        "async.data.order != event.data.order",
        "size(async.data.tags) == 1",
    ],
)
def test_index_term_not_provable(source: str | None) -> None:
    assert index_term(source, TRIGGER) is None


def test_event_value_reads_index_paths() -> None:
    event = {"name": "x", "data": {"n": 3.0, "s": "a", "deep": {"k": True}, "list": [1]}}
    assert event_value(event, "data.n") == "3"
    assert event_value(event, "data.s") == '"a"'
    assert event_value(event, "data.deep.k") == "true"
    assert event_value(event, "data.list") is None
    assert event_value(event, "data.missing") is None
    assert event_value(event, "name") == '"x"'


def test_matches() -> None:
    wait = "async.data.order == event.data.order"
    assert matches(None, {}) and matches("", {})
    assert matches(wait, {"event": TRIGGER, "async": {"data": {"order": 7}}})
    assert matches(wait, {"event": TRIGGER, "async": {"data": {"order": 7.0}}})
    assert not matches(wait, {"event": TRIGGER, "async": {"data": {"order": 8}}})
    assert not matches(wait, {"event": TRIGGER, "async": {"data": {"order": "7"}}})


@pytest.mark.parametrize(
    ("source", "variables"),
    [
        ("event.data.x == 1", {"event": {"data": {}}}),
        ("event.data.x.y == 1", {"event": {"data": {"x": 5}}}),
        ("async.data.x == event.data.x", {"event": {"data": {"x": 1}}}),
        ("event.data.x > 1", {"event": {"data": {"x": "a"}}}),
        ("event.data.x", {"event": {"data": {"x": 1}}}),
        ("event.data.x == 1", {}),
    ],
)
def test_missing_fields_and_type_errors_do_not_match(
    source: str, variables: dict[str, Any]
) -> None:
    assert matches(source, variables) is False


def test_evaluate_gives_the_value_or_none() -> None:
    assert evaluate("event.data.n + 1", {"event": {"data": {"n": 1}}}) == 2
    assert evaluate("event.data.missing", {"event": {"data": {}}}) is None


@pytest.mark.parametrize("source", ["event.data.x ==", "event.data.(", "&& true", "'open"])
def test_invalid_cel_is_a_config_error_naming_it(source: str) -> None:
    with pytest.raises(ConfigError) as err:
        check(source)
    assert source in str(err.value)
    # Evaluating one never raises: intake must go on for every other function and wait.
    assert matches(source, {"event": {}}) is False
    assert evaluate(source, {"event": {}}) is None


# The index only narrows: a wait the expression matches is always among the candidates.
values = (
    st.integers(-3, 3)
    | st.sampled_from([1.0, 2.5, -0.0, True, False, None])
    | st.text(alphabet="ab'\" |&", max_size=3)
)
datas = st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=3)
literals = st.sampled_from(["1", "-1", "2.5", "true", "false", "null", '"a"', "'b'", '"a&&b"'])


@st.composite
def conditions(draw: st.DrawFn) -> str:
    def term() -> str:
        field = draw(st.sampled_from(["a", "b", "c"]))
        other = draw(
            st.sampled_from(
                [f"event.data.{draw(st.sampled_from(['a', 'b', 'c']))}", draw(literals)]
            )
        )
        op = draw(st.sampled_from(["==", "==", "==", "!=", ">"]))
        left, right = f"async.data.{field}", other
        if draw(st.booleans()):
            left, right = right, left
        return f"{left} {op} {right}"

    terms = [term() for _ in range(draw(st.integers(1, 3)))]
    joins = [draw(st.sampled_from([" && ", " && ", " || "])) for _ in terms[1:]]
    out = terms[0]
    for join, t in zip(joins, terms[1:], strict=True):
        out += join + t
    return out


@st.composite
def incoming_for(draw: st.DrawFn, trigger: dict[str, Any]) -> dict[str, Any]:
    """Often the trigger's own data (numbers maybe as floats), so that conditions hold."""
    if draw(st.booleans()):
        return draw(datas)
    out = {}
    for key, value in trigger.items():
        if isinstance(value, int) and not isinstance(value, bool) and draw(st.booleans()):
            value = float(value)
        out[key] = value
    return {**out, **draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=1))}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[str, Any]]:
    trigger = draw(datas)
    return draw(conditions()), trigger, draw(incoming_for(trigger))


@settings(max_examples=400, deadline=None, database=None)
@given(scenario=scenarios())
def test_index_term_never_hides_a_match(
    scenario: tuple[str, dict[str, Any], dict[str, Any]],
) -> None:
    source, trigger, incoming = scenario
    trigger_event = {"name": "t/a", "data": trigger}
    event = {"name": "t/b", "data": incoming}
    term = index_term(source, trigger_event)
    if term is not None and matches(source, {"event": trigger_event, "async": event}):
        assert event_value(event, term[0]) == term[1], (source, trigger, incoming, term)
