"""What a function definition refuses at once, with a `ConfigError` naming the function and the
option: an expression that does not compile or uses a variable it cannot see (every option
that takes one), and a wildcard trigger the orchestrator does not support. Each of these used
to be accepted, and then broke event intake or silently matched nothing."""

from __future__ import annotations

from typing import Any

import pytest

from durable_core import (
    Batch,
    Cancel,
    Concurrency,
    ConfigError,
    Debounce,
    Durable,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    TriggerEvent,
)

BAD = "event.data.id === 1"
GO = TriggerEvent("t/go")

OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "trigger": ({"trigger": TriggerEvent("t/go", expression=BAD)}, "trigger[0].expression"),
    "concurrency": ({"concurrency": Concurrency(limit=1, key=BAD)}, "concurrency[0].key"),
    "throttle": ({"throttle": Throttle(limit=1, period="1s", key=BAD)}, "throttle.key"),
    "rate_limit": ({"rate_limit": RateLimit(limit=1, period="1s", key=BAD)}, "rate_limit.key"),
    "debounce": ({"debounce": Debounce(period="1s", key=BAD)}, "debounce.key"),
    "batch": (
        {"batch_events": Batch(max_size=2, timeout="1s", key=BAD)},
        "batch_events.key",
    ),
    "batch_if": (
        {"batch_events": Batch(max_size=2, timeout="1s", if_=BAD)},
        "batch_events.if_",
    ),
    "cancel": ({"cancel": Cancel(event="t/stop", if_=BAD)}, "cancel[0].if_"),
    "priority": ({"priority": Priority(run=BAD)}, "priority.run"),
    "idempotency": ({"idempotency": BAD}, "idempotency"),
    "singleton": ({"singleton": Singleton(mode="skip", key=BAD)}, "singleton.key"),
}


def _define(**options: Any) -> None:
    app = Durable("t", dev=True)
    options.setdefault("trigger", GO)
    app.function(id="checked", **options)(lambda ctx: None)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_an_invalid_expression_is_refused_at_definition_naming_function_and_option(
    option: str,
) -> None:
    options, where = OPTIONS[option]
    with pytest.raises(ConfigError) as err:
        _define(**options)
    message = str(err.value)
    assert "'checked'" in message, message
    assert where in message, message
    assert BAD in message, message


@pytest.mark.parametrize(
    ("options", "where", "variable"),
    [
        ({"trigger": TriggerEvent("t/go", expression="evnt.data.x == 1")}, "trigger", "evnt"),
        ({"trigger": TriggerEvent("t/go", expression="async.data.x == 1")}, "trigger", "async"),
        ({"idempotency": "data.order_id"}, "idempotency", "data"),
        ({"cancel": Cancel(event="t/stop", if_="asink.data.id == 1")}, "cancel[0].if_", "asink"),
    ],
)
def test_an_expression_using_a_variable_it_cannot_see_is_refused(
    options: dict[str, Any], where: str, variable: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _define(**options)
    assert where in str(err.value)
    assert f"unknown variable {variable!r}" in str(err.value)


def test_valid_expressions_with_macros_and_async_in_cancel_are_accepted() -> None:
    _define(
        trigger=TriggerEvent("t/go", expression="event.data.items.exists(i, i.qty > 1)"),
        cancel=Cancel(event="t/stop", if_="async.data.id == event.data.id"),
        idempotency="event.data.items.map(i, i.sku).join(',')",
    )


@pytest.mark.parametrize("name", ["shop*", "*", "shop/*/created", "shop/**", "*/created"])
def test_an_unsupported_wildcard_trigger_is_refused_saying_what_is_supported(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        _define(trigger=TriggerEvent(name))
    message = str(err.value)
    assert "'checked'" in message and repr(name) in message, message
    assert "'app/*'" in message and "'app/user.*'" in message, message


def test_a_wildcard_cancel_event_is_refused() -> None:
    with pytest.raises(ConfigError, match="cancel"):
        _define(cancel=Cancel(event="t/*"))


@pytest.mark.parametrize("name", ["shop/*", "app/user.*", "a.*"])
def test_supported_wildcard_triggers_are_accepted(name: str) -> None:
    _define(trigger=TriggerEvent(name))
