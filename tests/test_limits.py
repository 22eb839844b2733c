"""Run limits in the SDK: the `Limits` option and its wire form, and the serve endpoint
refusing an output (or a step) over the run's limits before it answers, with a non-retriable
error; the test harness applies a function's own limits the same way."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import ServeFactory, exec_body, step_hash
from durable_core import Context, Durable, Limits, SyncContext, TriggerEvent
from durable_core._limits import format_size, parse_size
from durable_core.testing import run_sync

MB = 1024 * 1024
side_effects: list[str] = []


@pytest.mark.parametrize(
    ("text", "size"),
    [(100, 100), ("100", 100), ("512KB", 512 * 1024), ("4MB", 4 * MB), ("4 mb", 4 * MB),
     ("1.5MiB", 3 * MB // 2), ("2G", 2 * 1024 * MB), ("300 bytes", 300)],
)  # fmt: skip
def test_sizes_are_bytes_or_strings_with_a_unit(text: Any, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "4 parsecs", "", 0, -5, True, 1.5])
def test_a_bad_size_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_sizes_read_back_in_their_unit() -> None:
    assert [format_size(n) for n in (4 * MB, 5 * MB // 2, 2048, 999)] == [
        "4 MB", "2.5 MB", "2 KB", "999 bytes",
    ]  # fmt: skip


def test_a_function_registers_only_the_limits_it_sets() -> None:
    d = Durable("t", dev=True)

    @d.function(id="own", trigger=TriggerEvent("t/own"), limits=Limits(step_output="8MB", steps=50))
    async def own(ctx: Context) -> None: ...

    @d.function(id="plain", trigger=TriggerEvent("t/plain"))
    async def plain(ctx: Context) -> None: ...

    assert own.configs("http://app/api")[0]["limits"] == {"stepOutput": 8 * MB, "steps": 50}
    assert "limits" not in plain.configs("http://app/api")[0]


def test_a_bad_limit_option_names_the_field() -> None:
    with pytest.raises(ValueError, match="steps"):
        Limits(steps=0)
    with pytest.raises(ValueError, match="invalid size 'huge'"):
        Limits(step_output="huge")


def _app() -> Durable:
    d = Durable("t", dev=True)

    @d.function(id="f", trigger=TriggerEvent("t/f"))
    async def f(ctx: Context) -> str:
        await ctx.step.run("first", lambda: "ok")

        def second() -> str:
            side_effects.append("second ran")
            return "s" * int(ctx.event.data.get("size", 10))

        return await ctx.step.run("second", second)

    return d


def _limits(**changes: int) -> dict[str, int]:
    sent = {"step_output": 4 * MB, "run_output_total": 32 * MB, "steps": 20_000}
    return {**sent, "used_steps": 1, "used_bytes": 4, **changes}


def _request(data: dict[str, Any], limits: dict[str, int]) -> dict[str, Any]:
    body = exec_body({"name": "t/f", "data": data}, steps={step_hash("first"): {"data": "ok"}})
    body["ctx"]["limits"] = limits
    return body


def test_the_sdk_refuses_an_output_over_the_limit_before_answering(served: ServeFactory) -> None:
    s = served(_app())
    res = s.execute("t-f", _request({"size": 300}, _limits(step_output=200)))
    assert res.status_code == 500
    assert res.headers["x-inngest-no-retry"] == "true"
    body = res.json()
    assert body["name"] == "LimitExceededError"
    assert "the output of step 'second' is 302 bytes as JSON" in body["message"]
    assert "over the step_output limit of 200 bytes" in body["message"]
    assert len(res.content) < 8000  # the output itself is not in the answer

    within = s.execute("t-f", _request({"size": 100}, _limits(step_output=200)))
    assert within.status_code == 206
    assert within.json()[0]["data"] == "s" * 100


def test_the_sdk_refuses_an_output_over_the_run_total(served: ServeFactory) -> None:
    s = served(_app())
    res = s.execute("t-f", _request({"size": 100}, _limits(run_output_total=1000, used_bytes=950)))
    assert res.status_code == 500 and res.headers["x-inngest-no-retry"] == "true"
    assert "brings the run's stored step results to 1.0 KB" in res.json()["message"]
    assert "over the run_output_total limit of 1000 bytes" in res.json()["message"]


def test_the_sdk_runs_no_step_past_the_step_limit(served: ServeFactory) -> None:
    side_effects.clear()
    s = served(_app())
    res = s.execute("t-f", _request({}, _limits(steps=1)))
    assert res.status_code == 500 and res.headers["x-inngest-no-retry"] == "true"
    assert "the run reached 2 steps, over the steps limit of 1" in res.json()["message"]
    assert side_effects == []  # refused before it ran


def test_without_limits_from_the_orchestrator_the_function_s_own_apply(
    served: ServeFactory,
) -> None:
    d = Durable("t", dev=True)

    @d.function(id="f", trigger=TriggerEvent("t/f"), limits=Limits(step_output=50))
    async def f(ctx: Context) -> str:
        return await ctx.step.run("first", lambda: "x" * 60)

    res = served(d).execute("t-f", exec_body({"name": "t/f", "data": {}}))
    assert res.status_code == 500
    assert "over the step_output limit of 50 bytes" in res.json()["message"]


def test_the_test_harness_applies_the_function_s_limits() -> None:
    d = Durable("t", dev=True)

    @d.function(id="out", trigger=TriggerEvent("t/out"), limits=Limits(step_output=50))
    def out(ctx: SyncContext) -> str:
        ctx.step.run("small", lambda: "ok")
        return "y" * 60

    result = run_sync(out, event={"name": "t/out", "data": {}})
    assert result.status == "failed"
    assert result.error is not None and result.error["name"] == "LimitExceededError"
    assert "the output of function 'out' is 62 bytes as JSON" in result.error["message"]
