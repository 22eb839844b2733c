"""Rerun from a chosen step, and bulk cancel and replay, through /v1 on both stores."""

from __future__ import annotations

from typing import Any

from durable_core import Context, Durable, TriggerEvent

from .conftest import Harness, StartFactory
from .test_api import error_of


def _three_steps(calls: list[str]) -> Durable:
    d = Durable("t", dev=True)

    @d.function(id="f", trigger=TriggerEvent("t/go"))
    async def f(ctx: Context) -> Any:
        def step(name: str, value: Any) -> Any:
            calls.append(name)
            return value

        a = await ctx.step.run("a", lambda: step("a", 1))
        b = await ctx.step.run("b", lambda: step("b", a + 1))
        c = await ctx.step.run("c", lambda: step("c", b * 10))
        return {"a": a, "b": b, "c": c}

    return d


def _first(h: Harness) -> dict[str, Any]:
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    return run


def test_rerun_from_a_step_keeps_the_earlier_results(embedded: StartFactory) -> None:
    calls: list[str] = []
    h = embedded(_three_steps(calls))
    first = _first(h)
    calls.clear()
    res = h.post(f"/v1/runs/{first['run_id']}/rerun", {"from_step": "b"})
    assert res.status_code == 202, res.text
    again = h.finish(res.json()["run_id"])
    assert again["status"] == "completed", again
    assert again["output"] == {"a": 1, "b": 2, "c": 20}
    assert calls == ["b", "c"]  # "a" was copied, not run again
    assert [s["name"] for s in again["steps"]][:1] == ["a"]


def test_rerun_from_a_step_with_a_replacement_output(embedded: StartFactory) -> None:
    calls: list[str] = []
    h = embedded(_three_steps(calls))
    first = _first(h)
    calls.clear()
    body = {"from_step": "b", "output": 7}
    res = h.post(f"/v1/runs/{first['run_id']}/rerun", body)
    assert res.status_code == 202, res.text
    again = h.finish(res.json()["run_id"])
    assert again["output"] == {"a": 1, "b": 7, "c": 70}
    assert calls == ["c"]


def test_rerun_with_an_empty_body_starts_over(embedded: StartFactory) -> None:
    calls: list[str] = []
    h = embedded(_three_steps(calls))
    first = _first(h)
    calls.clear()
    res = h.post(f"/v1/runs/{first['run_id']}/rerun", {})
    assert res.status_code == 202, res.text
    assert h.finish(res.json()["run_id"])["status"] == "completed"
    assert calls == ["a", "b", "c"]


def test_rerun_refuses_what_it_cannot_do(embedded: StartFactory) -> None:
    h = embedded(_three_steps([]))
    run_id = _first(h)["run_id"]
    url = f"/v1/runs/{run_id}/rerun"
    assert "'nope'" in error_of(h.post(url, {"from_step": "nope"}), 400)
    assert "from_step" in error_of(h.post(url, {"output": 1}), 400)
    assert "extra" in error_of(h.post(url, {"from": "b"}), 400).lower()
    assert "rerun" in error_of(h.post(url, content=b"{", headers={"content-type": "x"}), 400)
    assert "NOPE" in error_of(h.post("/v1/runs/NOPE/rerun", {"from_step": "b"}), 404)


def _sleeper() -> Durable:
    d = Durable("t", dev=True)

    @d.function(id="nap", trigger=TriggerEvent("t/nap"))
    async def nap(ctx: Context) -> str:
        await ctx.step.sleep("long", "1h")
        return "woke"

    return d


def test_bulk_cancel_by_function_and_status(embedded: StartFactory) -> None:
    h = embedded(_sleeper())
    for _ in range(3):
        h.send("t/nap")
    runs = h.wait_runs("nap", 3)
    for run in runs:
        h.wait_status(run["run_id"], "sleeping")
    res = h.post("/v1/runs/cancel", {"function_id": h.fn_id("nap"), "status": "sleeping"})
    assert res.status_code == 200, res.text
    assert res.json() == {"matched": 3, "cancelled": 3, "capped": False}
    assert {r["status"] for r in h.runs("nap")} == {"cancelled"}


def test_bulk_replay_starts_a_new_run_of_each(embedded: StartFactory) -> None:
    h = embedded(_three_steps([]))
    _first(h)
    res = h.post("/v1/runs/replay", {"function_id": h.fn_id("f"), "limit": 5})
    assert res.status_code == 202, res.text
    answer = res.json()
    assert (answer["matched"], answer["replayed"]) == (1, 1)
    assert h.finish(answer["run_ids"][0])["status"] == "completed"


def test_bulk_actions_refuse_a_bad_filter(embedded: StartFactory) -> None:
    h = embedded(_three_steps([]))
    for path in ("/v1/runs/cancel", "/v1/runs/replay"):
        assert "at least one" in error_of(h.post(path, {}), 400)
        assert "status" in error_of(h.post(path, {"status": "nope"}), 400)
        assert "limit" in error_of(h.post(path, {"status": "queued", "limit": 5000}), 400)


def test_function_stats(embedded: StartFactory) -> None:
    h = embedded(_three_steps([]))
    _first(h)
    res = h.get("/v1/functions/stats")
    assert res.status_code == 200, res.text
    (stats,) = res.json()["data"]
    assert stats["function_id"] == h.fn_id("f")
    assert stats["by_status"] == {"completed": 1}
    assert stats["failure_rate"] == 0
    assert stats["p50_ms"] is not None
