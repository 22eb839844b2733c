"""Wildcard triggers, as in Inngest: `shop/*` runs on every event whose name starts with
`shop/`, `shop/order.*` on every one starting with `shop/order.`; a filter still applies, and
an event starts one run of a function however many of its triggers match."""

from __future__ import annotations

from typing import Any

from durable_core import Context, Durable, TriggerEvent
from durable_core.orchestrator.registry import Registry
from durable_core.orchestrator.store import FunctionRecord

from .conftest import Harness, StartFactory


def _names(h: Harness, local_id: str) -> list[str]:
    runs = [h.finish(r["run_id"]) for r in h.runs(local_id)]
    assert all(r["status"] == "completed" for r in runs), runs
    return sorted(r["output"] for r in runs)


def test_wildcard_triggers_match_names_by_prefix(embedded: StartFactory) -> None:
    d = Durable("t", dev=True)

    @d.function(id="all-shop", trigger=TriggerEvent("shop/*"))
    async def all_shop(ctx: Context) -> str:
        return ctx.event.name

    @d.function(id="orders", trigger=TriggerEvent("shop/order.*"))
    async def orders(ctx: Context) -> str:
        return ctx.event.name

    @d.function(
        id="big",
        trigger=[
            TriggerEvent("shop/*", expression="event.data.amount > 100"),
            TriggerEvent("shop/order.created"),  # also matched exactly: still one run
        ],
    )
    async def big(ctx: Context) -> str:
        return ctx.event.name

    @d.function(id="last", trigger=TriggerEvent("t/last"))
    async def last(ctx: Context) -> str:
        return "done"

    h = embedded(d)
    sent: list[tuple[str, dict[str, Any]]] = [
        ("shop/order.created", {"amount": 500}),
        ("shop/order.paid", {"amount": 5}),
        ("shop/refund", {"amount": 200}),
        ("shopping/cart", {"amount": 500}),  # not after a "/": no match
        ("other/shop/x", {"amount": 500}),
        ("shop/orders", {"amount": 1}),  # "shop/order." is not its prefix
    ]
    for name, data in sent:
        h.send(name, data)
    h.send("t/last")
    h.only_run("last")  # every event before it has been taken in

    assert _names(h, "all-shop") == [
        "shop/order.created",
        "shop/order.paid",
        "shop/orders",
        "shop/refund",
    ]
    assert _names(h, "orders") == ["shop/order.created", "shop/order.paid"]
    assert _names(h, "big") == ["shop/order.created", "shop/refund"]


def test_an_unsupported_wildcard_is_refused_at_registration(embedded: StartFactory) -> None:
    h = embedded(Durable("t", dev=True))
    fn = {
        "id": "other-f",
        "triggers": [{"event": "shop*"}],
        "steps": {"step": {"id": "step", "runtime": {"type": "http", "url": "http://x/api"}}},
    }
    res = h.post("/fn/register", {"appname": "other", "url": "http://x/api", "functions": [fn]})
    assert res.status_code == 400, res.text
    assert "other-f" in res.json()["error"] and "'app/*'" in res.json()["error"]


def test_an_event_looks_up_only_its_own_prefixes() -> None:
    """Matching costs one lookup per part of the event's name, whatever the function count."""
    fns = [
        FunctionRecord(f"a-f{i}", "a", f"f{i}", {"triggers": [{"event": f"app{i}/*"}]})
        for i in range(1000)
    ]
    registry = Registry(fns)
    looked: list[str] = []

    class Counting(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            looked.append(key)
            return super().get(key, default)

    registry.by_prefix = Counting(registry.by_prefix)
    found = registry.triggered_by("app7/user.created")
    assert [fn.fn_id for fn, _ in found] == ["a-f7"]
    assert looked == ["app7/", "app7/user."]
