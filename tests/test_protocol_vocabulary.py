"""The shared protocol vocabulary and the error tree."""

from __future__ import annotations

import inspect

import durable_core
from durable_core import errors
from durable_core.protocol import REQUEST_VERSION, execution_request


def test_execution_request_is_the_body_the_serve_handler_reads() -> None:
    events = [{"name": "shop/order", "data": {"id": 1}}, {"name": "shop/order", "data": {}}]
    memos = {"h1": {"data": 1}, "h2": None}
    body = execution_request(
        run_id="r1",
        fn_id="shop-f",
        events=events,
        memos=memos,
        attempt=2,
        max_attempts=5,
        disable_immediate_execution=True,
    )
    assert body == {
        "event": events[0],
        "events": events,
        "steps": memos,
        "ctx": {
            "run_id": "r1",
            "fn_id": "shop-f",
            "attempt": 2,
            "max_attempts": 5,
            "disable_immediate_execution": True,
            "stack": {"stack": ["h1", "h2"], "current": 2},
        },
        "use_api": False,
        "version": REQUEST_VERSION,
    }


def test_every_error_class_is_in_the_tree_with_a_code() -> None:
    classes = [
        obj
        for name in errors.__all__
        if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, BaseException)
    ]
    assert classes
    for cls in classes:
        assert issubclass(cls, errors.DurableError), cls
        assert cls.code != "unknown" or cls is errors.DurableError, cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is not drawn in the tree"
    for name in durable_core.__all__:
        obj = getattr(durable_core, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, errors.DurableError), name


def test_run_error_names_keep_their_wire_values() -> None:
    assert errors.run_error(errors.RunErrorName.FUNCTION_NOT_FOUND, "gone") == {
        "name": "FunctionNotFound",
        "message": "gone",
    }  # no "stack": the TypeScript SDK takes a string or nothing, not null
    assert errors.run_error(errors.RunErrorName.RUN_CANCELLED, "x") == {
        "name": "RunCancelled",
        "message": "x",
    }
